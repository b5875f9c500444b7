// The JSON side of LlamaConfig (config.json of Hugging Face checkpoints), apart from the
// struct itself so that the engine's compute core builds without a JSON library.
#include "absl/strings/str_cat.h"
#include "engine/json_fields.h"
#include "engine/model_config.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlorad {

absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text,
                                             const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  const JsonFields f(j, source);
  std::string model_type;
  RETURN_IF_ERROR(f.Text("model_type", &model_type));
  bool llama_arch = model_type == "llama" || model_type == "mistral";
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      if (a == "LlamaForCausalLM" || a == "MistralForCausalLM") llama_arch = true;
    }
  }
  if (!llama_arch) {
    return f.Error(
        "model_type",
        absl::StrCat("is '", model_type,
                     "'; only LLaMA-architecture models (llama, mistral) are supported"));
  }
  if (f.Has("rope_scaling")) {
    return f.Error("rope_scaling", "is set; RoPE scaling is not supported yet");
  }
  bool attention_bias = false;
  RETURN_IF_ERROR(f.Flag("attention_bias", &attention_bias));
  if (attention_bias) return f.Error("attention_bias", "is true; LLaMA models without biases only");
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return f.Error("hidden_act", "must be 'silu'");
  }
  LlamaConfig c;
  RETURN_IF_ERROR(f.Int("hidden_size", true, &c.hidden_size));
  RETURN_IF_ERROR(f.Int("intermediate_size", true, &c.intermediate_size));
  RETURN_IF_ERROR(f.Int("num_hidden_layers", true, &c.num_hidden_layers));
  RETURN_IF_ERROR(f.Int("num_attention_heads", true, &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(f.Int("num_key_value_heads", false, &c.num_key_value_heads));
  RETURN_IF_ERROR(f.Int("vocab_size", true, &c.vocab_size));
  RETURN_IF_ERROR(f.Int("max_position_embeddings", false, &c.max_position_embeddings));
  RETURN_IF_ERROR(f.Int("bos_token_id", false, &c.bos_token_id));
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array()) {
    // Llama 3 lists several; take the first.
    const nlohmann::json& ids = j["eos_token_id"];
    if (!ids.empty()) {
      if (!ids[0].is_number_integer()) return f.Error("eos_token_id", "must list integers");
      c.eos_token_id = ids[0].get<int64_t>();
    }
  } else {
    RETURN_IF_ERROR(f.Int("eos_token_id", false, &c.eos_token_id));
  }
  RETURN_IF_ERROR(f.Number("rms_norm_eps", false, &c.rms_norm_eps));
  RETURN_IF_ERROR(f.Number("rope_theta", false, &c.rope_theta));
  // transformers >= 5 writes {"rope_parameters": {"rope_theta": ..., "rope_type": "default"}}.
  if (f.Has("rope_parameters")) {
    const auto& rp = j["rope_parameters"];
    if (!rp.is_object()) return f.Error("rope_parameters", "must be an object");
    const JsonFields rope(rp, source, "rope_parameters.");
    std::string rope_type = "default";
    RETURN_IF_ERROR(rope.Text("rope_type", &rope_type));
    if (rope_type != "default") {
      return rope.Error("rope_type", "is not 'default'; RoPE scaling is not supported yet");
    }
    RETURN_IF_ERROR(rope.Number("rope_theta", false, &c.rope_theta));
  }
  RETURN_IF_ERROR(f.Flag("tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(f.Text("torch_dtype", &c.torch_dtype));
  RETURN_IF_ERROR(f.Text("dtype", &c.torch_dtype));  // transformers >= 5
  if (f.Has("head_dim")) {
    int64_t head_dim = 0;
    RETURN_IF_ERROR(f.Int("head_dim", true, &head_dim));
    if (c.num_attention_heads > 0 && head_dim * c.num_attention_heads != c.hidden_size) {
      return f.Error(
          "head_dim",
          absl::StrCat("is ", head_dim, "; only hidden_size / num_attention_heads is supported"));
    }
  }
  if (auto v = c.Validate(); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", v.message()));
  }
  return c;
}

std::string LlamaConfigToJson(const LlamaConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["rope_scaling"] = nullptr;
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace qlorad
