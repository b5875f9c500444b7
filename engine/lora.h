// LoRA adapters with PEFT semantics (REFERENCE.md): for each targeted linear W [out, in] of
// each layer, A [r, in] (Kaiming-uniform, bound 1/sqrt(in)) and B [out, r] (zeros), applied as
// y = W x + s * B A dropout(x) with s = alpha/r (alpha/sqrt(r) with rsLoRA).
//
// All parameters live in one float32 arena, slot after slot (layer-major, then the module order
// of kLinearModuleNames, A before B), so that the optimizer, gradient norms, checkpoints and
// uploads are one contiguous operation.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace qlorad {

struct LoraConfig {
  int64_t rank = 16;
  float alpha = 32.0f;
  float dropout = 0.05f;
  std::vector<std::string> target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  bool use_rslora = false;
  uint64_t seed = 0;  // initialisation of A

  float scale() const;
  // The plain lora_alpha with the same scale, for serving stacks that ignore rsLoRA:
  // alpha / sqrt(r) == (alpha * sqrt(r)) / r. Computed in one place so that the exported and
  // the downloaded adapter_config.json say the same number.
  static float PlainAlpha(float rslora_alpha, int64_t rank);
  // rank > 0, alpha > 0, dropout in [0, 1), target names known and not repeated.
  absl::Status Validate() const;
};

// "all-linear" or a comma-separated list of the module names of kLinearModuleNames.
absl::StatusOr<std::vector<std::string>> ParseTargetModules(const std::string& spec);

struct LoraSlot {
  int64_t layer = 0;
  int module = 0;  // index into kLinearModuleNames
  int64_t in = 0, out = 0;
  int64_t a_offset = 0;  // A [rank, in] at arena[a_offset]
  int64_t b_offset = 0;  // B [out, rank] at arena[b_offset]
};

// The layout of an adapter's arena for a model and a LoRA config.
class LoraLayout {
 public:
  LoraLayout(const LlamaConfig& model, const LoraConfig& lora);
  const std::vector<LoraSlot>& slots() const { return slots_; }
  int64_t num_params() const { return num_params_; }
  // The slot of (layer, module index), or null when that module is not targeted.
  const LoraSlot* Find(int64_t layer, int module) const;

 private:
  std::vector<LoraSlot> slots_;
  std::vector<std::array<int, 7>> index_;  // per layer: slot index or -1
  int64_t num_params_ = 0;
};

// Module dimensions of a LLaMA linear: {in, out}.
std::pair<int64_t, int64_t> LinearShape(const LlamaConfig& c, int module);

// A fresh adapter's parameters, PEFT initialisation from `lora.seed`.
std::vector<float> InitLoraParams(const LoraLayout& layout, const LoraConfig& lora);

}  // namespace qlorad
