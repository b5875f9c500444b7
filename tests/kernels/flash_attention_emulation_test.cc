// The flash-attention block programs (kernels/flash_attention_body.h), run on the CPU under the
// block emulator, against the CPU twin (kernels/cpu/attention_train.h) on fresh random inputs:
// outputs, log-sum-exps and all three gradients, causal, grouped-query and packed segments.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention_train.h"
#include "kernels/flash_attention_body.h"
#include "tests/kernels/cuda_block_emulator.h"

namespace qlorad {
namespace {

namespace fl = kernels::flash;

struct Shape {
  int T, H, KV, HD;
  bool packed;
};

// ||x - ref|| / ||ref|| over all elements.
double RelativeError(const std::vector<float>& x, const std::vector<float>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (double(x[i]) - ref[i]) * (double(x[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

template <int HD>
void RunFlash(fl::FlashArgs<float>& a) {
  using Lay = fl::FlashLayout<HD>;
  const int tiles = (a.T + fl::kFlashTile - 1) / fl::kFlashTile;
  int violations = 0;
  violations += testing::RunEmulatedGrid(tiles, a.H, fl::kFlashThreads, Lay::kFwdBytes,
                                         [&](testing::EmulatedContext& cx, unsigned char* smem) {
                                           fl::FlashForwardBlock<HD>(cx, a, smem);
                                         });
  // The delta pre-pass (a plain kernel on the GPU): rowsum(dout * out) per (head, query).
  std::vector<float> delta(static_cast<size_t>(a.H) * a.T, 0.0f);
  for (int h = 0; h < a.H; ++h) {
    for (int t = 0; t < a.T; ++t) {
      const size_t base = (static_cast<size_t>(t) * a.H + h) * HD;
      for (int d = 0; d < HD; ++d) delta[h * a.T + t] += a.dout[base + d] * a.out[base + d];
    }
  }
  a.delta = delta.data();
  violations += testing::RunEmulatedGrid(tiles, a.KV, fl::kFlashThreads, Lay::kKvBytes,
                                         [&](testing::EmulatedContext& cx, unsigned char* smem) {
                                           fl::FlashBackwardKvBlock<HD>(cx, a, smem);
                                         });
  violations += testing::RunEmulatedGrid(tiles, a.H, fl::kFlashThreads, Lay::kDqBytes,
                                         [&](testing::EmulatedContext& cx, unsigned char* smem) {
                                           fl::FlashBackwardQBlock<HD>(cx, a, smem);
                                         });
  a.delta = nullptr;
  EXPECT_EQ(violations, 0) << "misaligned shared-memory access";
}

void CheckAgainstCpu(const Shape& sh) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "T=" << sh.T << " H=" << sh.H << " KV=" << sh.KV << " hd="
                                    << sh.HD << " packed=" << sh.packed << " seed=" << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int T = sh.T, H = sh.H, KV = sh.KV, HD = sh.HD;
  auto random = [&](size_t n, float sd) {
    std::vector<float> v(n);
    for (float& x : v) x = sd * normal(rng);
    return v;
  };
  // Scores of a few units, as in a trained model: the softmax is neither flat nor one-hot.
  const std::vector<float> q = random(size_t(T) * H * HD, 1.5f),
                           k = random(size_t(T) * KV * HD, 1.5f),
                           v = random(size_t(T) * KV * HD, 1.0f),
                           dout = random(size_t(T) * H * HD, 1.0f);
  std::vector<int32_t> segments(T, 0);
  if (sh.packed) {  // three examples of uneven lengths, then padding (segment -1)
    for (int t = 0; t < T; ++t) segments[t] = t < T / 5 ? 0 : t < T / 2 ? 1 : t < T - 7 ? 2 : -1;
  }
  const int32_t* seg = sh.packed ? segments.data() : nullptr;

  kernels::TrainAttentionShape s{T, H, KV, HD};
  std::vector<float> out_ref(q.size()), probs(size_t(H) * T * T), dq_ref(q.size()),
      dk_ref(k.size()), dv_ref(v.size());
  kernels::AttentionTrainForward(q.data(), k.data(), v.data(), seg, s, out_ref.data(),
                                 probs.data());
  kernels::AttentionTrainBackward(q.data(), k.data(), v.data(), probs.data(), dout.data(), s,
                                  dq_ref.data(), dk_ref.data(), dv_ref.data());

  // Poisoned outputs: every element must be written.
  std::vector<float> out(q.size(), NAN), lse(size_t(H) * T, NAN), dq(q.size(), NAN),
      dk(k.size(), NAN), dv(v.size(), NAN);
  fl::FlashArgs<float> a;
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.segments = seg;
  a.out = out.data();
  a.lse = lse.data();
  a.dout = dout.data();
  a.dq = dq.data();
  a.dk = dk.data();
  a.dv = dv.data();
  a.T = T;
  a.H = H;
  a.KV = KV;
  a.scale = 1.0f / std::sqrt(float(HD));
  switch (HD) {
    case 32:
      RunFlash<32>(a);
      break;
    case 64:
      RunFlash<64>(a);
      break;
    case 128:
      RunFlash<128>(a);
      break;
    default:
      FAIL() << "no such head_dim instantiation";
  }

  // The log-sum-exp of every query's visible scaled scores, in double from the inputs.
  double lse_err = 0.0;
  const int group = H / KV;
  for (int h = 0; h < H; ++h) {
    for (int t = 0; t < T; ++t) {
      double mx = -INFINITY;
      std::vector<double> sc;
      for (int j = 0; j <= t; ++j) {
        if (seg != nullptr && seg[j] != seg[t]) continue;
        double dot = 0.0;
        for (int d = 0; d < HD; ++d)
          dot += double(q[(size_t(t) * H + h) * HD + d]) * k[(size_t(j) * KV + h / group) * HD + d];
        sc.push_back(dot * a.scale);
        mx = std::max(mx, sc.back());
      }
      double sum = 0.0;
      for (double x : sc) sum += std::exp(x - mx);
      lse_err = std::max(lse_err, std::abs(lse[size_t(h) * T + t] - (mx + std::log(sum))));
    }
  }
  // bf16 inputs (8 significant bits) bound the scores' error to about 1% of their size.
  // Measured with correct code: lse within 0.025, relative errors 0.3% to 0.7%.
  EXPECT_LT(lse_err, 0.05);
  EXPECT_LT(RelativeError(out, out_ref), 1.2e-2);
  EXPECT_LT(RelativeError(dq, dq_ref), 1.5e-2);
  EXPECT_LT(RelativeError(dk, dk_ref), 1.5e-2);
  EXPECT_LT(RelativeError(dv, dv_ref), 1.2e-2);
  for (const auto* x : {&out, &dq, &dk, &dv}) {
    for (float f : *x) ASSERT_TRUE(std::isfinite(f)) << "an output element was not written";
  }
}

TEST(FlashAttentionEmulation, MatchesCpuTwinGroupedQueryPacked) {
  CheckAgainstCpu({70, 4, 2, 32, true});
}

TEST(FlashAttentionEmulation, MatchesCpuTwinSeveralTilesOneSegment) {
  CheckAgainstCpu({150, 2, 1, 32, false});
}

TEST(FlashAttentionEmulation, MatchesCpuTwinHeadDim64) { CheckAgainstCpu({45, 2, 2, 64, true}); }

TEST(FlashAttentionEmulation, MatchesCpuTwinHeadDim128) { CheckAgainstCpu({33, 1, 1, 128, false}); }

// A block program must only depend on what it reads: two runs on the same inputs agree bit for
// bit (no reduction depends on thread timing).
TEST(FlashAttentionEmulation, Deterministic) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int T = 66, H = 2, KV = 1, HD = 32;
  std::vector<float> q(T * H * HD), k(T * KV * HD), v(T * KV * HD), dout(T * H * HD);
  for (auto* x : {&q, &k, &v, &dout})
    for (float& f : *x) f = normal(rng);
  auto run = [&] {
    std::vector<float> r(T * H * HD * 2 + T * KV * HD * 2 + H * T);
    fl::FlashArgs<float> a;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.dout = dout.data();
    a.out = r.data();
    a.dq = a.out + T * H * HD;
    a.dk = a.dq + T * H * HD;
    a.dv = a.dk + T * KV * HD;
    a.lse = a.dv + T * KV * HD;
    a.T = T;
    a.H = H;
    a.KV = KV;
    a.scale = 0.2f;
    RunFlash<32>(a);
    return r;
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace qlorad
