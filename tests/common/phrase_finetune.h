// A fine-tune that stories260K (or any model of vocabulary >= 512) learns in a few steps: rows
// that repeat one of four fixed random phrases after BOS (the same four whatever `n`: rows made
// for evaluation are training rows too), and the trainer's settings for it. The
// GPU check (tests/gpu/real_model_gpu_test.cc) compares this run on the card against the CPU;
// tests/engine/phrase_finetune_test.cc checks on the CPU that its premises hold (the loss falls).
// Header-only and free of GoogleTest, so the GPU tests (plain executables) use it too.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "engine/dataset.h"
#include "engine/trainer.h"

namespace qlorad::testing {

inline std::vector<TrainingRow> PhraseRows(int64_t n, int64_t seq) {
  std::mt19937 r(5);
  std::uniform_int_distribution<int32_t> tok(3, 511);
  std::vector<std::vector<int32_t>> phrases(4);
  for (auto& p : phrases) {
    for (int i = 0; i < 12; ++i) p.push_back(tok(r));
  }
  std::vector<TrainingRow> rows;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& p = phrases[i % 4];
    TrainingRow row;
    row.tokens.push_back(1);
    while (static_cast<int64_t>(row.tokens.size()) < seq) {
      row.tokens.push_back(p[(row.tokens.size() - 1) % p.size()]);
    }
    for (int64_t t = 0; t < seq; ++t) {
      row.positions.push_back(static_cast<int32_t>(t));
      row.segments.push_back(0);
      row.targets.push_back(t + 1 < seq ? row.tokens[t + 1] : -1);
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

// r 8, alpha 16, dropout 0.05 (the dropout kernels run), a constant 3e-3, 16 steps of 4 rows.
inline TrainerOptions PhraseFineTuneOptions() {
  TrainerOptions o;
  o.lora.rank = 8;
  o.lora.alpha = 16.0f;
  o.lora.dropout = 0.05f;
  o.learning_rate = 3e-3;
  o.schedule = LrSchedule::kConstant;
  o.warmup_ratio = 0.0;
  o.max_steps = 16;
  o.batch_size = 4;
  o.seed = 3;
  return o;
}

}  // namespace qlorad::testing
