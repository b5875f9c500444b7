// The flash-attention kernels (kernels/cuda/flash_attention.h) against the CPU twin
// (kernels/cpu/attention_train.h) on fresh random inputs each run (the seed is printed):
// outputs, log-sum-exps and the three gradients, causal, grouped-query and packed rows, every
// supported head_dim, tiles that do not divide T; float32 activations (tiles converted as they
// load) and bf16 ones (what the training graph runs: tiles by cp.async, and, from tensors that
// are not 16-byte aligned, element by element). Outputs start as NaN, so an element the kernels
// fail to write is caught. bf16 operands bound the agreement: the same code under the CPU
// block emulator measures 0.3% to 0.7% relative error (tests/kernels/).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention_train.h"
#include "kernels/cuda/flash_attention.h"
#include "tests/common/relative_error.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {
namespace kc = kernels::cuda;

std::mt19937_64 rng;

std::vector<float> Random(size_t n, float sd) {
  return gpu_check::Normal(rng, static_cast<int64_t>(n), sd);
}
template <typename T>
using Dev = gpu_check::DeviceArray<T>;

float Widen(float x) { return x; }
float Widen(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename X>
X Narrow(float x) {
  if constexpr (std::is_same_v<X, float>) {
    return x;
  } else {
    return __float2bfloat16_rn(x);
  }
}

// A tensor of activations (float or __nv_bfloat16) on the device, `shift` elements past an
// aligned allocation (1: not 16-byte aligned, so tiles load element by element).
template <typename X>
struct Activations {
  // `n` values as DeviceArray leaves them: every bit set, NaN of either type.
  Activations(size_t n, int64_t shift) : mem(int64_t(n) + shift), p(mem.p + shift), n(n) {}
  Activations(const std::vector<float>& host, int64_t shift) : Activations(host.size(), shift) {
    std::vector<X> x(host.size());
    for (size_t i = 0; i < host.size(); ++i) x[i] = Narrow<X>(host[i]);
    CUDA_OK(cudaMemcpy(p, x.data(), x.size() * sizeof(X), cudaMemcpyHostToDevice));
  }
  std::vector<float> Get() const {
    std::vector<X> x(n);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(x.data(), p, n * sizeof(X), cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = Widen(x[i]);
    return f;
  }
  Dev<X> mem;
  X* p;
  size_t n;
};

// Outputs start as NaN (of type X), so an element the kernels never write is caught.
template <typename X>
Activations<X> Outputs(size_t n, int64_t shift) {
  return Activations<X>(n, shift);
}

template <typename X>
void Check(int T, int H, int KV, int hd, bool packed, int64_t shift = 0) {
  constexpr bool bf16 = std::is_same_v<X, __nv_bfloat16>;
  std::printf("  T=%d H=%d KV=%d hd=%d packed=%d %s%s\n", T, H, KV, hd, packed,
              bf16 ? "bf16" : "float32", shift != 0 ? " unaligned" : "");
  auto random = [&](size_t n, float sd) {  // values bf16 holds exactly, for bf16 activations
    return bf16 ? gpu_check::Bf16Normal(rng, static_cast<int64_t>(n), sd) : Random(n, sd);
  };
  const auto q = random(size_t(T) * H * hd, 1.5f), k = random(size_t(T) * KV * hd, 1.5f),
             v = random(size_t(T) * KV * hd, 1.0f), dout = random(size_t(T) * H * hd, 1.0f);
  std::vector<int32_t> segments(T, 0);
  if (packed) {
    for (int t = 0; t < T; ++t) segments[t] = t < T / 5 ? 0 : t < T / 2 ? 1 : t < T - 7 ? 2 : -1;
  }
  kernels::TrainAttentionShape s{T, H, KV, hd};
  std::vector<float> out_ref(q.size()), probs(size_t(H) * T * T), dq_ref(q.size()),
      dk_ref(k.size()), dv_ref(v.size());
  const int32_t* seg = packed ? segments.data() : nullptr;
  kernels::AttentionTrainForward(q.data(), k.data(), v.data(), seg, s, out_ref.data(),
                                 probs.data());
  kernels::AttentionTrainBackward(q.data(), k.data(), v.data(), probs.data(), dout.data(), s,
                                  dq_ref.data(), dk_ref.data(), dv_ref.data());

  Activations<X> dq_in(q, shift), dk_in(k, shift), dv_in(v, shift), ddout(dout, shift),
      out = Outputs<X>(q.size(), shift), dq = Outputs<X>(q.size(), shift),
      dk = Outputs<X>(k.size(), shift), dv = Outputs<X>(v.size(), shift);
  Dev<float> lse(size_t(H) * T), delta(size_t(H) * T);
  Dev<int32_t> dseg(segments);
  CUDA_OK(kc::FlashAttentionForward(dq_in.p, dk_in.p, dv_in.p, packed ? dseg.p : nullptr, T, H, KV,
                                    hd, out.p, lse.p, nullptr));
  CUDA_OK(kc::FlashAttentionBackward(dq_in.p, dk_in.p, dv_in.p, packed ? dseg.p : nullptr, out.p,
                                     lse.p, ddout.p, T, H, KV, hd, delta.p, dq.p, dk.p, dv.p,
                                     nullptr));
  // The log-sum-exp from the CPU's probabilities: lse = s_tt - log p_tt for the diagonal.
  const std::vector<float> lse_got = lse.Get();
  const float scale = 1.0f / std::sqrt(float(hd));
  double lse_err = 0.0;
  for (int h = 0; h < H; ++h) {
    for (int t = 0; t < T; ++t) {
      double dot = 0.0;
      for (int d = 0; d < hd; ++d)
        dot +=
            double(q[(size_t(t) * H + h) * hd + d]) * k[(size_t(t) * KV + h / (H / KV)) * hd + d];
      const double want = dot * scale - std::log(double(probs[(size_t(h) * T + t) * T + t]));
      lse_err = std::fmax(lse_err, std::fabs(lse_got[size_t(h) * T + t] - want));
    }
  }
  GPU_CHECK(lse_err < 0.05, "lse off by %g", lse_err);
  struct {
    const char* name;
    std::vector<float> got, want;
    double limit;
  } checks[] = {{"out", out.Get(), out_ref, 1.2e-2},
                {"dq", dq.Get(), dq_ref, 1.5e-2},
                {"dk", dk.Get(), dk_ref, 1.5e-2},
                {"dv", dv.Get(), dv_ref, 1.2e-2}};
  for (const auto& c : checks) {
    const bool finite =
        std::all_of(c.got.begin(), c.got.end(), [](float x) { return std::isfinite(x); });
    const double err = testing::RelativeL2(c.got, c.want);
    GPU_CHECK(finite, "%s: an element was not written (or is not finite)", c.name);
    GPU_CHECK(err < c.limit, "%s: relative error %g (limit %g)", c.name, err, c.limit);
    std::printf("    %-4s relative error %.4f\n", c.name, err);
  }
}

}  // namespace
}  // namespace qlorad

int main() {
  if (!qlorad::gpu_check::HaveCudaDevice()) return 77;
  qlorad::rng.seed(qlorad::gpu_check::FreshSeed());
  GPU_CHECK(!qlorad::kernels::cuda::FlashAttentionSupports(8), "head_dim 8 has no kernel");
  qlorad::Check<float>(70, 4, 2, 32, true);
  qlorad::Check<float>(150, 2, 1, 32, false);
  qlorad::Check<float>(200, 4, 4, 64, true);
  qlorad::Check<float>(333, 4, 2, 128, true);
  qlorad::Check<float>(512, 2, 2, 128, false);
  qlorad::Check<__nv_bfloat16>(70, 4, 2, 32, true);
  qlorad::Check<__nv_bfloat16>(200, 4, 4, 64, true);
  qlorad::Check<__nv_bfloat16>(333, 4, 2, 128, true);
  qlorad::Check<__nv_bfloat16>(512, 2, 2, 128, false);
  qlorad::Check<__nv_bfloat16>(150, 2, 1, 64, true, /*shift=*/1);
  return qlorad::gpu_check::Finish("flash_attention_gpu_test");
}
