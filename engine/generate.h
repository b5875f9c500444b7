// Text generation with a KV cache: greedy (temperature 0), temperature and nucleus (top-p)
// sampling with a seeded generator; stops at EOS or after max_new_tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/llama_model.h"

namespace qlorad {

struct SamplingOptions {
  int64_t max_new_tokens = 256;
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

absl::Status ValidateSamplingOptions(const SamplingOptions& o);

// Picks the next token from one row of logits. Deterministic for a given generator state.
int32_t SampleToken(const float* logits, int64_t vocab, const SamplingOptions& o,
                    std::mt19937_64& rng);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (EOS excluded)
  bool stopped_at_eos = false;
};

// `prompt` must be non-empty (start it with BOS). `on_token` (optional) sees each new token as
// it is produced and may return false to stop.
// `lora`, when given, is applied unmerged.
absl::StatusOr<GenerationResult> Generate(LlamaModel& model, const std::vector<int32_t>& prompt,
                                          const SamplingOptions& options,
                                          const std::function<bool(int32_t)>& on_token = {},
                                          const LoraWeights* lora = nullptr);

}  // namespace qlorad
