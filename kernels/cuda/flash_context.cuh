// The block context of kernels/flash_attention_body.h on the GPU (sm_80 and later): the
// m16n8k16 bf16 tensor-core instruction with float accumulators, ldmatrix fragment loads and
// cp.async tile copies. A header of its own so that tests/gpu/flash_primitives_gpu_test.cu can
// check each primitive on the card against the layouts the CPU block emulator models.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/bf16_element.cuh"
#include "kernels/cuda/elementwise.cuh"

#if defined(QLORAD_CUDA_ON_CPU)
// The CUDA sources on the CPU stand-in (tests/cuda_on_cpu): the instructions below modelled.
#include "flash_context_on_cpu.h"
#else
namespace qlorad::kernels::cuda {

struct FlashBlockContext {
  using Bf16 = __nv_bfloat16;
  int thread, block_x, block_y;

  __device__ static FlashBlockContext OfThisThread() {
    return {static_cast<int>(threadIdx.x), static_cast<int>(blockIdx.x),
            static_cast<int>(blockIdx.y)};
  }

  __device__ void SyncBlock() { __syncthreads(); }
  __device__ static uint32_t Pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) is the low half
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ static void LoadMatrix4(const Bf16* row, uint32_t (&r)[4]) {
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  }
  __device__ static void LoadMatrix4Trans(const Bf16* row, uint32_t (&r)[4]) {
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  }
  // Eight values into a 16-byte-aligned tile slot, rounded to bf16: 16-byte loads where the
  // source allows it, element by element where it does not (bf16 tiles from aligned tensors
  // arrive by CopyAsync instead, so this is the float32 and the unaligned path).
  template <typename X>
  __device__ static void Copy8(const X* src, Bf16* dst) {
    float v[detail::kWide];
    if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
      detail::Load8(src, v);
    } else {
      for (int i = 0; i < detail::kWide; ++i) v[i] = Element<X>::Load(src[i]);
    }
    detail::Store8(dst, v);
  }

  // cp.async of kBytes (16: .cg, through L2 only; 4: .ca), zeros when zero_fill (no bytes
  // read); committed in groups, landed by WaitAsync<N> (all but the newest N groups).
  template <int kBytes>
  __device__ static void CopyAsync(void* dst, const void* src, bool zero_fill) {
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    const int src_bytes = zero_fill ? 0 : kBytes;
    if constexpr (kBytes == 16) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(to), "l"(src),
                   "r"(src_bytes));
    } else {
      asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(to), "l"(src), "n"(kBytes),
                   "r"(src_bytes));
    }
  }
  __device__ static void CommitAsync() { asm volatile("cp.async.commit_group;"); }
  template <int N>
  __device__ static void WaitAsync() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");  // the copies' data is read next
  }
  // Two adjacent outputs in one 4-byte (bf16) or 8-byte (float32) store where aligned.
  template <typename X>
  __device__ static void Store2(X* dst, float lo, float hi) {
    if (reinterpret_cast<uintptr_t>(dst) % (2 * sizeof(X)) == 0) {
      if constexpr (std::is_same_v<X, __nv_bfloat16>) {
        *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo, hi);
      } else {
        *reinterpret_cast<float2*>(dst) = make_float2(lo, hi);
      }
      return;
    }
    dst[0] = Element<X>::Round(lo);
    dst[1] = Element<X>::Round(hi);
  }
  __device__ static void Zero8(Bf16* dst) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
  // The hardware exponential (ex2.approx of x log2 e): 2 + 1.2 |x| ulp (CUDA's table), under
  // 1e-5 relative for every argument whose result is not negligible, where each probability is
  // rounded to bf16 (4e-3) anyway; expf's exact path costs several times more instructions.
  __device__ static float Exp(float x) { return __expf(x); }
  __device__ float ShflXor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
  __device__ void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

}  // namespace qlorad::kernels::cuda
#endif  // QLORAD_CUDA_ON_CPU
