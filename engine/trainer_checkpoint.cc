// Trainer checkpoints (the PEFT adapter, AdamW moments and trainer_state.json) and the run loop
// that writes them, apart from the training step so that the engine's compute core builds
// without a JSON library.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/json_fields.h"
#include "engine/mapped_file.h"
#include "engine/peft_adapter.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace fs = std::filesystem;
namespace {

constexpr int kCheckpointVersion = 1;

// FNV-1a over the rows' tokens, targets and segments as a batch holds them (padded to seq_len,
// as rows were kept before: older checkpoints compare equal), as a decimal string (JSON numbers
// are doubles to some readers): what a resume compares its training data with.
std::string RowsHash(const std::vector<TrainingRow>& rows) {
  uint64_t h = 1469598103934665603ull;
  auto mix_one = [&h](int32_t x) {
    uint32_t u = static_cast<uint32_t>(x);
    for (int b = 0; b < 4; ++b, u >>= 8) {
      h ^= u & 0xFF;
      h *= 1099511628211ull;
    }
  };
  auto mix = [&](const std::vector<int32_t>& v, int64_t length, int32_t padding) {
    for (const int32_t x : v) mix_one(x);
    for (int64_t i = static_cast<int64_t>(v.size()); i < length; ++i) mix_one(padding);
  };
  for (const TrainingRow& r : rows) {
    mix(r.tokens, r.length(), 0);
    mix(r.targets, r.length(), -1);
    mix(r.segments, r.length(), -1);
  }
  return std::to_string(h);
}

// The options that shape the run beyond what the step count, the seed, the rows and the adapter's
// shape already pin down. A resume with another value would go on as another run than the one
// checkpointed (a different alpha rescales what was learnt), so it is refused naming the option.
nlohmann::json RunOptions(const TrainerOptions& o) {
  return {{"alpha", o.lora.alpha},
          {"dropout", o.lora.dropout},
          {"use_rslora", o.lora.use_rslora},
          {"learning_rate", o.learning_rate},
          {"schedule", LrScheduleName(o.schedule)},
          {"warmup_ratio", o.warmup_ratio},
          {"batch_size", o.batch_size},
          {"grad_accum", o.grad_accum},
          {"weight_decay", o.weight_decay},
          {"max_grad_norm", o.max_grad_norm},
          {"eval_every", o.eval_every},
          {"early_stopping_patience", o.early_stopping_patience}};
}

}  // namespace

const std::string& Trainer::TrainRowsHash() const {
  if (train_rows_hash_.empty()) train_rows_hash_ = RowsHash(train_);
  return train_rows_hash_;
}

absl::StatusOr<uint64_t> Trainer::CheckpointSeed(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  const nlohmann::json state = nlohmann::json::parse(text, nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("seed") ||
      !state["seed"].is_number_unsigned()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no seed recorded"));
  }
  return state["seed"].get<uint64_t>();
}

absl::Status Trainer::Run(const std::function<bool(const StepReport&)>& on_step,
                          int64_t checkpoint_every, const std::string& checkpoint_dir) {
  while ((step_ < total_steps_ && !stopped_early_) || eval_pending_) {
    RETURN_IF_ERROR(RunUntil(step_ + 1, on_step));
    if (checkpoint_every > 0 && !checkpoint_dir.empty() && step_ % checkpoint_every == 0) {
      RETURN_IF_ERROR(SaveCheckpoint(checkpoint_dir));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::CanSaveCheckpointIn(const std::string& dir) {
  // A save replaces `dir` and deletes `dir`.partial and `dir`.old: each may only ever hold one
  // of our checkpoints (a folder of the user's, named by mistake, would be lost whole).
  for (const std::string& path : {dir, dir + ".partial", dir + ".old"}) {
    std::error_code ec;
    if (!fs::exists(path, ec)) continue;
    const bool ours =
        fs::is_directory(path, ec) &&
        (fs::is_empty(path, ec) || (fs::exists(fs::path(path) / "trainer_state.json", ec) &&
                                    fs::exists(fs::path(path) / "optimizer.safetensors", ec)));
    if (!ours) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " holds other files than a checkpoint; checkpoints go to a folder of their own"));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpoint(const std::string& dir) const {
  // Write a sibling folder, then swap it in: a crash leaves the old checkpoint or the new one.
  const std::string tmp = dir + ".partial";
  std::error_code ec;
  RETURN_IF_ERROR(CanSaveCheckpointIn(dir));
  fs::remove_all(tmp, ec);
  // Read before anything is written: a failed device's values (NaN) are never stored.
  ASSIGN_OR_RETURN(std::vector<float> params, ReadParams());
  ASSIGN_OR_RETURN(std::vector<float> exp_avg, ReadBuffer(*d_m_));
  ASSIGN_OR_RETURN(std::vector<float> exp_avg_sq, ReadBuffer(*d_v_));
  RETURN_IF_ERROR(SavePeftAdapter(tmp, model_->config(), options_.lora, params));
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  const int64_t n = layout_->num_params();
  w.AddF32("exp_avg", {n}, exp_avg);
  w.AddF32("exp_avg_sq", {n}, exp_avg_sq);
  if (!best_params_.empty()) w.AddF32("best_params", {n}, best_params_);
  RETURN_IF_ERROR(w.WriteTo((fs::path(tmp) / "optimizer.safetensors").string()));
  nlohmann::ordered_json state = {
      {"version", kCheckpointVersion},
      {"step", step_},
      {"total_steps", total_steps_},
      {"seed", options_.seed},
      {"num_params", n},
      {"train_rows", train_.size()},
      {"train_rows_hash", TrainRowsHash()},
      {"evals_without_improvement", evals_without_improvement_},
      {"stopped_early", stopped_early_},
      {"options", RunOptions(options_)},
  };
  if (loss_ema_) state["loss_ema"] = *loss_ema_;
  if (min_loss_ema_) state["min_loss_ema"] = *min_loss_ema_;
  if (best_eval_) state["best_eval_loss"] = *best_eval_;
  if (last_eval_) state["last_eval_loss"] = *last_eval_;
  state["best_step"] = best_step_;
  if (eval_pending_) {  // the report of the step it follows, given again once it is done
    state["evaluation_pending"] = true;
    state["pending_step"] = {{"epoch", pending_report_.epoch},
                             {"loss", pending_report_.loss},
                             {"learning_rate", pending_report_.learning_rate},
                             {"grad_norm", pending_report_.grad_norm}};
  }
  RETURN_IF_ERROR(
      WriteStringToFile((fs::path(tmp) / "trainer_state.json").string(), state.dump(2) + "\n"));
  const std::string old = dir + ".old";
  fs::remove_all(old, ec);
  if (fs::exists(dir)) fs::rename(dir, old, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("cannot move the old checkpoint ", dir, ": ", ec.message()));
  fs::rename(tmp, dir, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("cannot move the checkpoint into ", dir, ": ", ec.message()));
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

absl::Status Trainer::LoadCheckpoint(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  const nlohmann::json st = nlohmann::json::parse(text, nullptr, false);
  if (st.is_discarded() || !st.is_object() || !st.contains("version") ||
      st["version"] != kCheckpointVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a version ", kCheckpointVersion, " checkpoint"));
  }
  // Every field is read by type: a damaged file is an error naming the field, never an
  // exception (the daemon resumes from these files).
  const JsonFields f(st, path);
  int64_t num_params = 0, train_rows = 0, total_steps = 0, step = 0;
  RETURN_IF_ERROR(f.Int("num_params", true, &num_params));
  RETURN_IF_ERROR(f.Int("train_rows", true, &train_rows));
  RETURN_IF_ERROR(f.Int("total_steps", true, &total_steps));
  RETURN_IF_ERROR(f.Int("step", true, &step));
  if (step < 0 || step > total_steps) return f.Error("step", "is out of range");
  if (!st.contains("seed") || !st["seed"].is_number_unsigned())
    return f.Error("seed", "must be a non-negative integer");
  int64_t evals_without_improvement = 0, best_step = 0;
  bool stopped_early = false;
  RETURN_IF_ERROR(f.Int("evals_without_improvement", false, &evals_without_improvement));
  RETURN_IF_ERROR(f.Int("best_step", false, &best_step));
  RETURN_IF_ERROR(f.Flag("stopped_early", &stopped_early));
  bool evaluation_pending = false;
  RETURN_IF_ERROR(f.Flag("evaluation_pending", &evaluation_pending));
  StepReport pending;
  if (evaluation_pending) {
    if (!st.contains("pending_step") || !st["pending_step"].is_object()) {
      return f.Error("pending_step", "must be an object beside evaluation_pending");
    }
    const JsonFields p(st["pending_step"], path, "pending_step.");
    RETURN_IF_ERROR(p.Int("epoch", true, &pending.epoch));
    if (pending.epoch < 0) return p.Error("epoch", "must not be negative");
    RETURN_IF_ERROR(p.Real("loss", true, &pending.loss));
    RETURN_IF_ERROR(p.Real("learning_rate", true, &pending.learning_rate));
    RETURN_IF_ERROR(p.Real("grad_norm", true, &pending.grad_norm));
    pending.step = step;
    pending.total_steps = total_steps;
    pending.repeated = true;
  }
  std::optional<double> losses[4];
  const char* loss_keys[4] = {"loss_ema", "min_loss_ema", "best_eval_loss", "last_eval_loss"};
  for (int i = 0; i < 4; ++i) {
    if (!f.Has(loss_keys[i])) continue;
    double v = 0.0;
    RETURN_IF_ERROR(f.Real(loss_keys[i], true, &v));
    losses[i] = v;
  }

  const int64_t n = layout_->num_params();
  auto mismatch = [&](const std::string& what) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": the checkpoint was written with a different ", what,
                     "; resume with the options it was trained with"));
  };
  if (num_params != n) return mismatch("adapter shape");
  if (st["seed"].get<uint64_t>() != options_.seed) return mismatch("seed");
  if (train_rows != static_cast<int64_t>(train_.size())) return mismatch("training set");
  // Other data of the same row count changes the run as much (absent in older checkpoints).
  if (st.contains("train_rows_hash") && st["train_rows_hash"] != TrainRowsHash()) {
    return mismatch("training set");
  }
  if (total_steps != total_steps_) return mismatch("schedule length");
  // Absent in older checkpoints; an option recorded since is compared by value.
  if (st.contains("options") && st["options"].is_object()) {
    const nlohmann::json& saved = st["options"];
    const nlohmann::json current = RunOptions(options_);  // outlives the loop over its items
    for (const auto& [name, now] : current.items()) {
      if (saved.contains(name) && saved[name] != now) {
        return mismatch(absl::StrCat(name, " (", saved[name].dump(), ", now ", now.dump(), ")"));
      }
    }
  }
  ASSIGN_OR_RETURN(PeftAdapter adapter, LoadPeftAdapter(dir, model_->config()));
  if (adapter.config.rank != options_.lora.rank ||
      adapter.config.target_modules != options_.lora.target_modules) {
    return mismatch("rank or target modules");
  }
  ASSIGN_OR_RETURN(auto opt,
                   SafetensorsFile::Open((fs::path(dir) / "optimizer.safetensors").string()));
  ASSIGN_OR_RETURN(std::vector<float> m, opt->ReadF32("exp_avg"));
  ASSIGN_OR_RETURN(std::vector<float> v, opt->ReadF32("exp_avg_sq"));
  if (static_cast<int64_t>(m.size()) != n || static_cast<int64_t>(v.size()) != n)
    return mismatch("optimizer state size");
  std::vector<float> best;
  if (opt->Has("best_params")) {
    ASSIGN_OR_RETURN(best, opt->ReadF32("best_params"));
    if (static_cast<int64_t>(best.size()) != n) return mismatch("optimizer state size");
  }
  // Nothing is changed before here: a refused checkpoint leaves the trainer as it was.
  best_params_ = std::move(best);
  device_->CopyFromHost(adapter.params.data(), n, d_params_->data());
  device_->CopyFromHost(m.data(), n, d_m_->data());
  device_->CopyFromHost(v.data(), n, d_v_->data());
  step_ = step;
  evals_without_improvement_ = evals_without_improvement;
  stopped_early_ = stopped_early;
  loss_ema_ = losses[0];
  min_loss_ema_ = losses[1];
  best_eval_ = losses[2];
  last_eval_ = losses[3];
  best_step_ = best_step;
  eval_pending_ = evaluation_pending;
  pending_report_ = pending;
  return absl::OkStatus();
}

}  // namespace qlorad
