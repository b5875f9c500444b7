// When a CPU kernel's loop is worth a parallel region: below about 32K elements of work, waking
// the OpenMP team costs more than the loop (stories260K-sized steps run thousands of them).
#pragma once

#include <cstdint>

namespace qlorad::kernels {

inline constexpr int64_t kMinParallelWork = int64_t{1} << 15;

}  // namespace qlorad::kernels
