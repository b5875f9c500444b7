#include "engine/nf4_checkpoint.h"

#include <filesystem>

#include "engine/device.h"
#include "engine/hf_model_io.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {
namespace fs = std::filesystem;

using ::qlorad::testing::Stories260kHf;
using ::qlorad::testing::TempDir;

TEST(Nf4Checkpoint, SaveLoadRoundTripIsBitExact) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const std::string dir = TempDir("nf4_ck");
  auto saved = SaveNf4Checkpoint(*w, "", dir);
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->size(), 35u);  // 7 projections x 5 layers
  ASSERT_TRUE(*IsNf4Checkpoint(dir));
  auto loaded = LoadNf4Checkpoint(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const auto& [name, t] : *saved) {
    const Nf4Tensor& l = loaded->quantized.at(name);
    EXPECT_EQ(l.shape, t.shape) << name;
    EXPECT_EQ(l.packed, t.packed) << name;
    EXPECT_EQ(l.absmax_q, t.absmax_q) << name;
    EXPECT_EQ(l.nested_absmax, t.nested_absmax) << name;
    EXPECT_EQ(l.offset, t.offset) << name;
  }
  EXPECT_EQ(loaded->weights.embed_tokens, w->embed_tokens);
  EXPECT_EQ(loaded->weights.layers[2].post_attention_layernorm,
            w->layers[2].post_attention_layernorm);
}

TEST(Nf4Checkpoint, LayoutFollowsTransformers) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const std::string dir = TempDir("nf4_layout");
  ASSERT_TRUE(SaveNf4Checkpoint(*w, "", dir).ok());
  auto f = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  const std::string n = "model.layers.0.mlp.gate_proj.weight";  // [172, 64]
  EXPECT_EQ((*f)->tensors().at(n).dtype, DType::kU8);
  EXPECT_EQ((*f)->tensors().at(n).shape, (std::vector<int64_t>{172 * 64 / 2, 1}));
  EXPECT_EQ((*f)->tensors().at(n + ".absmax").shape, (std::vector<int64_t>{172}));
  EXPECT_EQ((*f)->tensors().at(n + ".quant_map").shape, (std::vector<int64_t>{16}));
  EXPECT_EQ((*f)->tensors().at(n + ".nested_absmax").shape, (std::vector<int64_t>{1}));
  EXPECT_EQ((*f)->tensors().at(n + ".nested_quant_map").shape, (std::vector<int64_t>{256}));
  const SafetensorsEntry& st = (*f)->tensors().at(n + ".quant_state.bitsandbytes__nf4");
  auto json = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(st.data), st.bytes));
  EXPECT_EQ(json["quant_type"], "nf4");
  EXPECT_EQ(json["blocksize"], 64);
  EXPECT_EQ(json["shape"], nlohmann::json({172, 64}));
  EXPECT_EQ(json["nested_blocksize"], 256);
  EXPECT_TRUE(json.contains("nested_offset"));
  EXPECT_EQ((*f)->tensors().at("model.norm.weight").dtype, DType::kF32);
}

TEST(Nf4Checkpoint, PrequantizedModelGivesTheSameLogitsAsQuantizingOnLoad) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const std::string dir = TempDir("nf4_logits");
  LlamaWeights copy = *w;
  ASSERT_TRUE(SaveNf4Checkpoint(copy, "", dir).ok());
  auto device = CreateCpuDevice();
  auto src = OpenModelSource(dir);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(src->format, "hf-bnb-4bit");
  auto pre =
      LlamaModel::Create(std::move(src->weights), device.get(), {}, std::move(src->prequantized));
  ASSERT_TRUE(pre.ok()) << pre.status();
  auto fresh = LlamaModel::Create(*w, device.get(), {});
  ASSERT_TRUE(fresh.ok());
  const std::vector<int32_t> seq = {1, 403, 407, 261, 378};
  std::vector<float> a, b;
  ASSERT_TRUE((*pre)->Forward(seq, (*(*pre)->NewKvCache(8)).get(), true, &a).ok());
  ASSERT_TRUE((*fresh)->Forward(seq, (*(*fresh)->NewKvCache(8)).get(), true, &b).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ((*pre)->linear_weight_bytes(), (*fresh)->linear_weight_bytes());
}

// IsNf4Checkpoint reads every Hugging Face folder registered: a wrong type is named (the JSON
// library threw, ending the daemon).
TEST(Nf4Checkpoint, QuantizationConfigTypesAreNamed) {
  const std::string dir = TempDir("nf4_config_types");
  auto with = [&](const nlohmann::json& q) {
    nlohmann::json config = {{"model_type", "llama"}, {"quantization_config", q}};
    EXPECT_TRUE(WriteStringToFile(dir + "/config.json", config.dump()).ok());
    return IsNf4Checkpoint(dir);
  };
  auto yes = with({{"quant_method", "bitsandbytes"}, {"load_in_4bit", "yes"}});
  ASSERT_FALSE(yes.ok());
  EXPECT_NE(yes.status().message().find("'quantization_config.load_in_4bit' must be true or false"),
            std::string::npos)
      << yes.status();
  auto method = with({{"quant_method", 4}});
  ASSERT_FALSE(method.ok());
  EXPECT_NE(method.status().message().find("'quantization_config.quant_method' must be a string"),
            std::string::npos)
      << method.status();
  auto nf4 = with({{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}});
  ASSERT_TRUE(nf4.ok()) << nf4.status();
  EXPECT_TRUE(*nf4);
}

TEST(Nf4Checkpoint, DamagedCheckpointsAreRejected) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const std::string dir = TempDir("nf4_damaged");
  ASSERT_TRUE(SaveNf4Checkpoint(*w, "", dir).ok());
  auto f = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  SafetensorsWriter out;
  for (const auto& [n, e] : (*f)->tensors()) {
    if (n == "model.layers.1.self_attn.v_proj.weight.nested_absmax") continue;
    out.Add(n, e.dtype, e.shape, e.data, e.bytes);
  }
  f->reset();
  ASSERT_TRUE(out.WriteTo(dir + "/model.safetensors").ok());
  auto loaded = LoadNf4Checkpoint(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("model.layers.1.self_attn.v_proj.weight.nested_absmax"),
            std::string::npos)
      << loaded.status();
}

}  // namespace
}  // namespace qlorad
