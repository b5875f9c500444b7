// LoRA adapters in Hugging Face PEFT format (REFERENCE.md): adapter_config.json and
// adapter_model.safetensors with keys
// base_model.model.model.layers.N.{self_attn,mlp}.<module>.lora_{A,B}.weight, A [r, in],
// B [out, r], metadata {"format": "pt"}. The engine keeps q/k in Hugging Face order, so no row
// permutation is needed. Our own metadata stays out of adapter_config.json.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"
#include "engine/lora.h"

namespace qlorad {

struct PeftExportOptions {
  std::string base_model_name_or_path;
  // For serving stacks that ignore rsLoRA (llama.cpp): write lora_alpha * sqrt(r) and
  // use_rslora false, which gives the same scale alpha/sqrt(r).
  bool rewrite_rslora_alpha = false;
};

absl::Status SavePeftAdapter(const std::string& dir, const LlamaConfig& model,
                             const LoraConfig& lora, const std::vector<float>& params,
                             const PeftExportOptions& options = {});

struct PeftAdapter {
  LoraConfig config;
  std::vector<float> params;  // in LoraLayout(model, config) order
};

// Validates every tensor's name and shape against the model; the first problem is named.
absl::StatusOr<PeftAdapter> LoadPeftAdapter(const std::string& dir, const LlamaConfig& model);

// W += s * B A for every adapted linear of `weights` (float32 originals, not NF4).
absl::Status MergeAdapter(LlamaWeights& weights, const LoraConfig& lora,
                          const std::vector<float>& params);

// The PEFT key of a slot's A or B tensor.
std::string PeftKey(int64_t layer, int module, bool is_a);

}  // namespace qlorad
