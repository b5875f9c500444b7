// Loss and perplexity of a model (optionally with an unmerged adapter) on tokenized examples,
// through the inference forward pass: the sum of -log p(target) over every target token.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dataset.h"
#include "engine/llama_model.h"

namespace qlorad {

struct EvalResult {
  double loss = 0.0;  // mean per target token
  double perplexity = 0.0;
  int64_t target_tokens = 0;
  int64_t examples = 0;
};

// Tokens run through the model at once while evaluating: the logits held are [this, vocab].
inline constexpr int64_t kEvalChunkTokens = 256;

// Examples longer than `max_tokens` are truncated to it (their remaining targets counted).
// `stop` (optional), asked before each example, ends the evaluation with CANCELLED.
absl::StatusOr<EvalResult> EvaluateExamples(LlamaModel& model,
                                            const std::vector<TokenizedExample>& examples,
                                            int64_t max_tokens, const LoraWeights* lora = nullptr,
                                            const std::function<bool()>& stop = nullptr);

}  // namespace qlorad
