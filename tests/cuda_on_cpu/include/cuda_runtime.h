// CPU stand-in for the toolkit's cuda_runtime.h (tests/cuda_on_cpu/README.md): enough of the
// CUDA runtime, the device built-ins and the launch for the project's kernels (kernels/cuda/*.cu,
// built as C++) and the GPU tests that check them to run on a machine without a GPU. Device
// memory is host memory; a launch runs every thread of the grid before it returns (see
// RunGrid). Nothing here is used by the daemon or the engine: only by tests/cuda_on_cpu.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define QLORAD_CUDA_ON_CPU 1
// The runtime API version this stand-in follows (the toolkit here is 13.0).
#define CUDART_VERSION 13000

// Function and variable qualifiers: plain C++ here. Shared memory is a function-local static
// (per host thread): one copy that a block's threads share, blocks running one after another
// (RunGrid). Unlike dynamic shared memory it is not refilled with NaNs for each block: it holds
// zeros at first, then what the previous block left.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types ----
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- the thread's place in the grid (set by RunGrid for the thread that runs) ----
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// ---- errors, streams, memory ----
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaMemAttachGlobal = 1;
constexpr int cudaCpuDeviceId = -1;
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cudaMemoryAdvise { cudaMemAdviseSetPreferredLocation = 3 };
enum cudaMemLocationType { cudaMemLocationTypeDevice = 1, cudaMemLocationTypeHost = 2 };
struct cudaMemLocation {
  cudaMemLocationType type;
  int id;
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int maxDynamicSharedSizeBytes;
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int multiProcessorCount;
  int major;
  int minor;
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrConcurrentManagedAccess = 89,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
// Clears every error, the sticky fault included (the runtime's reset also frees the device's
// memory; here allocations stay).
cudaError_t cudaDeviceReset();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
// The stand-in's card: 16 GiB in all (QLORAD_CUDA_ON_CPU_MEMORY_BYTES, runtime.cc), less what
// is allocated.
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);
// Managed memory is host memory like the rest; advice and prefetches check their range only.
cudaError_t cudaMallocManaged(void** p, size_t bytes, unsigned flags = cudaMemAttachGlobal);
cudaError_t cudaMemAdvise(const void* p, size_t bytes, cudaMemoryAdvise advice,
                          cudaMemLocation location);
cudaError_t cudaMemPrefetchAsync(const void* p, size_t bytes, cudaMemLocation location,
                                 unsigned flags, cudaStream_t stream);
template <typename T>
cudaError_t cudaMallocManaged(T** p, size_t bytes, unsigned flags = cudaMemAttachGlobal) {
  return cudaMallocManaged(reinterpret_cast<void**>(p), bytes, flags);
}
// Kernel attributes: the stand-in has no registers to count, and takes dynamic shared memory
// up to an H200's opt-in limit.
template <typename F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F) {
  *attr = {0, 1024, 0, 227 * 1024};
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int value) {
  return value >= 0 && value <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}
template <typename F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F, int threads,
                                                          size_t shared_bytes) {
  const int by_threads = threads > 0 ? 2048 / threads : 0;
  const int by_shared = static_cast<int>(228 * 1024 / (shared_bytes + 1024));
  *blocks = by_threads < by_shared ? by_threads : by_shared;
  return cudaSuccess;
}
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
template <typename T>
cudaError_t cudaMallocAsync(T** p, size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), bytes, stream);
}

// ---- device built-ins ----
void __syncthreads();
// Every lane of the warp meets here (`mask` names them all).
void __syncwarp(unsigned mask = 0xFFFFFFFFu);
// Warp-collective: every lane of the warp calls it (`mask` names them all), and each gets the
// value of lane ^ lane_mask.
float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32);
double __shfl_xor_sync(unsigned mask, double v, int lane_mask, int width = 32);
int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32);
unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int width = 32);

// The device math library's global names.
using std::isfinite;
using std::isinf;
using std::isnan;
template <typename T>
constexpr T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
// The _rn intrinsics round each operation (never fused into an FMA): plain float arithmetic on
// the host, which targets x86-64 without FMA contraction (tests/cuda_on_cpu/CMakeLists.txt).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }

// ---- launches (kernels/cuda/launch.cuh) ----
namespace qlorad::cuda_on_cpu {

// Runs `thread` once for every thread of a grid x block launch, blocks one after another, the
// threads of a block as cooperatively scheduled fibers (a barrier or a warp shuffle switches to
// the next thread), so shared memory, __syncthreads and the shuffles behave as on the GPU; the
// order in which a block's threads run alternates between blocks, so a missing barrier shows
// whichever thread is late. A configuration the GPU would refuse fails with
// cudaErrorInvalidConfiguration (cudaGetLastError); a deadlock (a barrier some threads never
// reach) or a shuffle by part of a warp is reported and fails with cudaErrorLaunchFailure.
// `pointers`: what the kernel's arguments point to (KernelPointer); each must be memory the card
// reaches (AdmitWork).
struct KernelPointer;
void RunGrid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, cudaStream_t stream,
             const char* kernel_name, const std::vector<KernelPointer>& pointers,
             const std::function<void()>& thread);

// The running block's dynamic shared memory (QLORAD_DYNAMIC_SHARED): the launch's bytes,
// 128-byte aligned, all bits set (NaNs) when the block starts.
unsigned char* DynamicShared();

// Warp-collective: what the xor-shuffle butterfly `for (o = 16; o > 0; o >>= 1) v = v + shfl(v,
// o)` (or fmaxf(v, shfl(v, o))) leaves in this lane, bit for bit, from one rendezvous of the warp
// (kernels/cuda/elementwise.cuh's WarpSum and WarpMax).
float WarpButterfly(float v, bool max);

// Fails the running launch (cudaErrorLaunchFailure) with `what`, as a fault would on the GPU.
void ReportViolation(const char* what);

// What the process has asked of the runtime, on every card: host waits for a card
// (cudaStreamSynchronize, cudaDeviceSynchronize and the synchronous cudaMemcpy and cudaMemset),
// copies to the host (each waits too: host memory is pageable), allocations (cudaMalloc,
// cudaMallocManaged, cudaMallocAsync), frees and kernel launches that ran.
struct ApiCounts {
  uint64_t synchronizes, copies_to_host, allocations, frees, launches;
};
ApiCounts Counts();

// The card a stream belongs to (the current one for the default stream): for the cuBLAS stand-in.
int StreamCard(cudaStream_t stream);

// A pointer a launch hands its kernel: argument `argument` itself, or its member `member` where
// the argument is a struct.
struct KernelPointer {
  const void* p;
  int argument;
  const char* member;  // null for a pointer argument
};

// Whether work (a kernel launch or a GEMM, `what`) runs on the current card, the one check both
// make: kFaulted where the card has faulted (its work no longer runs; its calls return the
// fault) or where one of `pointers` is memory the card cannot reach: host memory, another card's
// memory without peer access, a freed buffer (null is fine; managed memory every card reaches).
// That faults the card as the GPU does on the first touch: a sticky cudaErrorIllegalAddress.
// kPending where a fault waits to be shown at the host's next wait (QLORAD_CUDA_ON_CPU_FAULT_FILE
// saying "async"): the work does not run, and its call succeeds.
enum class Admission { kRun, kFaulted, kPending };
Admission AdmitWork(const char* what, const std::vector<KernelPointer>& pointers);

// The pointers in kernel argument `argument`: itself where it is one; a struct's, as the
// overload of KernelPointers(const T&) beside the struct lists them (found by argument-dependent
// lookup: kernels/flash_attention_body.h, kernels/lora_dropout_body.h, kernels/cuda/
// nf4_dequant.h). A struct argument without one does not build, so none goes unchecked.
template <typename T>
void AddKernelPointers(const T& value, int argument, std::vector<KernelPointer>* out) {
  if constexpr (std::is_pointer_v<T>) {
    if constexpr (!std::is_function_v<std::remove_pointer_t<T>>) {
      out->push_back({static_cast<const void*>(value), argument, nullptr});
    }
  } else if constexpr (std::is_class_v<T> || std::is_union_v<T>) {
    static_assert(
        requires(const T& v) { KernelPointers(v); },
        "a struct kernel argument lists its pointers: KernelPointers(const T&) beside it, "
        "declared where this stand-in's cuda_runtime.h is already included");
    for (const auto& [member, p] : KernelPointers(value)) out->push_back({p, argument, member});
  }
}

template <typename Body, typename... Args>
void Launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, cudaStream_t stream,
            const char* kernel_name, Body body, Args&&... args) {
  // Kernel parameters are copied at the launch, as the GPU does; each thread then receives them
  // by value.
  std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
  std::vector<KernelPointer> pointers;
  int argument = 0;
  std::apply([&](const auto&... a) { (AddKernelPointers(a, argument++, &pointers), ...); }, params);
  RunGrid(grid, block, dynamic_shared_bytes, stream, kernel_name, pointers,
          [&] { std::apply(body, params); });
}

}  // namespace qlorad::cuda_on_cpu

#define QLORAD_LAUNCH_ON_CPU(grid, block, shared_bytes, stream, kernel, ...) \
  ::qlorad::cuda_on_cpu::Launch(                                             \
      grid, block, shared_bytes, stream, #kernel,                            \
      [&](const auto&... kernel_args_) { kernel(kernel_args_...); } __VA_OPT__(, ) __VA_ARGS__)
