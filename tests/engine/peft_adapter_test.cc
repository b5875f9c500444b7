#include "engine/peft_adapter.h"

#include <cmath>
#include <random>

#include "engine/device.h"
#include "engine/device_adapter.h"
#include "engine/hf_model_io.h"
#include "engine/llama_model.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kHf;
using ::qlorad::testing::TempDir;

LoraConfig SomeConfig() {
  LoraConfig c;
  c.rank = 4;
  c.alpha = 8;
  c.dropout = 0.1f;
  c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return c;
}

std::vector<float> RandomParams(const LlamaConfig& model, const LoraConfig& c) {
  std::vector<float> p(LoraLayout(model, c).num_params());
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> g(0.0f, 0.05f);
  for (float& v : p) v = g(rng);
  return p;
}

std::vector<float> Logits(LlamaModel& model, const LoraWeights* lora) {
  std::vector<float> out;
  auto cache = model.NewKvCache(8);
  EXPECT_TRUE(model.Forward({1, 403, 407, 261, 378}, cache->get(), true, &out, lora).ok());
  return out;
}

TEST(PeftAdapter, ExportImportRoundTripGivesIdenticalLogits) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const LoraConfig c = SomeConfig();
  const auto params = RandomParams(w->config, c);
  const std::string dir = TempDir("peft_rt");
  ASSERT_TRUE(SavePeftAdapter(dir, w->config, c, params, {"stories260K"}).ok());
  auto back = LoadPeftAdapter(dir, w->config);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->params, params);
  EXPECT_EQ(back->config.rank, 4);
  EXPECT_EQ(back->config.target_modules, c.target_modules);
  auto device = CreateCpuDevice();
  auto model = LlamaModel::Create(*w, device.get(), {});
  ASSERT_TRUE(model.ok());
  auto a1 = DeviceAdapter::Create(device.get(), w->config, c, params);
  auto a2 = DeviceAdapter::Create(device.get(), w->config, back->config, back->params);
  ASSERT_TRUE(a1.ok() && a2.ok());
  const auto base = Logits(**model, nullptr);
  const auto l1 = Logits(**model, (*a1)->weights());
  EXPECT_EQ(l1, Logits(**model, (*a2)->weights()));
  EXPECT_NE(l1, base);  // the adapter does something
}

TEST(PeftAdapter, FilesFollowPeftNamesShapesAndConfig) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  LoraConfig c = SomeConfig();
  c.target_modules = {"q_proj", "down_proj"};
  const std::string dir = TempDir("peft_layout");
  ASSERT_TRUE(SavePeftAdapter(dir, w->config, c, RandomParams(w->config, c), {"base"}).ok());
  auto f = SafetensorsFile::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->tensors().size(), 5u * 2 * 2);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ(
      (*f)->tensors().at("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape,
      (std::vector<int64_t>{4, 64}));
  EXPECT_EQ((*f)->tensors().at("base_model.model.model.layers.4.mlp.down_proj.lora_B.weight").shape,
            (std::vector<int64_t>{64, 4}));
  EXPECT_EQ((*f)->tensors().at("base_model.model.model.layers.4.mlp.down_proj.lora_A.weight").shape,
            (std::vector<int64_t>{4, 172}));
  auto cfg = nlohmann::json::parse(*ReadFileToString(dir + "/adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 8.0);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["use_rslora"], false);
  EXPECT_EQ(cfg["fan_in_fan_out"], false);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"q_proj", "down_proj"}));
  EXPECT_EQ(cfg["base_model_name_or_path"], "base");
  for (const auto& [key, value] : cfg.items()) {  // nothing of ours in there
    EXPECT_TRUE(key == "peft_type" || key == "task_type" || key == "base_model_name_or_path" ||
                key == "r" || key == "lora_alpha" || key == "lora_dropout" ||
                key == "target_modules" || key == "bias" || key == "use_rslora" ||
                key == "fan_in_fan_out" || key == "inference_mode" || key == "init_lora_weights" ||
                key == "modules_to_save")
        << key;
  }
}

TEST(PeftAdapter, RsloraAlphaRewriteKeepsTheScale) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  LoraConfig c = SomeConfig();
  c.use_rslora = true;
  c.alpha = 8;  // scale 8 / sqrt(4) = 4
  const std::string dir = TempDir("peft_rslora");
  PeftExportOptions eo;
  eo.rewrite_rslora_alpha = true;
  ASSERT_TRUE(SavePeftAdapter(dir, w->config, c, RandomParams(w->config, c), eo).ok());
  auto back = LoadPeftAdapter(dir, w->config);
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->config.use_rslora);
  EXPECT_FLOAT_EQ(back->config.alpha, 16.0f);
  EXPECT_FLOAT_EQ(back->config.scale(), c.scale());
}

TEST(PeftAdapter, WrongShapesAndUnknownTensorsAreNamed) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const LoraConfig c = SomeConfig();
  const std::string dir = TempDir("peft_bad");
  ASSERT_TRUE(SavePeftAdapter(dir, w->config, c, RandomParams(w->config, c)).ok());
  // The same adapter against a model of other dimensions.
  LlamaConfig other = w->config;
  other.intermediate_size = 128;
  auto mismatch = LoadPeftAdapter(dir, other);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("gate_proj.lora_B.weight' has the wrong shape"),
            std::string::npos)
      << mismatch.status();
  // A rank in the config that the tensors do not have.
  auto cfg = nlohmann::json::parse(*ReadFileToString(dir + "/adapter_config.json"));
  cfg["r"] = 8;
  ASSERT_TRUE(WriteStringToFile(dir + "/adapter_config.json", cfg.dump()).ok());
  EXPECT_FALSE(LoadPeftAdapter(dir, w->config).ok());
  cfg["r"] = 4;
  cfg["peft_type"] = "IA3";
  ASSERT_TRUE(WriteStringToFile(dir + "/adapter_config.json", cfg.dump()).ok());
  EXPECT_NE(LoadPeftAdapter(dir, w->config).status().message().find("peft_type must be LORA"),
            std::string::npos);
}

// Configs from other tools: null where a field is unset reads as the default; a field of the
// wrong type is named (the JSON library threw, which ended qlora-engine); per-module scales or
// ranks, DoRA and layer subsets are refused by name (a scale pattern was read silently with
// the one alpha, so those modules had the wrong scale).
TEST(PeftAdapter, ConfigsFromOtherToolsAreReadOrRefusedByName) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const LoraConfig c = SomeConfig();
  const std::string dir = TempDir("peft_foreign");
  ASSERT_TRUE(SavePeftAdapter(dir, w->config, c, RandomParams(w->config, c)).ok());
  const auto original = nlohmann::json::parse(*ReadFileToString(dir + "/adapter_config.json"));
  auto load_with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json cfg = original;
    cfg[key] = value;
    EXPECT_TRUE(WriteStringToFile(dir + "/adapter_config.json", cfg.dump()).ok());
    return LoadPeftAdapter(dir, w->config).status();
  };
  for (const char* key : {"bias", "use_rslora", "fan_in_fan_out", "use_dora", "alpha_pattern",
                          "rank_pattern", "layers_to_transform"}) {
    EXPECT_TRUE(load_with(key, nullptr).ok()) << key << " = null";
  }
  EXPECT_TRUE(load_with("alpha_pattern", nlohmann::json::object()).ok());
  EXPECT_TRUE(load_with("lora_dropout", nullptr).ok());
  ASSERT_TRUE(load_with("lora_dropout", 0.25).ok());
  EXPECT_FLOAT_EQ(LoadPeftAdapter(dir, w->config)->config.dropout, 0.25f);
  const std::pair<const char*, nlohmann::json> refused[] = {
      {"use_rslora", "yes"},
      {"bias", 3},
      {"peft_type", nullptr},
      {"use_dora", true},
      {"alpha_pattern", {{"q_proj", 32}}},
      {"rank_pattern", {{"q_proj", 8}}},
      {"layers_to_transform", {0}},
      {"lora_dropout", "0.1"},  // was read as 0
      {"lora_alpha", 1e39},     // past float: an infinite scale
      {"r", nullptr},
      {"r", 4.5},
  };
  for (const auto& [key, value] : refused) {
    const absl::Status s = load_with(key, value);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << key << " = " << value.dump();
    EXPECT_NE(s.message().find(key), std::string::npos) << s;
  }
}

TEST(PeftAdapter, MergedModelEqualsBasePlusAdapter) {
  auto w = LoadHfWeights(Stories260kHf());
  ASSERT_TRUE(w.ok());
  const LoraConfig c = SomeConfig();
  const auto params = RandomParams(w->config, c);
  LlamaWeights merged = *w;
  ASSERT_TRUE(MergeAdapter(merged, c, params).ok());
  const std::string dir = TempDir("merged");
  ASSERT_TRUE(SaveHfModel(merged, "", dir).ok());
  auto reloaded = LoadHfWeights(dir);
  ASSERT_TRUE(reloaded.ok());
  auto device = CreateCpuDevice();
  ModelOptions fp32;
  fp32.quantize = false;
  auto base = LlamaModel::Create(*w, device.get(), fp32);
  auto merged_model = LlamaModel::Create(*reloaded, device.get(), fp32);
  ASSERT_TRUE(base.ok() && merged_model.ok());
  auto adapter = DeviceAdapter::Create(device.get(), w->config, c, params);
  ASSERT_TRUE(adapter.ok());
  const auto unmerged = Logits(**base, (*adapter)->weights());
  const auto folded = Logits(**merged_model, nullptr);
  ASSERT_EQ(unmerged.size(), folded.size());
  for (size_t i = 0; i < folded.size(); ++i)
    ASSERT_NEAR(folded[i], unmerged[i], 1e-4 * (1 + std::fabs(unmerged[i]))) << i;
}

}  // namespace
}  // namespace qlorad
