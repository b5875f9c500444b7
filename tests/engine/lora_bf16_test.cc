// The training graph with bf16 activations (what a GPU runs) against the same graph with
// float32 activations on the CPU: the loss and every LoRA gradient agree within what rounding
// the activations to bf16 (8 bits of mantissa) allows, with NF4 and float32 weights, dropout
// and activation checkpointing.
#include <cmath>
#include <random>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/lora.h"
#include "engine/lora_training.h"
#include "gtest/gtest.h"
#include "tests/common/random_model.h"
#include "tests/common/relative_error.h"

namespace qlorad {
namespace {

LlamaWeights RandomSmallModel(uint32_t seed) {
  std::mt19937 rng(seed);
  return testing::RandomLlamaWeights(testing::SmallLlamaConfig(32, 48, 41), rng, 0.1f, 0.1f);
}

// The small model on `device`, NF4-quantized (blocks of 16) unless `quantize` is false, each
// weight multiplied by 1 + perturb N(0, 1) when `perturb` is not 0.
std::unique_ptr<LlamaModel> SmallModel(Device* device, uint32_t seed, bool quantize = true,
                                       float perturb = 0.0f) {
  ModelOptions mo;
  mo.quantize = quantize;
  mo.nf4.blocksize = 16;
  LlamaWeights w = RandomSmallModel(seed);
  if (perturb != 0.0f) {
    std::mt19937 rng(seed + 1000);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (TensorSlot& s : TensorSlots(w)) {
      for (float& x : *s.data) x *= 1.0f + perturb * noise(rng);
    }
  }
  auto model = LlamaModel::Create(std::move(w), device, mo);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

// Two rows of 9 tokens, the second packing two examples; some targets masked.
MicroBatch PackedRows(uint32_t seed, int64_t vocab) {
  MicroBatch b;
  b.rows = 2;
  b.seq_len = 9;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  for (int64_t i = 0; i < b.rows * b.seq_len; ++i) {
    b.tokens.push_back(tok(rng));
    b.targets.push_back(i % 5 == 0 ? -1 : tok(rng));
  }
  b.positions = {0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 0, 1, 2, 3, 4};
  b.segments = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1};
  return b;
}

struct Case {
  bool quantize;
  float dropout;
  bool checkpointing;
};

class LoraBf16Test : public ::testing::TestWithParam<Case> {};

struct StepResult {
  double loss = 0.0;
  std::vector<float> grads;
};

StepResult Step(LlamaModel* model, const LoraLayout& layout, const LoraConfig& lc,
                const TrainingGraphOptions& go, const MicroBatch& batch,
                const std::vector<float>& params, bool expect_bf16) {
  LoraTrainingGraph graph(model, &layout, lc, go);
  EXPECT_EQ(graph.bf16_activations(), expect_bf16);
  StepResult r;
  r.grads.assign(params.size(), 0.0f);
  auto loss = graph.ForwardBackward(batch, params.data(), r.grads.data(),
                                    1.0f / static_cast<float>(batch.num_targets()), 21, 4);
  EXPECT_TRUE(loss.ok()) << loss.status();
  r.loss = loss.ok() ? *loss : NAN;
  return r;
}

// The largest relative L2 difference over the A and B gradient blocks of every LoRA slot.
double WorstBlock(const LoraLayout& layout, int64_t rank, const std::vector<float>& got,
                  const std::vector<float>& want) {
  double worst = 0.0;
  for (const LoraSlot& s : layout.slots()) {
    for (const bool is_a : {true, false}) {
      const int64_t base = is_a ? s.a_offset : s.b_offset;
      const int64_t count = is_a ? rank * s.in : s.out * rank;
      worst = std::max(worst, testing::RelativeL2(got.data() + base, want.data() + base, count));
    }
  }
  return worst;
}

TEST_P(LoraBf16Test, TracksFloat32ActivationsWithinBf16Rounding) {
  const Case tc = GetParam();
  auto device = CreateCpuDevice();
  auto model = SmallModel(device.get(), 17, tc.quantize);
  ASSERT_NE(model, nullptr);
  LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8.0f;
  lc.dropout = tc.dropout;
  const LoraLayout layout(model->config(), lc);
  // Random A and B, so that every gradient is nonzero.
  std::vector<float> params(layout.num_params());
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 0.2f);
  for (float& p : params) p = g(rng);
  const MicroBatch batch = PackedRows(9, model->config().vocab_size);
  TrainingGraphOptions go;
  go.dropout = tc.dropout;
  go.activation_checkpointing = tc.checkpointing;
  go.activations = ActivationPrecision::kFloat32;
  const StepResult f32 = Step(model.get(), layout, lc, go, batch, params, false);
  go.activations = ActivationPrecision::kBf16;
  const StepResult bf16 = Step(model.get(), layout, lc, go, batch, params, true);

  // bf16 keeps 8 significant bits (relative rounding up to 2^-9). How much that can move this
  // small untrained model's gradients is measured here, not assumed: its float32 weights (NF4
  // would turn a small perturbation into whole quantization steps) multiplied by
  // 1 + 2^-9 N(0, 1), float32 activations, the same step. bf16 activations may move the worst
  // block by up to twice that; a wrong buffer or a lost accumulation moves blocks by tens of
  // percent.
  auto plain = SmallModel(device.get(), 17, /*quantize=*/false);
  auto shaken = SmallModel(device.get(), 17, /*quantize=*/false, 1.0f / 512.0f);
  ASSERT_TRUE(plain != nullptr && shaken != nullptr);
  go.activations = ActivationPrecision::kFloat32;
  const StepResult base = Step(plain.get(), layout, lc, go, batch, params, false);
  const StepResult moved = Step(shaken.get(), layout, lc, go, batch, params, false);
  const double sensitivity = WorstBlock(layout, lc.rank, moved.grads, base.grads);

  EXPECT_NEAR(bf16.loss, f32.loss, 2e-3 * std::fabs(f32.loss));
  const double worst = WorstBlock(layout, lc.rank, bf16.grads, f32.grads);
  EXPECT_LT(worst, 2.0 * sensitivity);
  // The bf16 graph really rounds (a graph that silently ran float32 would match exactly).
  EXPECT_GT(worst, 1e-4);
  EXPECT_NE(bf16.loss, f32.loss);
  std::printf(
      "worst relative gradient error %.4f (weights shaken by 2^-9: %.4f), loss %.6f vs "
      "%.6f\n",
      worst, sensitivity, bf16.loss, f32.loss);
}

INSTANTIATE_TEST_SUITE_P(Variants, LoraBf16Test,
                         ::testing::Values(Case{false, 0.0f, false}, Case{true, 0.0f, false},
                                           Case{true, 0.1f, false}, Case{true, 0.1f, true}));

// Recomputing a layer in bf16 makes the same bf16 values as the forward did, so checkpointing
// changes nothing, bit for bit, as with float32 activations.
TEST(LoraBf16, CheckpointingGivesTheSameGradients) {
  auto device = CreateCpuDevice();
  auto model = SmallModel(device.get(), 3);
  ASSERT_NE(model, nullptr);
  LoraConfig lc;
  lc.rank = 2;
  lc.dropout = 0.1f;
  const LoraLayout layout(model->config(), lc);
  std::vector<float> params = InitLoraParams(layout, lc);
  for (size_t i = 0; i < params.size(); ++i) params[i] += 0.01f * static_cast<float>(i % 7);
  TrainingGraphOptions plain, ckpt;
  plain.dropout = ckpt.dropout = 0.1f;
  plain.activations = ckpt.activations = ActivationPrecision::kBf16;
  ckpt.activation_checkpointing = true;
  const MicroBatch batch = PackedRows(2, model->config().vocab_size);
  const StepResult a = Step(model.get(), layout, lc, plain, batch, params, true);
  const StepResult b = Step(model.get(), layout, lc, ckpt, batch, params, true);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.grads, b.grads);
}

// The evaluation loss (no dropout, no gradients) in bf16 against float32, and the CPU's choice
// when nothing is asked: float32.
TEST(LoraBf16, EvaluationLossAndDefaultPrecision) {
  auto device = CreateCpuDevice();
  EXPECT_FALSE(device->PrefersBf16Activations({16, 4, 2, 8}));
  auto model = SmallModel(device.get(), 8);
  ASSERT_NE(model, nullptr);
  LoraConfig lc;
  lc.rank = 4;
  const LoraLayout layout(model->config(), lc);
  std::vector<float> params = InitLoraParams(layout, lc);
  const MicroBatch batch = PackedRows(4, model->config().vocab_size);
  TrainingGraphOptions go;
  LoraTrainingGraph preferred(model.get(), &layout, lc, go);
  EXPECT_FALSE(preferred.bf16_activations());
  go.activations = ActivationPrecision::kBf16;
  LoraTrainingGraph bf16(model.get(), &layout, lc, go);
  auto want = preferred.Loss(batch, params.data());
  auto got = bf16.Loss(batch, params.data());
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_NEAR(*got, *want, 2e-3 * std::fabs(*want));
  EXPECT_NE(*got, *want);
}

// The CPU runs bf16 through Device's conversion defaults; the graph reserves their scratch when
// it allocates (so that running out of memory is a status there, not a silent failure inside
// an operation), and no operation of a step needs more than was reserved. float32 weights: no
// dequantization workspace beside it.
TEST(LoraBf16, ConversionScratchIsReservedUpFront) {
  auto device = CreateCpuDevice();
  auto model = SmallModel(device.get(), 6, /*quantize=*/false);
  ASSERT_NE(model, nullptr);
  LoraConfig lc;
  lc.rank = 4;
  lc.dropout = 0.1f;
  const LoraLayout layout(model->config(), lc);
  std::vector<float> params = InitLoraParams(layout, lc), grads(params.size());
  const MicroBatch batch = PackedRows(3, model->config().vocab_size);
  TrainingGraphOptions go;
  go.dropout = 0.1f;
  go.activations = ActivationPrecision::kBf16;
  LoraTrainingGraph graph(model.get(), &layout, lc, go);
  const int64_t before = device->memory_usage().workspace;
  ASSERT_TRUE(graph.Loss(batch, params.data()).ok());  // allocates, then runs the forward
  // The most a default takes here: SwiGLU's backward, five copies of 18 tokens x 48
  // (intermediate) floats = 4,320, more than the attention backward's eight row tensors
  // (4 x 288 + 4 x 144 = 1,728). Without the reservation the forward alone would have grown it
  // to SwiGLU's three copies (2,592 floats).
  EXPECT_EQ(device->memory_usage().workspace - before, 4320 * 4);
  ASSERT_TRUE(graph.ForwardBackward(batch, params.data(), grads.data(), 0.1f, 1, 0).ok());
  EXPECT_EQ(device->memory_usage().workspace - before, 4320 * 4);
}

}  // namespace
}  // namespace qlorad
