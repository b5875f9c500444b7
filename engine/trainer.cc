#include "engine/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::Status TrainerOptions::Validate(
    const std::function<std::string(const std::string&)>& name_of) const {
  auto bad = [&](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(name_of ? name_of(field) : field, ": ", what));
  };
  if (lora.rank < 1) return bad("rank", absl::StrCat("must be at least 1, got ", lora.rank));
  // Bounded: a huge alpha trains (B starts at 0) into an adapter whose exported plain alpha
  // (alpha * sqrt(r) for rsLoRA) is infinite, and whose outputs are NaN.
  constexpr float kMaxAlpha = 65536.0f;
  if (!(lora.alpha > 0.0f && lora.alpha <= kMaxAlpha))
    return bad("alpha", absl::StrCat("must be in (0, ", kMaxAlpha, "], got ", lora.alpha));
  if (!(lora.dropout >= 0.0f && lora.dropout < 1.0f))
    return bad("dropout", absl::StrCat("must be in [0, 1), got ", lora.dropout));
  if (absl::Status s = lora.Validate(); !s.ok())
    return bad("target_modules", std::string(s.message()));
  if (!(learning_rate > 0.0 && learning_rate <= 1.0))
    return bad("learning_rate", absl::StrCat("must be in (0, 1], got ", learning_rate));
  if (!(warmup_ratio >= 0.0 && warmup_ratio < 1.0))
    return bad("warmup_ratio", absl::StrCat("must be in [0, 1), got ", warmup_ratio));
  if (epochs < 0 || epochs > 1000)
    return bad("epochs", absl::StrCat("must be in [1, 1000], got ", epochs));
  if (max_steps < 0) return bad("max_steps", absl::StrCat("must be at least 1, got ", max_steps));
  if (epochs == 0 && max_steps == 0) return bad("epochs", "give epochs or max_steps");
  if (batch_size < 1)
    return bad("batch_size", absl::StrCat("must be at least 1, got ", batch_size));
  if (grad_accum < 1 || grad_accum > 1024)
    return bad("grad_accum", absl::StrCat("must be in [1, 1024], got ", grad_accum));
  if (!(weight_decay >= 0.0 && weight_decay <= 10.0))
    return bad("weight_decay", absl::StrCat("must be in [0, 10], got ", weight_decay));
  if (!(max_grad_norm >= 0.0) || !std::isfinite(max_grad_norm))
    return bad("max_grad_norm", absl::StrCat("must be >= 0 (0: no clipping), got ", max_grad_norm));
  if (eval_every < 0) return bad("eval_every", absl::StrCat("must be >= 0, got ", eval_every));
  if (early_stopping_patience < 0) {
    return bad("early_stopping_patience",
               absl::StrCat("must be >= 0, got ", early_stopping_patience));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(LlamaModel* model,
                                                         std::vector<TrainingRow> train,
                                                         std::vector<TrainingRow> valid,
                                                         const TrainerOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (train.empty()) return absl::InvalidArgumentError("the training set has no rows");
  if (options.early_stopping_patience > 0 && valid.empty()) {
    return absl::InvalidArgumentError("early stopping needs a validation set");
  }
  if (options.eval_every > 0 && valid.empty()) {
    return absl::InvalidArgumentError("eval_every needs a validation set");
  }
  const int64_t seq_len = train[0].length();
  for (const auto* set : {&train, &valid}) {
    for (const TrainingRow& r : *set) {
      const size_t n = r.tokens.size();
      if (r.length() != seq_len) return absl::InvalidArgumentError("rows have different lengths");
      if (r.positions.size() != n || r.segments.size() != n || r.targets.size() != n)
        return absl::InvalidArgumentError(
            "a row's tokens, positions, segments and targets differ in size");
    }
  }
  if (seq_len > model->config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", seq_len,
                                                   " exceeds the model's context of ",
                                                   model->config().max_position_embeddings));
  }
  auto t = std::unique_ptr<Trainer>(new Trainer());
  t->model_ = model;
  t->device_ = model->device();
  t->options_ = options;
  t->options_.lora.seed = options.seed;
  t->layout_ = std::make_unique<LoraLayout>(model->config(), t->options_.lora);
  TrainingGraphOptions go;
  go.dropout = options.lora.dropout;
  go.activation_checkpointing = options.activation_checkpointing;
  t->graph_ = std::make_unique<LoraTrainingGraph>(model, t->layout_.get(), t->options_.lora, go);
  t->train_ = std::move(train);
  t->valid_ = std::move(valid);
  t->steps_per_epoch_ = StepsPerEpoch(static_cast<int64_t>(t->train_.size()), options);
  t->total_steps_ = TotalSteps(static_cast<int64_t>(t->train_.size()), options);
  t->warmup_steps_ = WarmupSteps(options.warmup_ratio, t->total_steps_);
  const int64_t n = t->layout_->num_params();
  ASSIGN_OR_RETURN(t->d_params_, t->device_->Alloc(n, BufferKind::kAdapter));
  ASSIGN_OR_RETURN(t->d_grads_, t->device_->Alloc(n, BufferKind::kAdapter));
  // Managed memory only where paging is asked for (a GPU shared by jobs): elsewhere plain
  // device memory, which cannot oversubscribe the card.
  const BufferKind moments =
      options.paged_optimizer ? BufferKind::kPagedOptimizer : BufferKind::kOptimizer;
  // Each moment is written before the next is asked for: managed memory takes no card memory
  // until it is touched, so a second request checked against the free memory would not see the
  // first.
  ASSIGN_OR_RETURN(t->d_m_, t->device_->Alloc(n, moments));
  t->device_->Fill(t->d_m_->data(), n, 0.0f);
  ASSIGN_OR_RETURN(t->d_v_, t->device_->Alloc(n, moments));
  t->device_->Fill(t->d_v_->data(), n, 0.0f);
  ASSIGN_OR_RETURN(t->d_step_sums_, t->device_->Alloc(2));
  const std::vector<float> init = InitLoraParams(*t->layout_, t->options_.lora);
  t->device_->CopyFromHost(init.data(), n, t->d_params_->data());
  return t;
}

Trainer::~Trainer() = default;

bool Trainer::bf16_activations() const { return graph_->bf16_activations(); }

absl::StatusOr<std::vector<float>> Trainer::ReadBuffer(const DeviceBuffer& b) const {
  std::vector<float> out(b.size());
  device_->CopyToHost(b.data(), b.size(), out.data());
  RETURN_IF_ERROR(device_->TakeError());
  return out;
}

absl::StatusOr<std::vector<float>> Trainer::ReadParams() const { return ReadBuffer(*d_params_); }

std::vector<float> Trainer::params() const {
  absl::StatusOr<std::vector<float>> p = ReadParams();
  return p.ok() ? *std::move(p) : std::vector<float>(d_params_->size(), NAN);
}

const std::vector<int64_t>& Trainer::EpochOrder(int64_t epoch) {
  if (epoch == order_epoch_) return order_;
  order_.resize(train_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
  std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng() % i]);
  order_epoch_ = epoch;
  return order_;
}

MicroBatch GatherRows(const std::vector<TrainingRow>& rows, const std::vector<int64_t>& order,
                      int64_t begin, int64_t end) {
  MicroBatch b;
  b.rows = end - begin;
  b.seq_len = rows[0].length();  // Create made them all as long
  const size_t n = static_cast<size_t>(b.rows * b.seq_len);
  b.tokens.reserve(n);
  b.positions.reserve(n);
  b.segments.reserve(n);
  b.targets.reserve(n);
  for (int64_t i = begin; i < end; ++i) {
    const TrainingRow& r = rows[order.empty() ? i : order[i]];
    const size_t pad = static_cast<size_t>(b.seq_len) - r.tokens.size();
    b.tokens.insert(b.tokens.end(), r.tokens.begin(), r.tokens.end());
    b.tokens.insert(b.tokens.end(), pad, 0);
    b.positions.insert(b.positions.end(), r.positions.begin(), r.positions.end());
    b.positions.insert(b.positions.end(), pad, 0);
    b.segments.insert(b.segments.end(), r.segments.begin(), r.segments.end());
    b.segments.insert(b.segments.end(), pad, -1);
    b.targets.insert(b.targets.end(), r.targets.begin(), r.targets.end());
    b.targets.insert(b.targets.end(), pad, -1);
  }
  return b;
}

absl::StatusOr<double> Trainer::Evaluate(const std::vector<TrainingRow>& rows, bool* cut) {
  if (rows.empty()) return absl::FailedPreconditionError("no validation rows");
  for (const TrainingRow& r : rows) {  // GatherRows pads each to the first's length
    if (r.length() != rows[0].length()) {
      return absl::InvalidArgumentError("rows have different lengths");
    }
  }
  double loss = 0.0;
  int64_t targets = 0;
  for (int64_t begin = 0; begin < static_cast<int64_t>(rows.size()); begin += options_.batch_size) {
    const int64_t end = std::min<int64_t>(rows.size(), begin + options_.batch_size);
    if (cut != nullptr && interrupt_ && interrupt_()) {
      RETURN_IF_ERROR(device_->TakeError());  // its batches' failures are this job's
      *cut = true;
      return absl::AbortedError(absl::StrCat("the evaluation after step ", step_, " interrupted"));
    }
    const MicroBatch b = GatherRows(rows, {}, begin, end);
    ASSIGN_OR_RETURN(double l, graph_->Loss(b, d_params_->data()));
    loss += l;
    targets += b.num_targets();
  }
  RETURN_IF_ERROR(device_->TakeError());  // the losses were read: trust them only now
  return loss / static_cast<double>(targets);
}

absl::StatusOr<StepReport> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const int64_t epoch = step_ / steps_per_epoch_;
  const std::vector<int64_t>& order = EpochOrder(epoch);
  const int64_t per_step = options_.batch_size * options_.grad_accum;
  const int64_t begin = (step_ % steps_per_epoch_) * per_step;
  const int64_t end = std::min<int64_t>(train_.size(), begin + per_step);
  int64_t targets = 0, tokens = 0;
  for (int64_t i = begin; i < end; ++i) {
    targets += train_[order[i]].num_targets();
    tokens += static_cast<int64_t>(train_[order[i]].tokens.size());  // padding is not kept
  }
  const int64_t n = layout_->num_params();
  device_->Fill(d_grads_->data(), n, 0.0f);
  float* sums = d_step_sums_->data();  // [0]: summed loss, [1]: squared gradient norm
  device_->Fill(sums, 1, 0.0f);
  // The loss of the whole step is normalised by its target tokens across all micro-batches,
  // so accumulation gives the gradient of one large batch.
  const float scale = 1.0f / static_cast<float>(std::max<int64_t>(1, targets));
  for (int64_t mb = begin; mb < end; mb += options_.batch_size) {
    // Nothing of the step is kept yet (the gradients are refilled by the next one; the data
    // order and dropout masks are functions of the step): it can end here unapplied.
    if (interrupt_ && interrupt_()) {
      // Its micro-batches' failures are this job's, not the next one's to read.
      RETURN_IF_ERROR(device_->TakeError());
      return absl::AbortedError(absl::StrCat("step ", step_ + 1, " interrupted"));
    }
    const MicroBatch b = GatherRows(train_, order, mb, std::min(end, mb + options_.batch_size));
    // Each micro-batch its own dropout masks: the masks index tokens within the micro-batch,
    // so with the step's one stream every micro-batch of it dropped the same elements.
    const uint64_t micro_batch =
        static_cast<uint64_t>(step_ * options_.grad_accum + (mb - begin) / options_.batch_size);
    RETURN_IF_ERROR(graph_->ForwardBackward(b, d_params_->data(), d_grads_->data(), scale,
                                            options_.seed, micro_batch, sums));
  }
  device_->SumSquares(d_grads_->data(), n, sums + 1);
  // The step's one wait for the device: the checks below must see the loss and the gradient
  // norm before the optimizer changes the adapter.
  float host_sums[2] = {0.0f, 0.0f};
  device_->CopyToHost(sums, 2, host_sums);
  // A device failure, not the learning rate, when the device says so (its reads are NaN).
  RETURN_IF_ERROR(device_->TakeError());
  StepReport r;
  r.epoch = epoch;
  r.loss = host_sums[0] / static_cast<double>(std::max<int64_t>(1, targets));
  r.tokens = tokens;
  if (!std::isfinite(r.loss)) {
    return absl::FailedPreconditionError(
        absl::StrCat("loss became ", r.loss, " at step ", step_ + 1, "; lower the learning rate"));
  }
  loss_ema_ = loss_ema_ ? 0.9 * *loss_ema_ + 0.1 * r.loss : r.loss;
  min_loss_ema_ = min_loss_ema_ ? std::min(*min_loss_ema_, *loss_ema_) : *loss_ema_;
  if (*loss_ema_ >
      *min_loss_ema_ + std::max(options_.blowup_margin, options_.blowup_ratio * *min_loss_ema_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("loss blew up at step ", step_ + 1, ": its moving average rose to ",
                     *loss_ema_, " from a low of ", *min_loss_ema_, "; lower the learning rate"));
  }
  r.grad_norm = std::sqrt(static_cast<double>(host_sums[1]));
  if (!std::isfinite(r.grad_norm)) {
    return absl::FailedPreconditionError(
        absl::StrCat("gradient norm became ", r.grad_norm, " at step ", step_ + 1));
  }
  if (options_.max_grad_norm > 0.0 && r.grad_norm > options_.max_grad_norm) {
    device_->Scale(d_grads_->data(), n,
                   static_cast<float>(options_.max_grad_norm / (r.grad_norm + 1e-6)));
  }
  r.learning_rate =
      LearningRateAt(options_.schedule, options_.learning_rate, step_, warmup_steps_, total_steps_);
  kernels::AdamWParams ap;
  ap.lr = static_cast<float>(r.learning_rate);
  ap.beta1 = static_cast<float>(options_.adam_beta1);
  ap.beta2 = static_cast<float>(options_.adam_beta2);
  ap.eps = static_cast<float>(options_.adam_eps);
  ap.weight_decay = static_cast<float>(options_.weight_decay);
  ap.step = step_ + 1;
  if (options_.paged_optimizer) {  // paged out while the job waited: bring them in
    device_->SetResident(*d_m_, true);
    device_->SetResident(*d_v_, true);
  }
  device_->AdamW(d_params_->data(), d_grads_->data(), d_m_->data(), d_v_->data(), n, ap);
  // This step's own failures (the optimizer's launch, the paging) are this step's, not the
  // next reader's: another job may read the device next.
  RETURN_IF_ERROR(device_->TakeError());
  ++step_;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  seconds_ += secs;
  ++timed_steps_;
  r.step = step_;
  r.total_steps = total_steps_;
  r.tokens_per_second = tokens / std::max(secs, 1e-9);
  r.eta_seconds = seconds_ / timed_steps_ * static_cast<double>(total_steps_ - step_);
  return r;
}

int64_t Trainer::StepsPerEpoch(int64_t train_rows, const TrainerOptions& options) {
  const int64_t per_step = options.batch_size * options.grad_accum;
  return (train_rows + per_step - 1) / per_step;
}

int64_t Trainer::TotalSteps(int64_t train_rows, const TrainerOptions& options) {
  return options.max_steps > 0 ? options.max_steps
                               : options.epochs * StepsPerEpoch(train_rows, options);
}

absl::Status Trainer::PageOutOptimizer() {
  if (!options_.paged_optimizer) return absl::OkStatus();
  device_->SetResident(*d_m_, false);
  device_->SetResident(*d_v_, false);
  return device_->TakeError();  // a failed page-out is this job's
}

absl::Status Trainer::MaybeEvaluate(StepReport* report, bool force) {
  if (valid_.empty()) {  // nothing to evaluate (a pending mark of a checkpoint included)
    eval_pending_ = false;
    return absl::OkStatus();
  }
  const bool due = options_.eval_every > 0 && step_ % options_.eval_every == 0;
  if (!due && !force) return absl::OkStatus();
  bool cut = false;
  absl::StatusOr<double> evaluated = Evaluate(valid_, &cut);
  if (cut) {
    eval_pending_ = true;
    pending_report_ = *report;
    pending_report_.tokens = 0;
    pending_report_.repeated = true;
  }
  ASSIGN_OR_RETURN(double loss, evaluated);
  eval_pending_ = false;
  report->eval_loss = loss;
  last_eval_ = loss;
  if (!best_eval_ || loss < *best_eval_) {
    best_eval_ = loss;
    best_step_ = step_;
    evals_without_improvement_ = 0;
    if (options_.early_stopping_patience > 0) {
      ASSIGN_OR_RETURN(best_params_, ReadParams());
    }
  } else if (options_.early_stopping_patience > 0 &&
             ++evals_without_improvement_ >= options_.early_stopping_patience) {
    // Keep the best adapter seen, as load_best_model_at_end does.
    stopped_early_ = true;
    device_->CopyFromHost(best_params_.data(), best_params_.size(), d_params_->data());
  } else if (step_ == total_steps_ && kept_best()) {
    // The last step came before the patience ran out: still the best adapter is the one kept
    // (it was kept labelled with the best loss, though the last one's was worse).
    device_->CopyFromHost(best_params_.data(), best_params_.size(), d_params_->data());
  }
  return absl::OkStatus();
}

absl::Status Trainer::RunUntil(int64_t last,
                               const std::function<bool(const StepReport&)>& on_step) {
  if (eval_pending_) {  // cut from the last step: done before anything else
    StepReport r = pending_report_;
    RETURN_IF_ERROR(MaybeEvaluate(&r, /*force=*/true));
    if (on_step && !on_step(r))
      return absl::CancelledError(absl::StrCat("cancelled after step ", step_));
  }
  last = std::min(last, total_steps_);
  while (step_ < last && !stopped_early_) {
    ASSIGN_OR_RETURN(StepReport r, Step());
    const absl::Status evaluated = MaybeEvaluate(&r, step_ == total_steps_);
    if (eval_pending_) {  // cut by the interrupt: the step stands and is reported without it
      if (on_step) on_step(r);
      return evaluated;
    }
    RETURN_IF_ERROR(evaluated);
    if (on_step && !on_step(r))
      return absl::CancelledError(absl::StrCat("cancelled after step ", step_));
  }
  return absl::OkStatus();
}

}  // namespace qlorad
