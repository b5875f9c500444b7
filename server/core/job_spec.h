// What a job asks for, checked and completed before anything is stored: the server's limits,
// the engine's defaults filled in (Job.resolved records every value used, the seed included),
// and the memory a job needs on a device. Errors are INVALID_ARGUMENT naming the request field
// ("hyperparameters.rank: ..."), so clients can point at it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dataset.h"
#include "engine/model_config.h"
#include "engine/trainer.h"
#include "qlorad/v1/jobs.pb.h"
#include "qlorad/v1/limits.pb.h"
#include "qlorad/v1/models.pb.h"

namespace qlorad::core {

// A job's labels, and the label filters of a listing (each matched against every job listed).
constexpr int kMaxLabels = 32;

// What the server accepts for any job (the daemon's flags); a model's context caps seq_len.
struct ServerLimits {
  int64_t max_rank = 256;
  int64_t max_seq_len = 4096;
  int64_t max_batch_size = 256;
  int64_t max_total_steps = 1000000;
  // A validation set is evaluated whole at each evaluation, within one step, while the jobs
  // sharing its device wait: its rows' tokens are bounded (as Evaluate's are).
  int64_t max_validation_tokens = int64_t{1} << 23;
};

// The architecture a registered model recorded, as the engine's config.
LlamaConfig ConfigFromModel(const v1::Model& model);

// The limits for `model` (null: the server-wide ones).
v1::Limits LimitsFor(const ServerLimits& limits, const v1::Model* model);

// Every Hyperparameters field set: the request's values, or the defaults (r 16, alpha 2r,
// dropout 0.05, all linear layers, lr 2e-4, cosine, warmup 0.03, 1 epoch, batch 8, accumulation
// 1, seq_len min(512, context), no weight decay, a fresh seed, max grad norm 1.0).
absl::StatusOr<v1::Hyperparameters> ResolveHyperparameters(const v1::Hyperparameters& requested,
                                                           const v1::Model& model,
                                                           const ServerLimits& limits,
                                                           bool has_validation_set);

// The trainer's options and the row layout of resolved hyperparameters.
TrainerOptions TrainerOptionsFrom(const v1::Hyperparameters& resolved);
RowOptions RowOptionsFrom(const v1::Hyperparameters& resolved);

// Bytes a job holds on a device besides the shared base model: the LoRA parameters, gradients,
// AdamW moments and best-so-far copy (20 bytes a parameter), the training graph's buffers for a
// micro-batch (LoraTrainingGraph::ActivationBytes, with `attention_saved_per_row` floats of
// attention state a row: Device::AttentionSavedFloats of the device that will run it, or the
// largest among the devices that might; bf16 or float32 activations as that device prefers),
// and the dequantization workspace of the largest linear layer. An estimate used for admission,
// stated so that operators can check it against measured use.
int64_t JobMemoryBytes(const LlamaConfig& config, const v1::Hyperparameters& resolved,
                       int64_t attention_saved_per_row, bool bf16_activations);
// The CPU device's attention state per row ([heads, seq, seq] probabilities): the most any
// device keeps.
int64_t CpuAttentionSavedPerRow(const LlamaConfig& config, const v1::Hyperparameters& resolved);

// A stable digest of a create request, for idempotency keys.
std::string RequestFingerprint(const v1::CreateJobRequest& request);

}  // namespace qlorad::core
