// The LLaMA-architecture hyperparameters, read from and written to a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace qlorad {

struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t kv_dim() const { return head_dim() * num_key_value_heads; }
  // Parameters of the whole model (embeddings counted once when tied).
  int64_t ParameterCount() const;

  // Every dimension positive and within bounds, heads divide hidden size, kv heads divide
  // heads, even head_dim.
  absl::Status Validate() const;
};

// Parses a config.json text. Requires model_type "llama" or "mistral" (or a LlamaForCausalLM /
// MistralForCausalLM architecture); unknown rope_scaling is rejected rather than ignored.
// `source` names the file in error messages.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text,
                                             const std::string& source);
std::string LlamaConfigToJson(const LlamaConfig& c);

}  // namespace qlorad
