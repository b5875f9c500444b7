// The CUDA stand-in's own guarantees (README.md): what a GPU would get wrong must go wrong here
// too, or the GPU tests run on it would pass where the card fails. Each kernel below is written
// correctly once and once with the mistake, and the mistake must show.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cublas_v2.h"
#include "kernels/cuda/launch.cuh"

namespace qlorad {
namespace {

// Two cards for this binary (the stand-in reads the count once, at its first call, after this
// static initialisation): EachCardHasItsOwn... needs them; the other tests use card 0, as on a
// one-card machine.
const bool kTwoCards = setenv("QLORAD_CUDA_ON_CPU_DEVICES", "2", 1) == 0;
// The injected-fault file (read once, like the count); only the fault tests create it.
const std::string kFaultFile = "/tmp/qlorad_stand_in_fault_" + std::to_string(getpid());
const bool kFaultFileSet = setenv("QLORAD_CUDA_ON_CPU_FAULT_FILE", kFaultFile.c_str(), 1) == 0;

void InjectFault(const std::string& content) {
  std::FILE* f = std::fopen((kFaultFile + ".tmp").c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(content.c_str(), f);
  std::fclose(f);
  ASSERT_EQ(std::rename((kFaultFile + ".tmp").c_str(), kFaultFile.c_str()), 0);
}

// Every thread reads the value thread `writer` put in shared memory. `publish`: with the
// barrier between the write and the reads.
__global__ void BroadcastKernel(int writer, bool publish, int* out) {
  __shared__ int value;
  if (static_cast<int>(threadIdx.x) == writer) value = 1000 + static_cast<int>(blockIdx.x);
  if (publish) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = value;
}

// Two rounds through one shared slot per warp: each warp's lane 0 writes its round's value, the
// block reads all slots, then the slots are rewritten. `guard_reuse`: with the barrier that
// keeps the rewrite from overtaking a slow warp's reads.
__global__ void TwoRoundsKernel(bool guard_reuse, int* out) {
  __shared__ int slots[4];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int sum = 0;
  for (int round = 0; round < 2; ++round) {
    if (guard_reuse) __syncthreads();
    if (lane == 0) slots[warp] = (round + 1) * (warp + 1);
    __syncthreads();
    for (int w = 0; w < 4; ++w) sum += slots[w];
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

__global__ void DivergentBarrierKernel() {
  if (threadIdx.x < 16) __syncthreads();
}

__global__ void ShuffleSumKernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  out[threadIdx.x] = v;
}

__global__ void ButterflySumKernel(const float* in, float* out) {
  out[threadIdx.x] = ::qlorad::cuda_on_cpu::WarpButterfly(in[threadIdx.x], false);
}

__global__ void FillKernel(int value, int* out) { out[threadIdx.x] = value; }

// Pointers handed to a kernel inside a struct argument, as the flash and LoRA kernels take
// theirs; KernelPointers lists them for the launch check.
struct FillArgs {
  int value = 0;
  int* out = nullptr;
};
std::vector<std::pair<const char*, const void*>> KernelPointers(const FillArgs& a) {
  return {{"out", a.out}};
}
__global__ void FillThroughStructKernel(FillArgs a) { a.out[threadIdx.x] = a.value; }

// `values` in managed memory: every card reaches it (cuBLAS's operands must be device memory),
// and so does the host that checks the results.
template <typename T>
class Managed {
 public:
  explicit Managed(const std::vector<T>& values) {
    EXPECT_EQ(cudaMallocManaged(&p_, values.size() * sizeof(T), cudaMemAttachGlobal), cudaSuccess);
    std::memcpy(p_, values.data(), values.size() * sizeof(T));
  }
  ~Managed() { cudaFree(p_); }
  Managed(const Managed&) = delete;
  Managed& operator=(const Managed&) = delete;
  T* get() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }

 private:
  T* p_ = nullptr;
};

class StandInTest : public ::testing::Test {
 protected:
  void TearDown() override { cudaDeviceReset(); }  // no test's fault reaches the next
};

// Runs `launches` launches of `blocks` blocks (the stand-in alternates its turn orders between
// blocks and launches) and counts the outputs that differ from `want`.
template <typename Launch>
int Wrong(int blocks, int threads, int launches, Launch launch, int (*want)(int block, int t)) {
  int* out = nullptr;
  EXPECT_EQ(cudaMalloc(&out, sizeof(int) * blocks * threads), cudaSuccess);
  int wrong = 0;
  for (int l = 0; l < launches; ++l) {
    launch(out);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    for (int b = 0; b < blocks; ++b) {
      for (int t = 0; t < threads; ++t) wrong += out[b * threads + t] != want(b, t);
    }
  }
  cudaFree(out);
  return wrong;
}

TEST_F(StandInTest, AReadBeforeThePublishingBarrierShowsWhicheverThreadWrites) {
  auto want = [](int b, int) { return 1000 + b; };
  for (int writer : {0, 127}) {
    auto launch = [&](bool publish) {
      return [=](int* out) {
        QLORAD_LAUNCH(2, 128, 0, nullptr, BroadcastKernel, writer, publish, out);
      };
    };
    EXPECT_EQ(Wrong(2, 128, 2, launch(true), want), 0) << "writer " << writer;
    EXPECT_GT(Wrong(2, 128, 2, launch(false), want), 0) << "writer " << writer;
  }
}

TEST_F(StandInTest, ARewriteBeforeTheReadersAreDoneShows) {
  auto want = [](int, int) { return (1 + 2 + 3 + 4) * 3; };
  auto launch = [](bool guard) {
    return [=](int* out) { QLORAD_LAUNCH(2, 128, 0, nullptr, TwoRoundsKernel, guard, out); };
  };
  EXPECT_EQ(Wrong(2, 128, 2, launch(true), want), 0);
  EXPECT_GT(Wrong(2, 128, 2, launch(false), want), 0);
}

TEST_F(StandInTest, ABarrierNotEveryThreadReachesFailsTheLaunchAndStaysFailed) {
  QLORAD_LAUNCH(1, 64, 0, nullptr, DivergentBarrierKernel);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  // A fault is sticky, as a GPU's lost context: every later call reports it.
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
}

TEST_F(StandInTest, ALaunchTheGpuRefusesFailsWithoutAFault) {
  QLORAD_LAUNCH(1, 2048, 0, nullptr, DivergentBarrierKernel);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // cleared: not sticky
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST_F(StandInTest, TheOneRendezvousButterflyEqualsTheShufflesBitForBit) {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, 1e3f);
  float *in, *a, *b;
  ASSERT_EQ(cudaMalloc(&in, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&a, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 64 * 4), cudaSuccess);
  for (int trial = 0; trial < 20; ++trial) {
    for (int i = 0; i < 64; ++i) in[i] = d(rng) * std::pow(10.0f, static_cast<float>(i % 7 - 3));
    QLORAD_LAUNCH(1, 64, 0, nullptr, ShuffleSumKernel, in, a);
    QLORAD_LAUNCH(1, 64, 0, nullptr, ButterflySumKernel, in, b);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(std::memcmp(a, b, 64 * 4), 0) << "trial " << trial;
  }
  cudaFree(in);
  cudaFree(a);
  cudaFree(b);
}

// Paging advice applies to managed memory only, and within one allocation, as the runtime's.
TEST_F(StandInTest, PagingAdviceTakesManagedRangesOnly) {
  char *managed, *plain;
  ASSERT_EQ(cudaMallocManaged(&managed, 1000), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&plain, 1000), cudaSuccess);
  const cudaMemLocation host{cudaMemLocationTypeHost, 0};
  EXPECT_EQ(cudaMemAdvise(managed, 1000, cudaMemAdviseSetPreferredLocation, host), cudaSuccess);
  EXPECT_EQ(cudaMemPrefetchAsync(managed + 200, 800, host, 0, nullptr), cudaSuccess);
  EXPECT_EQ(cudaMemPrefetchAsync(managed + 200, 801, host, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemAdvise(plain, 1000, cudaMemAdviseSetPreferredLocation, host),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // the most recent failure
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFree(managed), cudaSuccess);
  EXPECT_EQ(cudaFree(plain), cudaSuccess);
  EXPECT_EQ(cudaFree(plain), cudaErrorInvalidDevicePointer);
}

// The cuBLAS stand-in against the definition, column-major: C = alpha op(A) op(B) + beta C, for
// each transpose, bf16 operands and output, and beta 0 never reading C (NaN there).
TEST_F(StandInTest, CublasGemmIsTheColumnMajorDefinition) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const int m = 5, n = 3, k = 4;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const int lda = (ta ? k : m) + 1, ldb = (tb ? n : k) + 2, ldc = m + 1;
      std::vector<float> a(lda * (ta ? m : k)), b(ldb * (tb ? k : n));
      for (float& x : a) x = u(rng);
      for (float& x : b) x = u(rng);
      auto A = [&](int i, int l) { return ta ? a[i * lda + l] : a[l * lda + i]; };
      auto B = [&](int l, int j) { return tb ? b[l * ldb + j] : b[j * ldb + l]; };
      const Managed<float> da(a), db(b), c(std::vector<float>(ldc * n, std::nanf(""))),
          c2(std::vector<float>(ldc * n, 0.5f));
      const float alpha = 1.5f, zero = 0.0f, beta = -2.0f;
      ASSERT_EQ(
          cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                       &alpha, da.get(), CUDA_R_32F, lda, db.get(), CUDA_R_32F, ldb, &zero, c.get(),
                       CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
          CUBLAS_STATUS_SUCCESS);
      ASSERT_EQ(
          cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                       &alpha, da.get(), CUDA_R_32F, lda, db.get(), CUDA_R_32F, ldb, &beta,
                       c2.get(), CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
          CUBLAS_STATUS_SUCCESS);
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < m; ++i) {
          double want = 0.0;
          for (int l = 0; l < k; ++l) want += static_cast<double>(A(i, l)) * B(l, j);
          EXPECT_NEAR(c[j * ldc + i], alpha * want, 1e-5) << ta << tb << " " << i << "," << j;
          EXPECT_NEAR(c2[j * ldc + i], alpha * want + beta * 0.5, 1e-5);
        }
        EXPECT_TRUE(std::isnan(c[j * ldc + m])) << "the padding row is not C's";
      }
    }
  }
  // Host memory is not an operand: the GEMM faults as its kernel would.
  std::vector<float> host(4, 1.0f);
  const float one_f = 1.0f, zero_f = 0.0f;
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one_f, host.data(), CUDA_R_32F, 2,
                         host.data(), CUDA_R_32F, 2, &zero_f, host.data(), CUDA_R_32F, 2,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  // cuBLAS takes bf16 operands only under CUBLAS_COMPUTE_32F.
  std::vector<__nv_bfloat16> x(16);
  std::vector<float> y(16);
  const float one = 1.0f, zero = 0.0f;
  EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, x.data(), CUDA_R_16BF, 2,
                         x.data(), CUDA_R_16BF, 2, &zero, y.data(), CUDA_R_32F, 2,
                         CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  cublasDestroy(h);
}

// The counts step_runtime_calls_test reads: each call counted where it belongs, once.
TEST_F(StandInTest, RuntimeCallsAreCountedWhereTheyBelong) {
  namespace coc = ::qlorad::cuda_on_cpu;
  const coc::ApiCounts a = coc::Counts();
  int* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * sizeof(int)), cudaSuccess);
  QLORAD_LAUNCH(1, 64, 0, nullptr, FillKernel, 3, d);
  int host[64] = {};
  ASSERT_EQ(cudaMemcpyAsync(host, d, sizeof host, cudaMemcpyDeviceToHost, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, host, sizeof host, cudaMemcpyHostToDevice, nullptr), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(host, d, sizeof host, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaFree(d), cudaSuccess);
  const coc::ApiCounts b = coc::Counts();
  EXPECT_EQ(host[63], 3);
  EXPECT_EQ(b.allocations - a.allocations, 1u);
  EXPECT_EQ(b.launches - a.launches, 1u);
  EXPECT_EQ(b.copies_to_host - a.copies_to_host, 2u);  // the host-to-device copy is not one
  EXPECT_EQ(b.synchronizes - a.synchronizes, 2u);      // the stream's, and cudaMemcpy's own
  EXPECT_EQ(b.frees - a.frees, 1u);
}

// Card by card, as the runtime keeps them: memory, streams and cuBLAS handles belong to the card
// current when they were made (work given to another card's stream or handle fails without a
// fault), and a fault loses its own card's context alone. The CUDA device makes its card current
// before each call (engine/cuda_device.cc, Enter); a call it missed would fail here.
TEST_F(StandInTest, EachCardHasItsOwnMemoryStreamsHandlesAndFaults) {
  ASSERT_TRUE(kTwoCards);
  int cards = 0;
  ASSERT_EQ(cudaGetDeviceCount(&cards), cudaSuccess);
  ASSERT_EQ(cards, 2);
  EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  size_t free0 = 0, free1 = 0, now = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);

  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  int* on1 = nullptr;
  ASSERT_EQ(cudaMalloc(&on1, 1 << 20), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&now, &total), cudaSuccess);
  EXPECT_EQ(free1 - now, size_t{1} << 20);
  cudaStream_t s1 = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  cublasHandle_t h1 = nullptr;
  ASSERT_EQ(cublasCreate(&h1), CUBLAS_STATUS_SUCCESS);
  cublasSetStream(h1, s1);
  const float one = 1.0f, zero = 0.0f;
  const Managed<float> a({1, 2, 3, 4}), c(std::vector<float>(4));
  auto gemm = [&] {
    return cublasGemmEx(h1, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a.get(), CUDA_R_32F, 2,
                        a.get(), CUDA_R_32F, 2, &zero, c.get(), CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT);
  };
  EXPECT_EQ(gemm(), CUBLAS_STATUS_SUCCESS);  // on its card
  QLORAD_LAUNCH(1, 32, 0, s1, FillKernel, 7, on1);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(on1[31], 7);

  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&now, &total), cudaSuccess);
  EXPECT_EQ(now, free0) << "card 1's allocation counted on card 0";
  QLORAD_LAUNCH(1, 32, 0, s1, FillKernel, 9, on1);  // card 1's stream, card 0 current
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(on1[31], 7) << "the refused launch ran";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not a fault
  EXPECT_EQ(gemm(), CUBLAS_STATUS_EXECUTION_FAILED);
  cudaEvent_t event0 = nullptr;  // an event of card 0 goes into card 0's streams only
  ASSERT_EQ(cudaEventCreate(&event0), cudaSuccess);
  EXPECT_EQ(cudaEventRecord(event0, s1), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventRecord(event0, nullptr), cudaSuccess);
  cudaEventDestroy(event0);

  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  QLORAD_LAUNCH(1, 64, 0, s1, DivergentBarrierKernel);
  EXPECT_EQ(cudaStreamSynchronize(s1), cudaErrorLaunchFailure);
  EXPECT_EQ(gemm(), CUBLAS_STATUS_EXECUTION_FAILED);  // a faulted card runs nothing
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);           // card 0 is sound
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  int* on0 = nullptr;
  EXPECT_EQ(cudaMalloc(&on0, 16), cudaSuccess);
  EXPECT_EQ(cudaFree(on0), cudaSuccess);
  // A stream's errors are its card's, whichever card is current.
  EXPECT_EQ(cudaStreamSynchronize(s1), cudaErrorLaunchFailure);

  ASSERT_EQ(cudaSetDevice(1), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaDeviceReset(), cudaSuccess);  // card 1's context made anew, its memory freed
  EXPECT_EQ(cudaFree(on1), cudaErrorInvalidDevicePointer);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevicePointer);
  ASSERT_EQ(cudaMemGetInfo(&now, &total), cudaSuccess);
  EXPECT_EQ(now, free1);
  cublasDestroy(h1);  // stale since the reset; here plain host objects
  cudaStreamDestroy(s1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
}

// A kernel reaches its own card's memory and managed memory; a host pointer or another card's
// memory (no peer access) faults the launch, as the card would on the first touch.
TEST_F(StandInTest, AKernelGivenMemoryItsCardCannotReachFaults) {
  int host[32] = {};
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 1, host);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(host[0], 0) << "the kernel ran";
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorIllegalAddress);  // sticky
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);

  int *on1 = nullptr, *managed = nullptr;
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&on1, 32 * sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMallocManaged(&managed, 32 * sizeof(int), cudaMemAttachGlobal), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 2, managed);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(managed[31], 2);
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 3, on1);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  EXPECT_EQ(cudaFree(on1), cudaSuccess);  // card 1 never faulted
  EXPECT_EQ(cudaFree(managed), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
}

// An injected fault shows at the launch, or (as a GPU shows a kernel's fault) at the host's next
// wait for the card: until then the calls succeed and the card's work does not run; then the
// fault is sticky.
TEST_F(StandInTest, AnInjectedFaultShowsAtTheLaunchOrAtTheNextWait) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, 32 * sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMemset(out, 0, 32 * sizeof(int)), cudaSuccess);
  InjectFault("0");
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 1, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);  // frees `out`

  ASSERT_EQ(cudaMalloc(&out, 32 * sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMemset(out, 0, 32 * sizeof(int)), cudaSuccess);
  InjectFault("0 async");
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 2, out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "shown at the launch";
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillKernel, 3, out);  // after the fault: never runs
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  int* more = nullptr;
  EXPECT_EQ(cudaMalloc(&more, 4), cudaSuccess);
  int back[32] = {-1};
  EXPECT_EQ(cudaMemcpyAsync(back, out, sizeof(back), cudaMemcpyDeviceToHost, nullptr),
            cudaErrorIllegalAddress)
      << "a copy to the host waits, and shows it";
  EXPECT_EQ(back[0], -1) << "a copy from the faulted card happened";
  EXPECT_EQ(out[0], 0)
      << "a kernel ran on the faulted card";  // the stand-in's memory is the host's
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaErrorIllegalAddress) << "sticky";
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// The same inside a struct argument: its device pointer passes, a host or freed one faults.
TEST_F(StandInTest, APointerInsideAStructArgumentIsCheckedToo) {
  int* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, 32 * sizeof(int)), cudaSuccess);
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillThroughStructKernel, FillArgs{4, device});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  int back[32] = {};
  ASSERT_EQ(cudaMemcpy(back, device, sizeof(back), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back[31], 4);
  ASSERT_EQ(cudaFree(device), cudaSuccess);
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillThroughStructKernel, FillArgs{5, device});
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress) << "a freed buffer";
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  int host[32] = {};
  QLORAD_LAUNCH(1, 32, 0, nullptr, FillThroughStructKernel, FillArgs{6, host});
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress) << "host memory";
  EXPECT_EQ(host[0], 0) << "the kernel ran";
}

}  // namespace
}  // namespace qlorad
