#include "engine/model_config.h"

#include "absl/strings/str_cat.h"

namespace qlorad {

int64_t LlamaConfig::ParameterCount() const {
  const int64_t h = hidden_size;
  const int64_t per_layer = h * h * 2 + h * kv_dim() * 2 + 3 * h * intermediate_size + 2 * h;
  return vocab_size * h * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + h;
}

absl::Status LlamaConfig::Validate() const {
  // Upper bounds well past any published LLaMA-family model: a header can claim any size, and
  // sizes are allocated from (a trillion layers) and multiplied (past int64) before any tensor
  // is read.
  struct Dimension {
    int64_t value;
    const char* name;
    int64_t max;
  };
  for (const Dimension& d :
       {Dimension{hidden_size, "hidden_size", int64_t{1} << 17},
        Dimension{intermediate_size, "intermediate_size", int64_t{1} << 19},
        Dimension{num_hidden_layers, "num_hidden_layers", 1024},
        Dimension{num_attention_heads, "num_attention_heads", 1024},
        Dimension{num_key_value_heads, "num_key_value_heads", 1024},
        Dimension{vocab_size, "vocab_size", int64_t{1} << 22},
        Dimension{max_position_embeddings, "max_position_embeddings", int64_t{1} << 24}}) {
    if (d.value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", d.name, " must be positive, got ", d.value));
    }
    if (d.value > d.max) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", d.name, " is ", d.value, "; at most ", d.max, " is supported"));
    }
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
