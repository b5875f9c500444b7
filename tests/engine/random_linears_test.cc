// ModelOptions::random_linear_scale (the GPU benchmark's way to make a 7B model without host
// memory): linear weights left empty take the documented streams (1 + 7 * layer + module of the
// seed) through Device::RandomLinear. On the CPU that is FillUniform and the host quantizer, so
// this pins the plumbing and the stream layout; the card's RandomLinear is checked against the
// host bit for bit in tests/gpu/cuda_train_step_gpu_test.cc.
#include <array>
#include <random>
#include <vector>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/dropout.h"
#include "tests/common/random_model.h"

namespace qlorad {
namespace {

std::array<std::vector<float>*, 7> Linears(LlamaLayerWeights& l) {
  return {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj};
}

std::vector<float> Logits(LlamaWeights w, const ModelOptions& o) {
  auto device = CreateCpuDevice(1);
  auto model = LlamaModel::Create(std::move(w), device.get(), o);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  auto cache = (*model)->NewKvCache(16);
  EXPECT_TRUE(cache.ok());
  std::vector<float> logits;
  EXPECT_TRUE((*model)->Forward({1, 7, 9, 30, 2, 11}, cache->get(), true, &logits).ok());
  return logits;
}

TEST(RandomLinears, AreTheHostFilledModelBitForBit) {
  std::mt19937 rng(3);
  const LlamaConfig c = testing::SmallLlamaConfig(128, 192, 64);
  const LlamaWeights base = testing::RandomLlamaWeights(c, rng);
  constexpr uint64_t kSeed = 77;
  constexpr float kScale = 0.05f;

  LlamaWeights filled = base, empty = base;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto f = Linears(filled.layers[l]);
    auto e = Linears(empty.layers[l]);
    for (int mod = 0; mod < 7; ++mod) {
      kernels::FillUniform(f[mod]->data(), static_cast<int64_t>(f[mod]->size()), kSeed,
                           1 + 7 * l + mod, kScale);
      e[mod]->clear();
    }
  }
  ModelOptions random;
  random.random_linear_scale = kScale;
  random.random_linear_seed = kSeed;
  const std::vector<float> want = Logits(filled, ModelOptions{});
  const std::vector<float> got = Logits(empty, random);
  ASSERT_EQ(got.size(), 6u * 64u);
  EXPECT_EQ(got, want);

  // Another seed is another model; without the option an empty linear is an error naming it.
  random.random_linear_seed = kSeed + 1;
  EXPECT_NE(Logits(empty, random), want);
  auto device = CreateCpuDevice(1);
  auto refused = LlamaModel::Create(empty, device.get(), ModelOptions{});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("q_proj"), std::string::npos)
      << refused.status();
}

}  // namespace
}  // namespace qlorad
