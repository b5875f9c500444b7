// Inputs the server tests share: the real stories260K model and the facts dataset.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace qlorad::testing {

inline std::string StoriesGguf() {
  return std::string(QLORAD_TEST_MODELS_DIR) + "/stories260K/stories260K.gguf";
}

inline std::string FactsJsonl() {
  std::ifstream in(std::string(QLORAD_TEST_DATA_DIR) + "/facts_train.jsonl");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace qlorad::testing
