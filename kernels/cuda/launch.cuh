// How the CUDA sources launch a kernel: QLORAD_LAUNCH(grid, block, shared_bytes, stream, kernel,
// args...) is `kernel<<<grid, block, shared_bytes, stream>>>(args...)` under nvcc. Where the
// same sources are built as plain C++ against the CPU stand-in of the CUDA runtime
// (tests/cuda_on_cpu: the GPU tests run with these kernels on the CPU), it runs every thread of
// the grid there instead; the chevrons are not C++, hence the macro. `kernel` is one macro
// argument: name a kernel with several template arguments through a variable first.
#pragma once

#include <cuda_runtime.h>

//
// QLORAD_DYNAMIC_SHARED(name) declares `name`, the block's dynamic shared memory (the launch's
// shared_bytes, 128-byte aligned), as unsigned char[].
#if defined(QLORAD_CUDA_ON_CPU)
#define QLORAD_LAUNCH(grid, block, shared_bytes, stream, kernel, ...) \
  QLORAD_LAUNCH_ON_CPU(grid, block, shared_bytes, stream, kernel, __VA_ARGS__)
#define QLORAD_DYNAMIC_SHARED(name) \
  unsigned char* const name = ::qlorad::cuda_on_cpu::DynamicShared()
#else
#define QLORAD_LAUNCH(grid, block, shared_bytes, stream, kernel, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#define QLORAD_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif
