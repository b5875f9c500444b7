// The QLoRA training loop: data order, micro-batches and gradient accumulation, AdamW with a
// warmup schedule and global-norm clipping, validation and early stopping, a loss watchdog, and
// checkpoints that resume exactly (bitwise on the CPU for the same thread count).
//
// Data order is a function of (seed, epoch): a seeded permutation of the rows each epoch, and
// optimizer step s takes the rows [s' * B * G, (s' + 1) * B * G) of its epoch's permutation
// (s' = s mod steps_per_epoch; the last step of an epoch may be short). Dropout masks are a
// function of (seed, step, micro-batch). A checkpoint therefore needs only the step, the adapter,
// the AdamW moments and the early-stopping state. Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dataset.h"
#include "engine/llama_model.h"
#include "engine/lora.h"
#include "engine/lora_training.h"
#include "engine/lr_schedule.h"

namespace qlorad {

// Defaults are the common ones (REFERENCE.md): r 16, alpha 32, dropout 0.05, all linear layers,
// lr 2e-4, cosine with 3% warmup, max grad norm 1.0, weight decay 0.
struct TrainerOptions {
  LoraConfig lora;
  double learning_rate = 2e-4;
  LrSchedule schedule = LrSchedule::kCosine;
  double warmup_ratio = 0.03;
  int64_t epochs = 1;
  int64_t max_steps = 0;  // > 0 overrides epochs
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  double max_grad_norm = 1.0;  // 0: no clipping
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  uint64_t seed = 0;       // data order, dropout and initialisation (recorded)
  int64_t eval_every = 0;  // validation loss every N steps (and at the end); 0: only at the end
  int64_t early_stopping_patience = 0;  // stop after N evaluations without improvement; 0: off
  bool activation_checkpointing = false;
  // Paged optimizer memory (QLoRA): the AdamW moments live in pageable (managed) memory that
  // PageOutOptimizer sends to the host and the next optimizer step brings back (a GPU device;
  // no effect on the CPU).
  bool paged_optimizer = false;
  // Watchdog: fail when the loss is NaN/inf, or when its moving average (EMA, weight 0.1 on
  // the newest step) rises above its lowest value by more than max(blowup_margin nats,
  // blowup_ratio x that lowest value). A RMSNorm model's loss stays bounded when it diverges,
  // so a rise, not a size, is what gives divergence away.
  double blowup_ratio = 0.5;
  double blowup_margin = 2.0;

  // INVALID_ARGUMENT "<name>: <what is wrong>" for the first field out of range. The bounds are
  // the daemon's and qlora-engine's alike; `name_of` spells a field's name for the caller (the
  // field names here are those of the daemon's hyperparameters: "learning_rate"), and may be
  // empty to use them as they are.
  absl::Status Validate(
      const std::function<std::string(const std::string& field)>& name_of = nullptr) const;
};

struct StepReport {
  int64_t step = 0;  // optimizer steps completed
  int64_t total_steps = 0;
  int64_t epoch = 0;
  double loss = 0.0;  // mean over the step's target tokens
  double learning_rate = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t tokens = 0;      // tokens processed in this step (padding excluded)
  double tokens_per_second = 0.0;
  double eta_seconds = 0.0;
  std::optional<double> eval_loss;
  // The report of a step already reported, given again with the evaluation that an interrupt
  // cut from it: no new step (tokens 0).
  bool repeated = false;
};

// Rows [begin, end) of `order` (of `rows` themselves where `order` is empty) as a micro-batch,
// each padded to its seq_len: padding has token 0, position 0, segment -1 and no target. The
// rows must all have the same length() (Trainer::Create and EvaluateLoss check it).
MicroBatch GatherRows(const std::vector<TrainingRow>& rows, const std::vector<int64_t>& order,
                      int64_t begin, int64_t end);

class Trainer {
 public:
  // `model` must outlive the trainer. Rows come from BuildRows; `valid` may be empty.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(LlamaModel* model,
                                                         std::vector<TrainingRow> train,
                                                         std::vector<TrainingRow> valid,
                                                         const TrainerOptions& options);
  ~Trainer();

  // Runs until the last step, early stopping, or `on_step` returning false (a cancellation:
  // returns CANCELLED). The watchdog fails the run with FAILED_PRECONDITION naming the step.
  // `checkpoint_every` > 0 writes a checkpoint to `checkpoint_dir` every N steps.
  absl::Status Run(const std::function<bool(const StepReport&)>& on_step = {},
                   int64_t checkpoint_every = 0, const std::string& checkpoint_dir = "");
  // Runs up to (not beyond) `step` optimizer steps in total.
  absl::Status RunUntil(int64_t step, const std::function<bool(const StepReport&)>& on_step = {});
  // Asked before each micro-batch of a step: once true, the step ends unapplied (ABORTED) and
  // the trainer is as before it, so that a stop or a cancel does not wait out a long step (many
  // micro-batches of a large model). Asked too before each batch of the evaluation that follows
  // a step (up to 8M validation tokens): once true, RunUntil reports the step without its
  // evaluation and returns ABORTED, the step kept; the evaluation is then pending
  // (evaluation_pending(), kept in checkpoints) and the next RunUntil or Run does it first, so
  // that the run goes on as one never interrupted. ABORTED from Run or RunUntil means the
  // interrupt, and nothing else.
  void set_interrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  bool evaluation_pending() const { return eval_pending_; }

  // Directory: the PEFT adapter plus optimizer.safetensors and trainer_state.json.
  absl::Status SaveCheckpoint(const std::string& dir) const;
  absl::Status LoadCheckpoint(const std::string& dir);

  // With paged_optimizer: sends the AdamW moments to host memory until the next optimizer
  // step brings them back, so a job that waits (while other jobs step on its device) holds
  // only its adapter on the card. No-op otherwise. An error is the device's (TakeError).
  absl::Status PageOutOptimizer();

  // Mean validation loss per target token (no dropout). Never interrupted.
  absl::StatusOr<double> EvaluateLoss(const std::vector<TrainingRow>& rows) {
    return Evaluate(rows, /*cut=*/nullptr);
  }

  // The adapter's current parameters (a host copy), in layout() order; an error where the
  // device failed (Device::TakeError), so that a lost device's values are never stored.
  absl::StatusOr<std::vector<float>> ReadParams() const;
  // ReadParams, NaN where the device failed (tests and callers that compare).
  std::vector<float> params() const;
  const LoraLayout& layout() const { return *layout_; }
  const TrainerOptions& options() const { return options_; }
  int64_t step() const { return step_; }
  // Whether the training graph keeps bf16 activations (the device's preference).
  bool bf16_activations() const;
  int64_t total_steps() const { return total_steps_; }
  bool stopped_early() const { return stopped_early_; }
  // OK where SaveCheckpoint(dir) would replace nothing but a checkpoint of ours (it replaces
  // `dir` and deletes `dir`.partial and `dir`.old); FAILED_PRECONDITION naming the folder else.
  static absl::Status CanSaveCheckpointIn(const std::string& dir);
  // The optimizer steps `options` make of `train_rows` rows (max_steps, or epochs of them), and
  // those of one epoch (the last one may be short).
  static int64_t TotalSteps(int64_t train_rows, const TrainerOptions& options);
  static int64_t StepsPerEpoch(int64_t train_rows, const TrainerOptions& options);
  // The seed the checkpoint in `dir` was trained with, which a resume must repeat.
  static absl::StatusOr<uint64_t> CheckpointSeed(const std::string& dir);
  std::optional<double> best_eval_loss() const { return best_eval_; }
  // Once training ended: the step whose adapter the trainer holds (with early stopping the best
  // evaluated one, as load_best_model_at_end keeps it; else the last) and its validation loss.
  int64_t kept_step() const { return kept_best() ? best_step_ : step_; }
  std::optional<double> kept_eval_loss() const { return kept_best() ? best_eval_ : last_eval_; }

 private:
  // A device buffer's contents, checked against the device's errors.
  absl::StatusOr<std::vector<float>> ReadBuffer(const DeviceBuffer& b) const;
  Trainer() = default;
  absl::StatusOr<StepReport> Step();
  // The seeded row permutation of `epoch`, computed once per epoch (not per step).
  const std::vector<int64_t>& EpochOrder(int64_t epoch);
  // EvaluateLoss; with `cut` (not null), ABORTED once the interrupt says so (asked before each
  // batch), *cut then true.
  absl::StatusOr<double> Evaluate(const std::vector<TrainingRow>& rows, bool* cut);
  // The evaluation due after the step `report` tells of (every eval_every steps, or `force`):
  // its loss into the report. Cut by the interrupt: ABORTED, and pending (below).
  absl::Status MaybeEvaluate(StepReport* report, bool force);
  bool kept_best() const { return options_.early_stopping_patience > 0 && !best_params_.empty(); }

  LlamaModel* model_ = nullptr;
  Device* device_ = nullptr;
  TrainerOptions options_;
  std::unique_ptr<LoraLayout> layout_;
  std::unique_ptr<LoraTrainingGraph> graph_;
  std::vector<TrainingRow> train_, valid_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  std::unique_ptr<DeviceBuffer> d_params_, d_grads_, d_m_, d_v_;
  // A step's summed loss and squared gradient norm, made on the device and read at once.
  std::unique_ptr<DeviceBuffer> d_step_sums_;
  int64_t steps_per_epoch_ = 0, total_steps_ = 0, warmup_steps_ = 0, step_ = 0;
  std::optional<double> loss_ema_, min_loss_ema_, best_eval_, last_eval_;
  std::vector<float> best_params_;  // with early stopping: the adapter at best_step_
  std::function<bool()> interrupt_;
  // A hash of train_ (which never changes), made at the first checkpoint save or load.
  mutable std::string train_rows_hash_;
  const std::string& TrainRowsHash() const;
  int64_t best_step_ = 0;
  int64_t evals_without_improvement_ = 0;
  bool stopped_early_ = false;
  // An evaluation cut by the interrupt, and the report of the step it follows (given again,
  // with its loss, once done).
  bool eval_pending_ = false;
  StepReport pending_report_;
  double seconds_ = 0.0;
  int64_t timed_steps_ = 0;
};

}  // namespace qlorad
