// Karpathy's llama2.c checkpoints: reading one (engine/llama2c_checkpoint.h), and converting
// one with its tokenizer to a Hugging Face directory.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "engine/llama2c_checkpoint.h"

namespace qlorad {

// convert-llama2c: checkpoint + tokenizer (a SentencePiece tokenizer.model, or a llama2.c
// tokenizer .bin) -> a Hugging Face directory (config.json, model.safetensors, tokenizer.model).
absl::Status ConvertLlama2cToHf(const std::string& checkpoint, const std::string& tokenizer,
                                const std::string& out_dir);

}  // namespace qlorad
