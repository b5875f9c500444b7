// The fused LoRA dropout kernels: the CPU twins (kernels/cpu/lora_dropout.h) against the unfused
// composition the CPU device runs (DropoutApply, then a GEMM, then an add), and the CUDA block
// programs (kernels/lora_dropout_body.h) run under the block emulator against the twins, on
// fresh random inputs with ragged sizes (tokens, inputs and ranks that fill no block).
#include "kernels/cpu/lora_dropout.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/gemm.h"
#include "kernels/lora_dropout_body.h"
#include "tests/kernels/cuda_block_emulator.h"

namespace qlorad {
namespace {

namespace lo = kernels::lora;

std::vector<float> Normal(std::mt19937_64& rng, int64_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Every element within atol + rtol |want|, and finite (NaN-filled outputs must be written).
void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float rtol,
                float atol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= atol + rtol * std::fabs(want[i]))) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": e.g. [" << first << "] got " << (first >= 0 ? got[first] : 0)
                    << " want " << (first >= 0 ? want[first] : 0);
}

struct Case {
  int64_t n, in, r;
  float p;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "n=" << c.n << " in=" << c.in << " r=" << c.r << " p=" << c.p;
}

class LoraDropoutTest : public ::testing::TestWithParam<Case> {};

// Fresh random operands for a case (the seed is reported on failure).
struct Inputs {
  explicit Inputs(const Case& c) : seed(std::random_device{}()), rng(seed) {
    x = Normal(rng, c.n * c.in, 1.0f);
    a = Normal(rng, c.r * c.in, 0.1f);
    dh = Normal(rng, c.n * c.r, 0.5f);
    da0 = Normal(rng, c.r * c.in, 0.2f);
    dx0 = Normal(rng, c.n * c.in, 0.2f);
    dropout_seed = rng();
    stream = rng() % 1000;
  }
  uint64_t seed;
  std::mt19937_64 rng;
  std::vector<float> x, a, dh, da0, dx0;
  uint64_t dropout_seed, stream;
};

TEST_P(LoraDropoutTest, CpuTwinsMatchTheUnfusedComposition) {
  const Case c = GetParam();
  const Inputs in(c);
  SCOPED_TRACE(::testing::Message() << "seed=" << in.seed);
  const auto &x = in.x, &a = in.a, &dh = in.dh, &da0 = in.da0, &dx0 = in.dx0;
  const uint64_t dseed = in.dropout_seed, stream = in.stream;
  std::vector<float> dropped(x.size());
  kernels::DropoutApply(x.data(), c.n * c.in, c.p, dseed, stream, dropped.data());

  std::vector<float> h(c.n * c.r, NAN), h_ref(c.n * c.r);
  kernels::LoraDropoutDown(x.data(), c.n, c.in, a.data(), c.r, c.p, dseed, stream, h.data());
  kernels::GemmF32Portable(false, true, c.n, c.r, c.in, 1.0f, dropped.data(), c.in, a.data(), c.in,
                           0.0f, h_ref.data(), c.r);
  ExpectNear(h, h_ref, 1e-4f, 1e-5f, "down-projection");

  std::vector<float> da = da0, da_ref = da0;
  kernels::LoraDropoutGradA(x.data(), dh.data(), c.n, c.in, c.r, c.p, dseed, stream, da.data());
  kernels::GemmF32Portable(true, false, c.r, c.in, c.n, 1.0f, dh.data(), c.r, dropped.data(), c.in,
                           1.0f, da_ref.data(), c.in);
  ExpectNear(da, da_ref, 1e-4f, 1e-5f, "dA");

  std::vector<float> dx = dx0, dx_ref = dx0, tmp(x.size());
  kernels::LoraDropoutBackwardInput(dh.data(), a.data(), c.n, c.in, c.r, c.p, dseed, stream,
                                    dx.data());
  kernels::GemmF32Portable(false, false, c.n, c.in, c.r, 1.0f, dh.data(), c.r, a.data(), c.in, 0.0f,
                           tmp.data(), c.in);
  kernels::DropoutApply(tmp.data(), c.n * c.in, c.p, dseed, stream, tmp.data());
  for (size_t i = 0; i < dx_ref.size(); ++i) dx_ref[i] += tmp[i];
  ExpectNear(dx, dx_ref, 1e-4f, 1e-5f, "dx");
  // The mask did drop something, and kept something, where p says it should.
  int64_t zeros = 0;
  for (float v : dropped) zeros += v == 0.0f;
  if (c.p > 0.0f) {
    EXPECT_GT(zeros, 0);
    EXPECT_LT(zeros, static_cast<int64_t>(dropped.size()));
  }
}

TEST_P(LoraDropoutTest, EmulatedBlocksMatchTheCpuTwins) {
  const Case c = GetParam();
  const Inputs in(c);
  SCOPED_TRACE(::testing::Message() << "seed=" << in.seed);
  const auto &x = in.x, &a = in.a, &dh = in.dh, &da0 = in.da0, &dx0 = in.dx0;
  lo::LoraDropoutArgs<float> args;
  args.x = x.data();
  args.a = a.data();
  args.dh = dh.data();
  args.n = c.n;
  args.in = c.in;
  args.r = static_cast<int>(c.r);
  args.p = c.p;
  args.scale = 1.0f / (1.0f - c.p);
  args.seed = in.dropout_seed;
  args.stream = in.stream;
  auto blocks = [](int64_t n, int64_t per) { return static_cast<int>((n + per - 1) / per); };
  auto run = [&](int gx, int gy, int smem_floats, auto program) {
    EXPECT_EQ(testing::RunEmulatedGrid(gx, gy, lo::kLoraThreads, smem_floats * 4,
                                       [&](testing::EmulatedContext& cx, unsigned char* smem) {
                                         program(cx, reinterpret_cast<float*>(smem));
                                       }),
              0);
  };

  std::vector<float> h(c.n * c.r, NAN), h_ref(c.n * c.r);
  args.h = h.data();
  run(blocks(c.n, lo::kDownRows), blocks(c.r, lo::kRankChunk),
      lo::kLoraThreads / 32 * lo::kDownRows * lo::kRankChunk,
      [&](testing::EmulatedContext& cx, float* smem) { lo::DownBlock(cx, args, smem); });
  kernels::LoraDropoutDown(x.data(), c.n, c.in, a.data(), c.r, c.p, args.seed, args.stream,
                           h_ref.data());
  ExpectNear(h, h_ref, 1e-4f, 1e-5f, "emulated down-projection");

  std::vector<float> partial(lo::GradTokenBlocks(c.n) * c.r * c.in, NAN);
  std::vector<float> da = da0, da_ref = da0;
  args.partial = partial.data();
  args.da = da.data();
  run(blocks(c.in, lo::kLoraThreads), static_cast<int>(lo::GradTokenBlocks(c.n)),
      lo::kGradTokens * lo::kMaxRank,
      [&](testing::EmulatedContext& cx, float* smem) { lo::GradABlock(cx, args, smem); });
  run(blocks(c.r * c.in, lo::kLoraThreads), 1, 0,
      [&](testing::EmulatedContext& cx, float*) { lo::FinishGradABlock(cx, args); });
  kernels::LoraDropoutGradA(x.data(), dh.data(), c.n, c.in, c.r, c.p, args.seed, args.stream,
                            da_ref.data());
  ExpectNear(da, da_ref, 1e-4f, 1e-5f, "emulated dA");

  std::vector<float> dx = dx0, dx_ref = dx0;
  args.dx = dx.data();
  run(blocks(c.n, lo::kInputRows), blocks(c.in, lo::kLoraThreads), lo::kInputRows * lo::kMaxRank,
      [&](testing::EmulatedContext& cx, float* smem) { lo::BackwardInputBlock(cx, args, smem); });
  kernels::LoraDropoutBackwardInput(dh.data(), a.data(), c.n, c.in, c.r, c.p, args.seed,
                                    args.stream, dx_ref.data());
  ExpectNear(dx, dx_ref, 1e-4f, 1e-5f, "emulated dx");
}

// Tokens that fill neither a block of 4, of 8 nor of 64; inputs that fill no block of 256;
// ranks below, across and at the 16-wide register chunk and the 64 maximum; odd row lengths,
// where neighbouring lanes share no hash (KeepTwoRows's other path).
INSTANTIATE_TEST_SUITE_P(Shapes, LoraDropoutTest,
                         ::testing::Values(Case{131, 300, 5, 0.1f}, Case{37, 300, 20, 0.3f},
                                           Case{9, 70, 64, 0.05f}, Case{13, 260, 16, 0.0f},
                                           Case{135, 257, 8, 0.2f}, Case{6, 33, 3, 0.5f}));

}  // namespace
}  // namespace qlorad
