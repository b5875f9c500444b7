#include "engine/model_config.h"

#include "gtest/gtest.h"

namespace qlorad {
namespace {

constexpr char kTinyLlama[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
  "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
  "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"})";

TEST(ModelConfig, ParsesTinyLlama) {
  auto c = ParseLlamaConfig(kTinyLlama, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim(), 64);
  EXPECT_EQ(c->kv_dim(), 256);
  EXPECT_FALSE(c->tie_word_embeddings);
  // TinyLlama-1.1B's published parameter count.
  EXPECT_EQ(c->ParameterCount(), 1100048384);
}

TEST(ModelConfig, RoundTripsThroughJson) {
  auto c = ParseLlamaConfig(kTinyLlama, "config.json");
  auto again = ParseLlamaConfig(LlamaConfigToJson(*c), "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ParameterCount(), c->ParameterCount());
  EXPECT_EQ(again->num_key_value_heads, 4);
  EXPECT_EQ(again->torch_dtype, "bfloat16");
}

TEST(ModelConfig, ReadsTransformers5RopeParametersAndHeadDim) {
  auto c = ParseLlamaConfig(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
      "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
      "head_dim": 8, "dtype": "float32",
      "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}})",
                            "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 500000.0f);
  EXPECT_EQ(c->torch_dtype, "float32");
}

void ExpectError(const std::string& json, const std::string& needle) {
  auto c = ParseLlamaConfig(json, "cfg.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status();
}

TEST(ModelConfig, ErrorsNameTheField) {
  ExpectError("[1]", "not a JSON object");
  ExpectError(R"({"model_type": "gpt2"})", "model_type");
  ExpectError(R"({"model_type": "llama", "hidden_size": 64})", "intermediate_size");
  ExpectError(R"({"model_type": "llama", "hidden_size": "64", "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 1})",
              "'hidden_size' must be an integer");
  ExpectError(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 6, "vocab_size": 1})",
              "not a multiple of num_attention_heads");
  ExpectError(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 3,
                  "vocab_size": 1})",
              "num_key_value_heads");
  ExpectError(R"({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2}})",
              "rope_scaling");
  ExpectError(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 1,
                  "rope_parameters": {"rope_theta": 1e6, "rope_type": "llama3"}})",
              "rope_parameters.rope_type");
  ExpectError(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 1, "head_dim": 16})",
              "head_dim");
  ExpectError(R"({"model_type": "llama", "hidden_size": 0, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 1})",
              "hidden_size must be positive");
  // Types the JSON library would have thrown on, ending the daemon that read the upload.
  ExpectError(R"({"model_type": 5})", "'model_type' must be a string");
  const std::string dims = R"("model_type": "llama", "hidden_size": 64, "intermediate_size": 1,
                  "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 1)";
  ExpectError("{" + dims + R"(, "eos_token_id": ["2"]})", "'eos_token_id' must list integers");
  ExpectError("{" + dims + R"(, "rope_theta": 1e39})", "'rope_theta' must be a finite number");
  ExpectError("{" + dims + R"(, "rope_parameters": {"rope_theta": "1e6"}})",
              "'rope_parameters.rope_theta' must be a finite number");
  ExpectError("{" + dims + R"(, "attention_bias": "no"})",
              "'attention_bias' must be true or false");
  ExpectError("{" + dims + R"(, "vocab_size": 18446744073709551615})",
              "'vocab_size' must be an integer");
  // Sizes that are allocated from before any tensor is read.
  ExpectError("{" + dims + R"(, "num_hidden_layers": 1000000000000})",
              "num_hidden_layers is 1000000000000; at most 1024 is supported");
  ExpectError("{" + dims + R"(, "max_position_embeddings": 288230376151711745})",
              "max_position_embeddings is 288230376151711745");
}

}  // namespace
}  // namespace qlorad
