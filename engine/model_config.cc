#include "engine/model_config.h"

#include "absl/strings/str_cat.h"

namespace qlorad {

int64_t LlamaConfig::ParameterCount() const {
  const int64_t h = hidden_size;
  const int64_t per_layer = h * h * 2 + h * kv_dim() * 2 + 3 * h * intermediate_size + 2 * h;
  return vocab_size * h * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + h;
}

absl::Status LlamaConfig::Validate() const {
  auto positive = [](int64_t v, const char* name) -> absl::Status {
    if (v <= 0)
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", name, " must be positive, got ", v));
    return absl::OkStatus();
  };
  for (auto [v, name] : {std::pair{hidden_size, "hidden_size"},
                         {intermediate_size, "intermediate_size"},
                         {num_hidden_layers, "num_hidden_layers"},
                         {num_attention_heads, "num_attention_heads"},
                         {num_key_value_heads, "num_key_value_heads"},
                         {vocab_size, "vocab_size"},
                         {max_position_embeddings, "max_position_embeddings"}}) {
    if (auto s = positive(v, name); !s.ok()) return s;
  }
  if (hidden_size % num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config: hidden_size ", hidden_size,
                                                   " is not a multiple of num_attention_heads ",
                                                   num_attention_heads));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: num_attention_heads ", num_attention_heads,
                     " is not a multiple of num_key_value_heads ", num_key_value_heads));
  }
  if (head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: head dim ", head_dim(), " is odd; RoPE needs it even"));
  }
  if (!(rms_norm_eps > 0.0f))
    return absl::InvalidArgumentError("config: rms_norm_eps must be positive");
  if (!(rope_theta > 0.0f))
    return absl::InvalidArgumentError("config: rope_theta must be positive");
  return absl::OkStatus();
}

}  // namespace qlorad
