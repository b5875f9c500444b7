// The float32 weights of a LLaMA-architecture model in Hugging Face names and layout (q/k rows
// in the "rotate half" RoPE order). Every loader (Hugging Face, llama2.c, GGUF) produces this;
// the model then quantizes the frozen linear weights to NF4.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model_config.h"

namespace qlorad {

// The seven linear projections of a decoder layer, the LoRA target module names.
inline constexpr const char* kLinearModuleNames[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

struct LlamaLayerWeights {
  std::vector<float> input_layernorm;           // [hidden]
  std::vector<float> q_proj, k_proj, v_proj;    // [out, in]
  std::vector<float> o_proj;                    // [hidden, hidden]
  std::vector<float> post_attention_layernorm;  // [hidden]
  std::vector<float> gate_proj, up_proj;        // [intermediate, hidden]
  std::vector<float> down_proj;                 // [hidden, intermediate]
};

struct LlamaWeights {
  LlamaConfig config;
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LlamaLayerWeights> layers;
  std::vector<float> norm;     // [hidden]
  std::vector<float> lm_head;  // [vocab, hidden]; empty when tie_word_embeddings
};

struct TensorSlot {
  std::string name;            // Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<int64_t> shape;  // expected shape
  std::vector<float>* data;    // where the values live
  bool is_linear;              // one of the seven projections (quantizable, LoRA target)
};

// Every tensor of the model with its Hugging Face name and expected shape, in checkpoint order.
// Resizes `w.layers` to the config's layer count first.
std::vector<TensorSlot> TensorSlots(LlamaWeights& w);

// Checks that every tensor has the size its shape requires.
absl::Status ValidateWeights(LlamaWeights& w);

// Hugging Face module path of a layer's projection: "model.layers.3.self_attn.q_proj".
std::string LinearModulePath(int64_t layer, const std::string& module);

// Row permutation of q/k projection weights between the Meta layout (RoPE rotates adjacent
// pairs 2i, 2i+1: llama2.c, GGUF) and the Hugging Face layout (rotates i and i + head_dim/2):
// view [heads, head_dim/2, 2, cols], swap the middle axes. `w` is [heads*head_dim, cols].
std::vector<float> PermuteMetaToHf(const std::vector<float>& w, int64_t heads, int64_t head_dim,
                                   int64_t cols);
std::vector<float> PermuteHfToMeta(const std::vector<float>& w, int64_t heads, int64_t head_dim,
                                   int64_t cols);

}  // namespace qlorad
