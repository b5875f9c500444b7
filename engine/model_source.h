// Opens a model from whatever the user points at: a Hugging Face directory (float weights, or a
// bitsandbytes 4-bit checkpoint written by transformers or by `qlora-engine quantize`), or a
// GGUF file. Returns the float32 weights, any prequantized NF4 linear weights, and the tokenizer.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"
#include "engine/nf4_tensor.h"
#include "engine/tokenizer.h"

namespace qlorad {

struct ModelSource {
  std::string path;
  std::string format;  // "hf", "hf-bnb-4bit" or "gguf"
  LlamaWeights weights;
  std::map<std::string, Nf4Tensor> prequantized;  // by "<module>.weight"
  std::unique_ptr<Tokenizer> tokenizer;           // null when the directory has none
};

absl::StatusOr<ModelSource> OpenModelSource(const std::string& path);
// The tokenizer OpenModelSource gives for `path`, without reading any weight (NOT_FOUND for a
// directory without tokenizer.model).
absl::StatusOr<std::unique_ptr<Tokenizer>> OpenModelTokenizer(const std::string& path);

}  // namespace qlorad
