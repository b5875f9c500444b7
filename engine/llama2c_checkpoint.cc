#include "engine/llama2c_checkpoint.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::StatusOr<LlamaWeights> ReadLlama2cCheckpoint(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  if (file->size() < 28) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short for a llama2.c header"));
  }
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof(h));
  // 64-bit from here: products such as dim * dim pass int32 for dims Validate allows.
  const int64_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4];
  const bool shared = h[5] > 0;
  const int32_t vocab = shared ? h[5] : -h[5];
  const int32_t seq_len = h[6];
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = seq_len;
  c.tie_word_embeddings = shared;
  c.rms_norm_eps = 1e-5f;  // llama2.c's fixed values
  c.rope_theta = 10000.0f;
  if (auto s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad llama2.c header: ", s.message()));
  }
  const int64_t hd = c.head_dim(), kv = c.kv_dim(), L = layers;
  const int64_t expected_floats = static_cast<int64_t>(vocab) * dim + L * dim + L * dim * dim +
                                  2 * L * kv * dim + L * dim * dim + L * dim +
                                  3 * L * hidden * dim + dim + seq_len * hd +
                                  (shared ? 0 : static_cast<int64_t>(vocab) * dim);
  const int64_t have_floats = static_cast<int64_t>(file->size() - 28) / 4;
  if (have_floats != expected_floats) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": holds ", have_floats, " floats after the header; dim=", dim,
                     " hidden=", hidden, " layers=", layers, " heads=", heads,
                     " kv_heads=", kv_heads, " vocab=", vocab, " need ", expected_floats));
  }
  const uint8_t* p = file->data() + 28;
  auto take = [&p](int64_t n) {
    std::vector<float> v(n);
    std::memcpy(v.data(), p, n * 4);
    p += n * 4;
    return v;
  };
  // Arrays are stacked over layers: [L, ...].
  auto per_layer = [&](int64_t n, auto member) {
    for (int64_t l = 0; l < L; ++l) w.layers[l].*member = take(n);
  };
  w.layers.resize(L);
  w.embed_tokens = take(static_cast<int64_t>(vocab) * dim);
  per_layer(dim, &LlamaLayerWeights::input_layernorm);
  per_layer(dim * dim, &LlamaLayerWeights::q_proj);
  per_layer(kv * dim, &LlamaLayerWeights::k_proj);
  per_layer(kv * dim, &LlamaLayerWeights::v_proj);
  per_layer(dim * dim, &LlamaLayerWeights::o_proj);
  per_layer(dim, &LlamaLayerWeights::post_attention_layernorm);
  per_layer(hidden * dim, &LlamaLayerWeights::gate_proj);  // w1
  per_layer(dim * hidden, &LlamaLayerWeights::down_proj);  // w2
  per_layer(hidden * dim, &LlamaLayerWeights::up_proj);    // w3
  w.norm = take(dim);
  p += seq_len * hd * 4;  // freq_cis_real and freq_cis_imag: recomputed from rope_theta.
  if (!shared) w.lm_head = take(static_cast<int64_t>(vocab) * dim);
  for (LlamaLayerWeights& layer : w.layers) {
    layer.q_proj = PermuteMetaToHf(layer.q_proj, heads, hd, dim);
    layer.k_proj = PermuteMetaToHf(layer.k_proj, kv_heads, hd, dim);
  }
  RETURN_IF_ERROR(ValidateWeights(w));
  return w;
}

}  // namespace qlorad
