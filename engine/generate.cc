#include "engine/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (o.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0, got ", o.temperature));
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", o.top_p));
  }
  return absl::OkStatus();
}

int32_t SampleToken(const float* logits, int64_t vocab, const SamplingOptions& o,
                    std::mt19937_64& rng) {
  if (o.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  const float mx = *std::max_element(logits, logits + vocab);
  std::vector<double> p(vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += p[i] = std::exp((logits[i] - mx) / o.temperature);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = vocab;
  if (o.top_p < 1.0f) {
    // Smallest set of most likely tokens whose mass reaches top_p (ties broken by id).
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
    double mass = 0.0;
    for (keep = 0; keep < vocab;) {
      mass += p[order[keep++]] / sum;
      if (mass >= o.top_p) break;
    }
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += p[order[i]];
  // 53 random bits -> uniform in [0, 1).
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0) * kept;
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

absl::StatusOr<GenerationResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                          const SamplingOptions& options,
                                          const std::function<bool(int32_t)>& on_token,
                                          const LoraWeights* lora) {
  RETURN_IF_ERROR(ValidateSamplingOptions(options));
  if (prompt.empty())
    return absl::InvalidArgumentError("the prompt has no tokens (start it with BOS)");
  const LlamaConfig& c = model.config();
  const int64_t capacity = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  if (capacity > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " tokens) + max_new_tokens (", options.max_new_tokens,
        ") exceeds the model's context of ", c.max_position_embeddings));
  }
  ASSIGN_OR_RETURN(auto cache, model.NewKvCache(capacity));
  std::mt19937_64 rng(options.seed);
  GenerationResult result;
  std::vector<float> logits;
  std::vector<int32_t> step = prompt;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    RETURN_IF_ERROR(model.Forward(step, cache.get(), /*all_logits=*/false, &logits, lora));
    const int32_t next = SampleToken(logits.data(), c.vocab_size, options, rng);
    if (options.stop_at_eos && next == c.eos_token_id) {
      result.stopped_at_eos = true;
      break;
    }
    result.tokens.push_back(next);
    if (on_token && !on_token(next)) break;
    step.assign(1, next);
  }
  return result;
}

}  // namespace qlorad
