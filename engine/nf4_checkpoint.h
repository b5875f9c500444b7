// Quantized model checkpoints in the layout Hugging Face transformers writes for bitsandbytes
// 4-bit models: next to each quantized `<module>.weight` (packed uint8 [(n+1)/2, 1]) the
// entries `.weight.absmax`, `.weight.quant_map`, `.weight.nested_absmax`,
// `.weight.nested_quant_map` and `.weight.quant_state.bitsandbytes__nf4` (JSON in a uint8
// tensor), and a `quantization_config` in config.json. Checkpoints written by transformers load
// without re-quantizing, and ours load in transformers.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"
#include "engine/nf4_tensor.h"

namespace qlorad {

struct Nf4Checkpoint {
  LlamaWeights weights;                        // float32 non-linear tensors; linears left empty
  std::map<std::string, Nf4Tensor> quantized;  // by "<module>.weight"
};

// True when config.json declares a bitsandbytes 4-bit quantization_config.
absl::StatusOr<bool> IsNf4Checkpoint(const std::string& dir);

absl::StatusOr<Nf4Checkpoint> LoadNf4Checkpoint(const std::string& dir);

// Quantizes every linear weight of `weights` (NF4, double quantization per `options`) and
// writes the directory; the other tensors are stored as float32. Returns the quantized tensors
// too, so callers can report their size and error.
absl::StatusOr<std::map<std::string, Nf4Tensor>> SaveNf4Checkpoint(
    LlamaWeights& weights, const std::string& tokenizer_proto, const std::string& dir,
    const Nf4Options& options = {});

}  // namespace qlorad
