#include "engine/llama_weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace qlorad {

std::string LinearModulePath(int64_t layer, const std::string& module) {
  const bool attn =
      module == "q_proj" || module == "k_proj" || module == "v_proj" || module == "o_proj";
  return absl::StrCat("model.layers.", layer, attn ? ".self_attn." : ".mlp.", module);
}

std::vector<TensorSlot> TensorSlots(LlamaWeights& w) {
  const LlamaConfig& c = w.config;
  const int64_t h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size;
  w.layers.resize(c.num_hidden_layers);
  std::vector<TensorSlot> s;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, &w.embed_tokens, false});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayerWeights& L = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    s.push_back({p + "input_layernorm.weight", {h}, &L.input_layernorm, false});
    s.push_back({p + "self_attn.q_proj.weight", {h, h}, &L.q_proj, true});
    s.push_back({p + "self_attn.k_proj.weight", {kv, h}, &L.k_proj, true});
    s.push_back({p + "self_attn.v_proj.weight", {kv, h}, &L.v_proj, true});
    s.push_back({p + "self_attn.o_proj.weight", {h, h}, &L.o_proj, true});
    s.push_back({p + "post_attention_layernorm.weight", {h}, &L.post_attention_layernorm, false});
    s.push_back({p + "mlp.gate_proj.weight", {im, h}, &L.gate_proj, true});
    s.push_back({p + "mlp.up_proj.weight", {im, h}, &L.up_proj, true});
    s.push_back({p + "mlp.down_proj.weight", {h, im}, &L.down_proj, true});
  }
  s.push_back({"model.norm.weight", {h}, &w.norm, false});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, h}, &w.lm_head, false});
  return s;
}

absl::Status ValidateWeights(LlamaWeights& w) {
  if (auto s = w.config.Validate(); !s.ok()) return s;
  for (const TensorSlot& slot : TensorSlots(w)) {
    int64_t n = 1;
    for (int64_t d : slot.shape) n *= d;
    if (static_cast<int64_t>(slot.data->size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", slot.name, " has ", slot.data->size(), " values, expected ", n));
    }
  }
  return absl::OkStatus();
}

namespace {

// Row r of the Meta layout (pair i, element j of head h: r = h*hd + 2i + j) is row
// h*hd + j*hd/2 + i of the Hugging Face layout.
std::vector<float> PermuteRows(const std::vector<float>& w, int64_t heads, int64_t head_dim,
                               int64_t cols, bool meta_to_hf) {
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t meta_row = h * head_dim + 2 * i + j;
        const int64_t hf_row = h * head_dim + j * half + i;
        const int64_t from = meta_to_hf ? meta_row : hf_row, to = meta_to_hf ? hf_row : meta_row;
        std::memcpy(&out[to * cols], &w[from * cols], cols * sizeof(float));
      }
    }
  }
  return out;
}

}  // namespace

std::vector<float> PermuteMetaToHf(const std::vector<float>& w, int64_t heads, int64_t head_dim,
                                   int64_t cols) {
  return PermuteRows(w, heads, head_dim, cols, /*meta_to_hf=*/true);
}

std::vector<float> PermuteHfToMeta(const std::vector<float>& w, int64_t heads, int64_t head_dim,
                                   int64_t cols) {
  return PermuteRows(w, heads, head_dim, cols, /*meta_to_hf=*/false);
}

}  // namespace qlorad
