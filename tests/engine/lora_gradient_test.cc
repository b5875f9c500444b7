// Hand-written backward pass against central finite differences, for every LoRA parameter
// kind (A and B of each of the seven target modules), through the frozen base, with packing,
// masked targets, dropout and activation checkpointing.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/lora.h"
#include "engine/lora_training.h"
#include "gtest/gtest.h"
#include "tests/common/random_model.h"

namespace qlorad {
namespace {

LlamaWeights RandomTinyModel(uint32_t seed) {
  std::mt19937 rng(seed);
  return testing::RandomLlamaWeights(testing::SmallLlamaConfig(16, 24, 37), rng, 0.5f, 0.1f);
}

MicroBatch TwoRows() {
  // Row 0: one example of 7 tokens. Row 1: two packed examples (4 + 3 tokens).
  MicroBatch b;
  b.rows = 2;
  b.seq_len = 7;
  b.tokens = {1, 5, 9, 13, 17, 21, 25, 1, 3, 6, 9, 1, 30, 31};
  b.positions = {0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2};
  b.segments = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1};
  b.targets = {-1, 9, 13, -1, 21, 25, 2, 3, 6, 9, -1, 30, 31, 2};
  return b;
}

struct Case {
  bool quantize;
  float dropout;
  bool checkpointing;
};

class LoraGradientTest : public ::testing::TestWithParam<Case> {};

TEST_P(LoraGradientTest, MatchesCentralFiniteDifferences) {
  const Case tc = GetParam();
  auto device = CreateCpuDevice();
  ModelOptions mo;
  mo.quantize = tc.quantize;
  mo.nf4.blocksize = 16;
  auto model = LlamaModel::Create(RandomTinyModel(7), device.get(), mo);
  ASSERT_TRUE(model.ok()) << model.status();
  LoraConfig lc;
  lc.rank = 3;
  lc.alpha = 6.0f;
  lc.dropout = tc.dropout;
  const LoraLayout layout((*model)->config(), lc);
  ASSERT_EQ(layout.slots().size(), 14u);
  // Random A and B (B = 0 at initialisation would make every A gradient zero).
  std::vector<float> params(layout.num_params());
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 0.3f);
  for (float& p : params) p = g(rng);
  TrainingGraphOptions go;
  go.dropout = tc.dropout;
  go.activation_checkpointing = tc.checkpointing;
  LoraTrainingGraph graph(model->get(), &layout, lc, go);
  const MicroBatch batch = TwoRows();
  const float scale = 1.0f / static_cast<float>(batch.num_targets());
  std::vector<float> grads(params.size(), 0.0f), scratch(params.size());
  auto loss_at = [&](const std::vector<float>& p) {
    std::fill(scratch.begin(), scratch.end(), 0.0f);
    auto l = graph.ForwardBackward(batch, p.data(), scratch.data(), scale, /*seed=*/99, /*step=*/3);
    EXPECT_TRUE(l.ok());
    return *l * scale;
  };
  ASSERT_TRUE(graph.ForwardBackward(batch, params.data(), grads.data(), scale, 99, 3).ok());
  int checked = 0;
  for (const LoraSlot& s : layout.slots()) {
    for (const bool is_a : {true, false}) {
      const int64_t base = is_a ? s.a_offset : s.b_offset;
      const int64_t count = is_a ? lc.rank * s.in : s.out * lc.rank;
      for (int64_t probe : {int64_t{0}, count / 2, count - 1}) {
        const int64_t i = base + probe;
        const float eps = 1e-2f;
        std::vector<float> plus = params, minus = params;
        plus[i] += eps;
        minus[i] -= eps;
        const double fd = (loss_at(plus) - loss_at(minus)) / (2.0 * eps);
        EXPECT_NEAR(grads[i], fd, 1e-3 + 3e-2 * std::fabs(fd))
            << "layer " << s.layer << " module " << s.module << (is_a ? " A[" : " B[") << probe
            << "]";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 14 * 2 * 3);
}

INSTANTIATE_TEST_SUITE_P(Variants, LoraGradientTest,
                         ::testing::Values(Case{false, 0.0f, false}, Case{true, 0.0f, false},
                                           Case{false, 0.3f, false}, Case{true, 0.3f, true}));

// With every linear adapted, and with the last linear (down_proj, whose output the recompute
// skips) left frozen.
TEST(LoraGradient, CheckpointingGivesTheSameGradients) {
  auto device = CreateCpuDevice();
  ModelOptions mo;
  mo.quantize = false;
  auto model = LlamaModel::Create(RandomTinyModel(3), device.get(), mo);
  ASSERT_TRUE(model.ok());
  const std::vector<std::string> all = LoraConfig().target_modules;
  for (const auto& targets : {all, std::vector<std::string>{"q_proj", "v_proj", "up_proj"}}) {
    SCOPED_TRACE(targets.size());
    LoraConfig lc;
    lc.rank = 2;
    lc.dropout = 0.1f;
    lc.target_modules = targets;
    const LoraLayout layout((*model)->config(), lc);
    std::vector<float> params = InitLoraParams(layout, lc);
    for (size_t i = 0; i < params.size(); ++i) params[i] += 0.01f * static_cast<float>(i % 7);
    std::vector<float> g1(params.size()), g2(params.size());
    TrainingGraphOptions plain, ckpt;
    plain.dropout = ckpt.dropout = 0.1f;
    ckpt.activation_checkpointing = true;
    LoraTrainingGraph a(model->get(), &layout, lc, plain), b(model->get(), &layout, lc, ckpt);
    const MicroBatch batch = TwoRows();
    auto la = a.ForwardBackward(batch, params.data(), g1.data(), 0.1f, 5, 1);
    auto lb = b.ForwardBackward(batch, params.data(), g2.data(), 0.1f, 5, 1);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_EQ(*la, *lb);
    EXPECT_EQ(g1, g2);
  }
}

// The memory plan is what the graph allocates (the daemon's admission estimate uses it), and a
// kept layer costs, per token: 1/rms twice and x A^T per module (r each) in float32, and q, the
// attention output and the residual (h each), k and v (kv each), gate and up (im each) and the
// layer's input (h) in the activation type, plus what the attention keeps per row; the norms'
// and SwiGLU's outputs are made again instead.
TEST(LoraGradient, MemoryPlanIsWhatTheGraphAllocates) {
  for (const bool bf16 : {false, true}) {
    for (const bool checkpointing : {false, true}) {
      auto device = CreateCpuDevice();
      ModelOptions mo;
      mo.quantize = false;
      auto model = LlamaModel::Create(RandomTinyModel(5), device.get(), mo);
      ASSERT_TRUE(model.ok());
      const LlamaConfig& c = (*model)->config();
      LoraConfig lc;
      lc.rank = 3;
      const LoraLayout layout(c, lc);
      TrainingGraphOptions go;
      go.activation_checkpointing = checkpointing;
      go.activations = bf16 ? ActivationPrecision::kBf16 : ActivationPrecision::kFloat32;
      LoraTrainingGraph graph(model->get(), &layout, lc, go);
      EXPECT_EQ(graph.bf16_activations(), bf16);
      const MicroBatch batch = TwoRows();
      std::vector<float> params = InitLoraParams(layout, lc), grads(params.size());
      const int64_t before = device->memory_usage().activations;
      // Allocates the graph's buffers; the CPU's bf16 operations convert in a scratch buffer of
      // the device's, counted as workspace.
      ASSERT_TRUE(graph.Loss(batch, params.data()).ok());
      const int64_t attn = device->AttentionSavedFloats(
          {batch.seq_len, c.num_attention_heads, c.num_key_value_heads, c.head_dim()});
      const int64_t planned = LoraTrainingGraph::ActivationBytes(
          c, lc.rank, checkpointing, batch.rows, batch.seq_len, attn, bf16);
      EXPECT_EQ(device->memory_usage().activations - before, planned)
          << "checkpointing " << checkpointing << " bf16 " << bf16;
    }
  }
  LlamaConfig c = RandomTinyModel(1).config;
  const int64_t rows = 3, seq = 10, attn = 55, r = 4;
  for (const int act_bytes : {4, 2}) {
    const int64_t per_layer =
        rows * seq *
            (4 * (2 + 7 * r) +
             act_bytes * (3 * c.hidden_size + 2 * c.kv_dim() + 2 * c.intermediate_size)) +
        rows * attn * 4;
    const bool bf16 = act_bytes == 2;
    EXPECT_EQ(LoraTrainingGraph::ActivationBytes(c, r, false, rows, seq, attn, bf16) -
                  LoraTrainingGraph::ActivationBytes(c, r, true, rows, seq, attn, bf16),
              (c.num_hidden_layers - 1) * per_layer);
  }
  // float32 activations against bf16 ones: two bytes more for every activation value (every
  // layer's input and the last one's output; a kept layer's q, attention output, residual, k,
  // v, gate and up; one layer's norm and SwiGLU outputs and its ten gradient buffers), less the
  // float32 copy of the last layer's output that the head reads when the activations are bf16.
  const int64_t n = rows * seq, h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size;
  const int64_t L = c.num_hidden_layers;
  const int64_t activation_values = (L + 1) * n * h + L * (3 * n * h + 2 * n * kv + 2 * n * im) +
                                    n * h + n * im + 6 * n * h + 2 * n * kv + 2 * n * im;
  EXPECT_EQ(LoraTrainingGraph::ActivationBytes(c, r, false, rows, seq, attn, false) -
                LoraTrainingGraph::ActivationBytes(c, r, false, rows, seq, attn, true),
            2 * activation_values - 4 * n * h);
}

TEST(LoraLayout, TrainableParametersAreRTimesInPlusOut) {
  LlamaConfig c = RandomTinyModel(1).config;
  LoraConfig lc;
  lc.rank = 4;
  // Per layer: q 16+16, k 16+8, v 16+8, o 16+16, gate 16+24, up 16+24, down 24+16.
  EXPECT_EQ(LoraLayout(c, lc).num_params(), 2 * 4 * (32 + 24 + 24 + 32 + 40 + 40 + 40));
  lc.target_modules = {"q_proj", "v_proj"};
  EXPECT_EQ(LoraLayout(c, lc).num_params(), 2 * 4 * (32 + 24));
  // The REFERENCE.md example: a 512 x 512 layer with r = 2 trains 2,048 parameters.
  LlamaConfig wide = c;
  wide.hidden_size = 512;
  wide.num_attention_heads = 8;
  wide.num_key_value_heads = 8;
  wide.num_hidden_layers = 1;
  lc.rank = 2;
  lc.target_modules = {"q_proj"};
  EXPECT_EQ(LoraLayout(wide, lc).num_params(), 2048);
}

TEST(LoraInit, PeftInitialisation) {
  LlamaConfig c = RandomTinyModel(1).config;
  LoraConfig lc;
  lc.rank = 8;
  lc.seed = 42;
  const LoraLayout layout(c, lc);
  const auto p = InitLoraParams(layout, lc);
  for (const LoraSlot& s : layout.slots()) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(s.in));
    float amax = 0;
    for (int64_t i = 0; i < lc.rank * s.in; ++i)
      amax = std::max(amax, std::fabs(p[s.a_offset + i]));
    EXPECT_LE(amax, bound);
    EXPECT_GT(amax, 0.8f * bound);  // the uniform range is actually used
    for (int64_t i = 0; i < s.out * lc.rank; ++i) ASSERT_EQ(p[s.b_offset + i], 0.0f);
  }
  EXPECT_EQ(InitLoraParams(layout, lc), p);  // same seed, same adapter
  lc.seed = 43;
  EXPECT_NE(InitLoraParams(layout, lc), p);
  EXPECT_FLOAT_EQ(lc.scale(), 32.0f / 8);
  lc.use_rslora = true;
  EXPECT_FLOAT_EQ(lc.scale(), 32.0f / std::sqrt(8.0f));
}

}  // namespace
}  // namespace qlorad
