#include "engine/evaluate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::StatusOr<EvalResult> EvaluateExamples(LlamaModel& model,
                                            const std::vector<TokenizedExample>& examples,
                                            int64_t max_tokens, const LoraWeights* lora,
                                            const std::function<bool()>& stop) {
  EvalResult r;
  double total = 0.0;
  const int64_t V = model.config().vocab_size;
  std::vector<float> logits, previous_last_row;
  for (const TokenizedExample& ex : examples) {
    if (stop && stop()) {
      return absl::CancelledError(absl::StrCat("stopped after ", &ex - examples.data(), " of ",
                                               examples.size(), " examples"));
    }
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(ex.tokens.size()), max_tokens);
    if (len < 2) continue;
    const std::vector<int32_t> tokens(ex.tokens.begin(), ex.tokens.begin() + len);
    ASSIGN_OR_RETURN(auto cache, model.NewKvCache(len));
    // In chunks through the KV cache: the logits of one chunk at a time ([chunk, vocab]), not of
    // the whole example, which for a long context and a large vocabulary would be gigabytes.
    for (int64_t begin = 0; begin < len; begin += kEvalChunkTokens) {
      const int64_t end = std::min(len, begin + kEvalChunkTokens);
      const std::vector<int32_t> chunk(tokens.begin() + begin, tokens.begin() + end);
      RETURN_IF_ERROR(model.Forward(chunk, cache.get(), /*all_logits=*/true, &logits, lora));
      // Token i is predicted from the logits of token i - 1: the previous chunk's last row
      // for the first token of a chunk.
      for (int64_t i = std::max<int64_t>(begin, 1); i < end; ++i) {
        if (!ex.is_target[i]) continue;
        const float* row =
            i - 1 >= begin ? logits.data() + (i - 1 - begin) * V : previous_last_row.data();
        const float mx = *std::max_element(row, row + V);
        double sum = 0.0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
        total += std::log(sum) + mx - row[tokens[i]];
        ++r.target_tokens;
      }
      previous_last_row.assign(logits.end() - V, logits.end());
    }
    ++r.examples;
  }
  if (r.target_tokens == 0) return absl::InvalidArgumentError("no target tokens to evaluate");
  r.loss = total / static_cast<double>(r.target_tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace qlorad
