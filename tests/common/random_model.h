// Random LLaMA weights for tests that need a model of a given shape but not a trained one (the
// 7B GPU bench fills its weights with a parallel hash instead, for speed): linear weights and
// embeddings ~ N(0, stddev), norm weights 1 + N(0, norm_jitter). Header-only and free of
// GoogleTest, so the GPU tests (plain executables) can use it too.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/dataset.h"
#include "engine/llama_weights.h"

namespace qlorad::testing {

// The small shape the engine's tests train: two layers of `hidden`, four query heads sharing two
// kv heads (grouped-query attention), 64 positions, an untied head.
inline LlamaConfig SmallLlamaConfig(int64_t hidden, int64_t intermediate, int64_t vocab) {
  return {.hidden_size = hidden,
          .intermediate_size = intermediate,
          .num_hidden_layers = 2,
          .num_attention_heads = 4,
          .num_key_value_heads = 2,
          .vocab_size = vocab,
          .max_position_embeddings = 64};
}

template <typename Rng>
LlamaWeights RandomLlamaWeights(const LlamaConfig& config, Rng& rng, float stddev = 0.05f,
                                float norm_jitter = 0.0f) {
  LlamaWeights w;
  w.config = config;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (TensorSlot& s : TensorSlots(w)) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    s.data->resize(n);
    const bool norm = s.shape.size() == 1;
    for (float& x : *s.data) x = norm ? 1.0f + norm_jitter * normal(rng) : stddev * normal(rng);
  }
  return w;
}

// `n` rows of `seq` random tokens (ids 3 and up: past the special ones), one example each, every
// position but the last with its next token as target.
template <typename Rng>
std::vector<TrainingRow> RandomTrainingRows(Rng& rng, int64_t n, int64_t seq, int64_t vocab) {
  std::vector<TrainingRow> rows;
  std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(vocab - 1));
  for (int64_t i = 0; i < n; ++i) {
    TrainingRow r;
    for (int64_t t = 0; t < seq; ++t) {
      r.tokens.push_back(tok(rng));
      r.positions.push_back(static_cast<int32_t>(t));
      r.segments.push_back(0);
    }
    for (int64_t t = 0; t < seq; ++t) r.targets.push_back(t + 1 < seq ? r.tokens[t + 1] : -1);
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace qlorad::testing
