// Learning-rate schedules with linear warmup, as Hugging Face transformers defines them
// (get_{constant,linear,cosine}_schedule_with_warmup): the multiplier for optimizer step s
// (0-based) is s / warmup during warmup, then 1 (constant), (total - s) / (total - warmup)
// (linear) or 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))) (cosine).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace qlorad {

enum class LrSchedule { kConstant, kLinear, kCosine };

absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name);
const char* LrScheduleName(LrSchedule s);

// Warmup steps for a ratio of the total: ceil(ratio * total), as transformers does.
int64_t WarmupSteps(double warmup_ratio, int64_t total_steps);

double LearningRateAt(LrSchedule schedule, double base_lr, int64_t step, int64_t warmup_steps,
                      int64_t total_steps);

}  // namespace qlorad
