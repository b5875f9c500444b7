// The data structures of engine/dataset.h that training itself needs, apart from the JSONL
// parsing, so that the engine's compute core builds without a JSON library.
#include <algorithm>

#include "engine/dataset.h"

namespace qlorad {

int64_t TokenizedExample::num_targets() const {
  return std::count(is_target.begin(), is_target.end(), 1);
}

int64_t TrainingRow::num_targets() const {
  return std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
}

}  // namespace qlorad
