// The flash-attention kernels (kernels/cuda/flash_attention.h) against the CPU twin
// (kernels/cpu/attention_train.h) on fresh random inputs each run (the seed is printed):
// outputs, log-sum-exps and the three gradients, causal, grouped-query and packed rows, every
// supported head_dim, tiles that do not divide T. Outputs start as NaN, so an element the
// kernels fail to write is caught. bf16 inputs bound the agreement: the same code under the CPU
// block emulator measures 0.3% to 0.7% relative error (tests/kernels/).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
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

void Check(int T, int H, int KV, int hd, bool packed) {
  std::printf("  T=%d H=%d KV=%d hd=%d packed=%d\n", T, H, KV, hd, packed);
  const auto q = Random(size_t(T) * H * hd, 1.5f), k = Random(size_t(T) * KV * hd, 1.5f),
             v = Random(size_t(T) * KV * hd, 1.0f), dout = Random(size_t(T) * H * hd, 1.0f);
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

  Dev<float> dq_in(q), dk_in(k), dv_in(v), ddout(dout), out(q.size()), lse(size_t(H) * T),
      delta(size_t(H) * T), dq(q.size()), dk(k.size()), dv(v.size());
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
  qlorad::Check(70, 4, 2, 32, true);
  qlorad::Check(150, 2, 1, 32, false);
  qlorad::Check(200, 4, 4, 64, true);
  qlorad::Check(333, 4, 2, 128, true);
  qlorad::Check(512, 2, 2, 128, false);
  return qlorad::gpu_check::Finish("flash_attention_gpu_test");
}
