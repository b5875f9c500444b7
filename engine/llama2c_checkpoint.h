// Karpathy's llama2.c checkpoints (legacy version-0 format): seven int32 header values, then
// float32 arrays. Part of the engine's compute core (no JSON, no tokenizer), so that the GPU
// check can train a real pretrained model.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"

namespace qlorad {

// Weights come out in Hugging Face layout (q/k rows permuted from Meta order).
absl::StatusOr<LlamaWeights> ReadLlama2cCheckpoint(const std::string& path);

}  // namespace qlorad
