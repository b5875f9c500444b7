#include <cstdint>
#include <type_traits>

#include "kernels/cuda/bf16_element.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nf4_dequant.h"
#include "kernels/nf4_code.h"

namespace qlorad::kernels::cuda {
namespace {

__constant__ float kNf4CodeDevice[16] = {QLORAD_NF4_CODE_VALUES};

// Rounded after the product and after the sum, as the CPU twin (built with -ffp-contract=off)
// and bitsandbytes: nvcc would otherwise fuse them into one FMA, a different scale in a few
// blocks in ten. The _rn intrinsics are never contracted.
// Block b's absmax, its nested block `nested` (b / nested_blocksize, a shift where it can be).
__device__ __forceinline__ float BlockScale(const Nf4DqArgs& a, const float* code8, int64_t b,
                                            int64_t nested) {
  return __fadd_rn(__fmul_rn(code8[a.absmax_q[b]], a.nested_absmax[nested]), a.offset);
}

// Vectorized path, for memory bandwidth: a lane's unit is the values of one 16-byte store (8 bf16
// or 4 float32, from 4 or 2 packed bytes), and the 32 lanes of a warp take 32 consecutive units,
// so every load and every store instruction of a warp touches one contiguous span. Each lane
// starts the loads of kUnitsPerLane units before it decodes any: loads in flight hide the
// memory's latency. (On the H200 this runs at 82-91% of the device copy bandwidth on weights
// larger than its L2, where 32 values a lane, each lane's 64-byte bf16 output written by four
// stores 64 bytes apart, ran at 43-45%: docs/benchmarks.md.) Block and nested-block indices are
// shifts: both block sizes are powers of two.
// The NF4 table sits in shared memory: a warp's 32 lanes look up to 16 different entries at
// once, which constant memory serves one address at a time, while 16 consecutive floats in
// shared memory lie in 16 different banks and are read in one pass.
constexpr int kUnitsPerLane = 4;

template <typename T>
__global__ void DequantCoalesced(Nf4DqArgs a, int block_shift, int nested_shift, int64_t units,
                                 T* __restrict__ out) {
  constexpr int kValues = 16 / sizeof(T);
  using Packed = std::conditional_t<kValues == 8, uint32_t, uint16_t>;
  __shared__ float code8[256];
  __shared__ float code4[16];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code8[i] = a.code8[i];
  if (threadIdx.x < 16) code4[threadIdx.x] = kNf4CodeDevice[threadIdx.x];
  __syncthreads();
  const Packed* packed = reinterpret_cast<const Packed*>(a.packed);
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  constexpr int64_t kTile = 32 * kUnitsPerLane;  // units a warp takes at a time
  for (int64_t tile = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
       tile * kTile < units; tile += warps) {
    const int64_t first_unit = tile * kTile + lane;
    Packed raw[kUnitsPerLane];
#pragma unroll
    for (int u = 0; u < kUnitsPerLane; ++u) {
      const int64_t k = first_unit + 32 * u;
      raw[u] = k < units ? packed[k] : Packed{0};
    }
#pragma unroll
    for (int u = 0; u < kUnitsPerLane; ++u) {
      const int64_t k = first_unit + 32 * u;
      if (k >= units) break;
      const int64_t first = k * kValues;
      const int64_t block = first >> block_shift;
      const float scale = BlockScale(a, code8, block, block >> nested_shift);
      alignas(16) T vals[kValues];  // read back as one uint4 below
#pragma unroll
      for (int byte = 0; byte < kValues / 2; ++byte) {
        const uint32_t v = (static_cast<uint32_t>(raw[u]) >> (8 * byte)) & 0xFFu;
        vals[2 * byte] = Element<T>::Round(code4[v >> 4] * scale);
        vals[2 * byte + 1] = Element<T>::Round(code4[v & 0xFu] * scale);
      }
      // A unit lies inside one row when cols is a multiple of kValues (Launch checks).
      const int64_t at = a.cols > 0 ? first / a.cols * a.ld + first % a.cols : first;
      *reinterpret_cast<uint4*>(out + at) = *reinterpret_cast<const uint4*>(vals);
    }
  }
}

// Scalar path for the tail (or unaligned pointers): one element per thread.
template <typename T>
__global__ void DequantScalar(Nf4DqArgs a, int64_t begin, T* __restrict__ out) {
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < a.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint8_t byte = a.packed[i / 2];
    const uint8_t q = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
    const int64_t at = a.cols > 0 ? i / a.cols * a.ld + i % a.cols : i;
    out[at] =
        Element<T>::Round(kNf4CodeDevice[q] * BlockScale(a, a.code8, i / a.blocksize,
                                                         i / a.blocksize / a.nested_blocksize));
  }
}

template <typename T>
cudaError_t Launch(const Nf4DqArgs& a, T* out, cudaStream_t stream) {
  if (a.packed == nullptr || a.absmax_q == nullptr || a.nested_absmax == nullptr ||
      a.code8 == nullptr || out == nullptr || a.n < 0 || a.blocksize <= 0 || a.blocksize % 2 != 0 ||
      a.nested_blocksize <= 0 || a.cols < 0 ||
      (a.cols > 0 && (a.ld < a.cols || a.n % a.cols != 0))) {
    return cudaErrorInvalidValue;
  }
  if (a.n == 0) return cudaSuccess;
  constexpr int kValues = 16 / sizeof(T);  // a unit of the vectorized path
  const auto log2_of = [](int64_t v) {     // -1 unless v is a power of two
    int s = 0;
    while ((int64_t{1} << s) < v) ++s;
    return (int64_t{1} << s) == v ? s : -1;
  };
  const int block_shift = log2_of(a.blocksize), nested_shift = log2_of(a.nested_blocksize);
  // A unit's packed bytes are one aligned load, its outputs one aligned 16-byte store, and it
  // lies inside one absmax block and (with rows) inside one row of 16-byte aligned rows.
  const bool aligned = reinterpret_cast<uintptr_t>(a.packed) % (kValues / 2) == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const bool rows_ok = a.cols == 0 || (a.cols % kValues == 0 && (a.ld * sizeof(T)) % 16 == 0);
  const bool vec_ok =
      aligned && block_shift >= 0 && nested_shift >= 0 && a.blocksize % kValues == 0 && rows_ok;
  const int64_t units = vec_ok ? a.n / kValues : 0;
  constexpr int kThreads = 256;
  if (units > 0) {
    // A warp per tile of 32 * kUnitsPerLane units: resident warps beyond the first wave keep
    // the memory busy while the first ones finish (capping the grid at one wave and striding
    // ran 10% slower on the H200).
    const int64_t tiles = (units + 32 * kUnitsPerLane - 1) / (32 * kUnitsPerLane);
    const int64_t want = (tiles * 32 + kThreads - 1) / kThreads;
    const int grid = static_cast<int>(want < (int64_t{1} << 30) ? want : (int64_t{1} << 30));
    QLORAD_LAUNCH(grid, kThreads, 0, stream, DequantCoalesced<T>, a, block_shift, nested_shift,
                  units, out);
  }
  const int64_t begin = units * kValues;
  if (begin < a.n) {
    const int64_t rest = a.n - begin;
    const int grid = static_cast<int>(
        (rest + kThreads - 1) / kThreads < 4096 ? (rest + kThreads - 1) / kThreads : 4096);
    QLORAD_LAUNCH(grid, kThreads, 0, stream, DequantScalar<T>, a, begin, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t Nf4DequantizeDoubleQuantBf16(const Nf4DqArgs& args, __nv_bfloat16* out,
                                         cudaStream_t stream) {
  return Launch(args, out, stream);
}

cudaError_t Nf4DequantizeDoubleQuantF32(const Nf4DqArgs& args, float* out, cudaStream_t stream) {
  return Launch(args, out, stream);
}

}  // namespace qlorad::kernels::cuda
