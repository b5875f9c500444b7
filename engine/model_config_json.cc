// The JSON side of LlamaConfig (config.json of Hugging Face checkpoints), apart from the
// struct itself so that the engine's compute core builds without a JSON library.
#include "absl/strings/str_cat.h"
#include "engine/model_config.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace {

absl::Status Field(const std::string& source, const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
}

absl::Status ReadInt(const nlohmann::json& j, const std::string& source, const char* key,
                     bool required, int64_t* out) {
  if (!j.contains(key) || j[key].is_null()) {
    return required ? Field(source, key, "is missing") : absl::OkStatus();
  }
  if (!j[key].is_number_integer()) return Field(source, key, "must be an integer");
  *out = j[key].get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadFloat(const nlohmann::json& j, const std::string& source, const char* key,
                       float* out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_number()) return Field(source, key, "must be a number");
  *out = j[key].get<float>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text,
                                             const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  std::string model_type = j.value("model_type", "");
  bool llama_arch = model_type == "llama" || model_type == "mistral";
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      if (a == "LlamaForCausalLM" || a == "MistralForCausalLM") llama_arch = true;
    }
  }
  if (!llama_arch) {
    return Field(source, "model_type",
                 absl::StrCat("is '", model_type,
                              "'; only LLaMA-architecture models (llama, mistral) are supported"));
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return Field(source, "rope_scaling", "is set; RoPE scaling is not supported yet");
  }
  if (j.contains("attention_bias") && j["attention_bias"].is_boolean() &&
      j["attention_bias"].get<bool>()) {
    return Field(source, "attention_bias", "is true; LLaMA models without biases only");
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return Field(source, "hidden_act", "must be 'silu'");
  }
  LlamaConfig c;
  absl::Status s;
  if (!(s = ReadInt(j, source, "hidden_size", true, &c.hidden_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "intermediate_size", true, &c.intermediate_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "num_hidden_layers", true, &c.num_hidden_layers)).ok()) return s;
  if (!(s = ReadInt(j, source, "num_attention_heads", true, &c.num_attention_heads)).ok()) return s;
  c.num_key_value_heads = c.num_attention_heads;
  if (!(s = ReadInt(j, source, "num_key_value_heads", false, &c.num_key_value_heads)).ok())
    return s;
  if (!(s = ReadInt(j, source, "vocab_size", true, &c.vocab_size)).ok()) return s;
  if (!(s = ReadInt(j, source, "max_position_embeddings", false, &c.max_position_embeddings)).ok())
    return s;
  if (!(s = ReadInt(j, source, "bos_token_id", false, &c.bos_token_id)).ok()) return s;
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array() && !j["eos_token_id"].empty()) {
    c.eos_token_id = j["eos_token_id"][0].get<int64_t>();  // Llama 3 lists several; take the first.
  } else if (!(s = ReadInt(j, source, "eos_token_id", false, &c.eos_token_id)).ok()) {
    return s;
  }
  if (!(s = ReadFloat(j, source, "rms_norm_eps", &c.rms_norm_eps)).ok()) return s;
  if (!(s = ReadFloat(j, source, "rope_theta", &c.rope_theta)).ok()) return s;
  // transformers >= 5 writes {"rope_parameters": {"rope_theta": ..., "rope_type": "default"}}.
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const auto& rp = j["rope_parameters"];
    if (!rp.is_object()) return Field(source, "rope_parameters", "must be an object");
    if (rp.contains("rope_type") && rp["rope_type"] != "default") {
      return Field(source, "rope_parameters.rope_type",
                   "is not 'default'; RoPE scaling is not supported yet");
    }
    if (!(s = ReadFloat(rp, source, "rope_theta", &c.rope_theta)).ok()) return s;
  }
  if (j.contains("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean())
      return Field(source, "tie_word_embeddings", "must be a boolean");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("dtype") && j["dtype"].is_string())
    c.torch_dtype = j["dtype"];  // transformers >= 5
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    int64_t head_dim = 0;
    if (!(s = ReadInt(j, source, "head_dim", true, &head_dim)).ok()) return s;
    if (c.num_attention_heads > 0 && head_dim * c.num_attention_heads != c.hidden_size) {
      return Field(
          source, "head_dim",
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
