// A minimal check harness for the GPU tests. They build on the GPU machine with nothing but
// CUDA and CMake (no GoogleTest there), register with ctest under the label "gpu", and exit
// with 77 (ctest SKIP_RETURN_CODE) and a clear message when no CUDA device is present.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string_view>
#include <vector>

namespace qlorad::gpu_check {

inline int failures = 0;

#define GPU_CHECK(cond, ...)                                                        \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ++::qlorad::gpu_check::failures;                                              \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n");                                                   \
    }                                                                               \
  } while (0)

#define CUDA_OK(expr)                                                                             \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

// Whether this run is on the GPU machine (QLORAD_REQUIRE_GPU=1, set by tests/gpu/run.sh): what
// would skip elsewhere (no device, no model) fails there.
inline bool GpuRequired() {
  const char* required = std::getenv("QLORAD_REQUIRE_GPU");
  return required != nullptr && std::string_view(required) == "1";
}

// Returns false (after printing why) when no CUDA device can be used, and the caller skips
// (exit 77). Where a GPU is expected (GpuRequired), that is a failure instead: a driver too old
// for the toolkit must not read as "nothing failed".
inline bool HaveCudaDevice() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    const char* reason = e != cudaSuccess ? cudaGetErrorString(e) : "0 devices";
    if (GpuRequired()) {
      std::printf("FAILED: QLORAD_REQUIRE_GPU=1 and no CUDA device (%s)\n", reason);
      std::exit(1);
    }
    std::printf("SKIPPED: no CUDA device (%s)\n", reason);
    return false;
  }
  return true;
}

// A fresh seed each run, printed; QLORAD_TEST_SEED=N in the environment replays run N.
inline uint64_t FreshSeed() {
  const char* replay = std::getenv("QLORAD_TEST_SEED");
  const uint64_t seed =
      replay != nullptr ? std::strtoull(replay, nullptr, 10) : std::random_device{}();
  std::printf("seed %llu%s\n", static_cast<unsigned long long>(seed),
              replay != nullptr ? " (QLORAD_TEST_SEED)" : "");
  return seed;
}

// n values ~ N(0, sd) drawn from `rng`.
template <typename Rng>
std::vector<float> Normal(Rng& rng, int64_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Normal values that bf16 holds exactly (each rounded to the nearest even bf16): inputs on
// which a path that rounds to bf16 and one that does not compute with the same numbers.
template <typename Rng>
std::vector<float> Bf16Normal(Rng& rng, int64_t n, float sd = 1.0f) {
  std::vector<float> v = Normal(rng, n, sd);
  for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(x));
  return v;
}

// v as a T: float, or bf16 rounded to nearest even.
template <typename T>
T FromFloat(float v);
template <>
inline float FromFloat<float>(float v) {
  return v;
}
template <>
inline __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Device memory for a test's lifetime (RAII): `n` elements with every bit set (NaN for floats,
// so an element a kernel fails to write shows), or a copy of a host vector.
template <typename T>
struct DeviceArray {
  explicit DeviceArray(int64_t n) : n(n) {
    CUDA_OK(cudaMalloc(&p, (n > 0 ? n : 1) * sizeof(T)));
    CUDA_OK(cudaMemset(p, 0xFF, (n > 0 ? n : 1) * sizeof(T)));
  }
  explicit DeviceArray(const std::vector<T>& h) : DeviceArray(static_cast<int64_t>(h.size())) {
    CUDA_OK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
  // The contents, after the device finished its work.
  std::vector<T> Get() const {
    std::vector<T> h(n);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* p = nullptr;
  int64_t n;
};

inline int Finish(const char* name) {
  std::printf("%s: %s (%d failed checks)\n", name, failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace qlorad::gpu_check
