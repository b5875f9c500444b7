// Karpathy's llama2.c checkpoints (legacy version-0 format): seven int32 header values, then
// float32 arrays. Weights come out in Hugging Face layout (q/k rows permuted from Meta order).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"

namespace qlorad {

absl::StatusOr<LlamaWeights> ReadLlama2cCheckpoint(const std::string& path);

// convert-llama2c: checkpoint + tokenizer (a SentencePiece tokenizer.model, or a llama2.c
// tokenizer .bin) -> a Hugging Face directory (config.json, model.safetensors, tokenizer.model).
absl::Status ConvertLlama2cToHf(const std::string& checkpoint, const std::string& tokenizer,
                                const std::string& out_dir);

}  // namespace qlorad
