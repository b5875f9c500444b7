// Hugging Face model directories: config.json, model.safetensors or shards listed in
// model.safetensors.index.json (F32/F16/BF16), and tokenizer.model.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/llama_weights.h"

namespace qlorad {

absl::StatusOr<LlamaConfig> LoadHfConfig(const std::string& dir);

// Loads every tensor of a LLaMA-architecture checkpoint to float32, checking names and shapes.
// Unknown tensors are an error (naming them), except rotary_emb.inv_freq buffers and an
// lm_head.weight in a tied model.
absl::StatusOr<LlamaWeights> LoadHfWeights(const std::string& dir);

// Writes config.json and model.safetensors (in `dtype`: F32, F16 or BF16), plus
// tokenizer.model when `tokenizer_proto` is not empty. Creates `dir`.
absl::Status SaveHfModel(LlamaWeights& weights, const std::string& tokenizer_proto,
                         const std::string& dir, DType dtype = DType::kF32);

// The safetensors files of a model directory: {"model.safetensors"} or the shards of the index.
absl::StatusOr<std::vector<std::string>> HfSafetensorsFiles(const std::string& dir);

}  // namespace qlorad
