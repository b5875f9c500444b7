// The block context of kernels/flash_attention_body.h where the CUDA sources run on the CPU
// stand-in (kernels/cuda/flash_context.cuh includes this there): the block emulator's models of
// mma.m16n8k16, ldmatrix and cp.async (tests/kernels/cuda_block_emulator.h), with the stand-in's
// fibers as the block's threads and its __syncthreads and __syncwarp as the barriers.
#pragma once

#include <memory>

#include "cuda_runtime.h"
#include "tests/kernels/cuda_block_emulator.h"

namespace qlorad::kernels::cuda {

// The per-block scratch the emulated warp instructions exchange registers through: one for the
// launch being run (blocks run one after another).
inline testing::EmulatedBlockShared& FlashEmulatorShared() {
  thread_local std::unique_ptr<testing::EmulatedBlockShared> shared;
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  if (shared == nullptr || static_cast<int>(shared->lanes.size()) != threads) {
    shared = std::make_unique<testing::EmulatedBlockShared>(threads);
    shared->sync_block = [] { __syncthreads(); };
    shared->sync_warp = [] { __syncwarp(); };
  }
  return *shared;
}

struct FlashBlockContext : testing::EmulatedContext {
  static FlashBlockContext OfThisThread() {
    FlashBlockContext cx;
    cx.thread = static_cast<int>(threadIdx.x);
    cx.block_x = static_cast<int>(blockIdx.x);
    cx.block_y = static_cast<int>(blockIdx.y);
    cx.shared = &FlashEmulatorShared();
    return cx;
  }
  FlashBlockContext() = default;
  FlashBlockContext(FlashBlockContext&&) = default;
  // At the end of the thread's program: a misaligned operand, or a copy it never waited for,
  // fails the launch as the GPU would fault or lose it.
  ~FlashBlockContext() {
    if (shared == nullptr) return;
    if (CopiesPending()) ++shared->violations;
    if (shared->violations.exchange(0) > 0) {
      ::qlorad::cuda_on_cpu::ReportViolation(
          "a misaligned ldmatrix, cp.async or 16-byte access, or a cp.async never waited for");
    }
  }
};

}  // namespace qlorad::kernels::cuda
