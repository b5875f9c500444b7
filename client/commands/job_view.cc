#include <cmath>
#include <iostream>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/commands/jobs.h"

namespace qlorad::ctl {
namespace {

// "rank=16 alpha=32 lr=0.0002 ...": the fields set, in proto order.
std::string FormatHyperparameters(const v1::Hyperparameters& h) {
  std::vector<std::string> parts;
  auto add = [&](const char* name, const std::string& value) {
    parts.push_back(absl::StrCat(name, "=", value));
  };
  if (h.has_rank()) add("rank", absl::StrCat(h.rank()));
  if (h.has_alpha()) add("alpha", FormatNumber(h.alpha()));
  if (h.has_dropout()) add("dropout", FormatNumber(h.dropout()));
  if (h.target_modules_size() > 0) add("targets", absl::StrJoin(h.target_modules(), ","));
  if (h.has_learning_rate()) add("lr", FormatNumber(h.learning_rate()));
  if (h.has_schedule()) add("schedule", h.schedule());
  if (h.has_warmup_ratio()) add("warmup_ratio", FormatNumber(h.warmup_ratio()));
  if (h.has_epochs()) add("epochs", absl::StrCat(h.epochs()));
  if (h.has_max_steps()) add("max_steps", absl::StrCat(h.max_steps()));
  if (h.has_batch_size()) add("batch_size", absl::StrCat(h.batch_size()));
  if (h.has_grad_accum()) add("grad_accum", absl::StrCat(h.grad_accum()));
  if (h.has_seq_len()) add("seq_len", absl::StrCat(h.seq_len()));
  if (h.has_weight_decay()) add("weight_decay", FormatNumber(h.weight_decay()));
  if (h.has_seed()) add("seed", absl::StrCat(h.seed()));
  if (h.has_packing()) add("packing", h.packing() ? "true" : "false");
  if (h.has_eval_every()) add("eval_every", absl::StrCat(h.eval_every()));
  if (h.has_early_stopping_patience()) {
    add("early_stopping", absl::StrCat(h.early_stopping_patience()));
  }
  if (h.has_max_grad_norm()) add("max_grad_norm", FormatNumber(h.max_grad_norm()));
  if (h.has_use_rslora()) add("rslora", h.use_rslora() ? "true" : "false");
  if (h.has_gradient_checkpointing()) {
    add("gradient_checkpointing", h.gradient_checkpointing() ? "true" : "false");
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, " ");
}

}  // namespace

std::string FormatSteps(const v1::Job& job) {
  return absl::StrCat(job.steps_completed(), "/", job.total_steps());
}

void PrintJob(const v1::Job& job) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"id", job.id()},
      {"state", v1::JobState_Name(job.state())},
      {"model", job.model()},
      {"training dataset", job.training_dataset()},
  };
  auto add = [&](std::string key, std::string value) {
    fields.emplace_back(std::move(key), std::move(value));
  };
  if (!job.validation_dataset().empty()) add("validation dataset", job.validation_dataset());
  if (job.state() == v1::QUEUED) add("queue position", absl::StrCat(job.queue_position()));
  add("steps", FormatSteps(job));
  add("tokens trained", absl::StrCat(job.tokens_trained()));
  if (job.steps_completed() > 0) add("last loss", absl::StrFormat("%.4f", job.last_loss()));
  if (job.has_best_eval_loss())
    add("best eval loss", absl::StrFormat("%.4f", job.best_eval_loss()));
  if (job.state() == v1::RUNNING) add("eta", FormatClock(job.eta_seconds()));
  if (!job.device().empty()) add("device", job.device());
  if (!job.adapter_id().empty()) add("adapter", job.adapter_id());
  if (!job.error().code().empty()) add("error", FormatJobError(job.error()));
  add("priority", absl::StrCat(job.priority()));
  if (!job.suffix().empty()) add("suffix", job.suffix());
  if (!job.labels().empty()) {
    std::map<std::string, std::string> sorted(job.labels().begin(), job.labels().end());
    add("labels", absl::StrJoin(sorted, ",", absl::PairFormatter("=")));
  }
  add("requested", FormatHyperparameters(job.requested()));
  if (job.has_resolved()) add("resolved", FormatHyperparameters(job.resolved()));
  add("created", FormatTime(job.create_time()));
  add("started", FormatTime(job.start_time()));
  add("ended", FormatTime(job.end_time()));
  PrintFields(fields);
}

std::string FormatJobError(const v1::JobError& error) {
  std::string text =
      absl::StrCat(error.code().empty() ? "UNKNOWN" : error.code(), ": ", error.message());
  if (!error.parameter().empty()) absl::StrAppend(&text, " (parameter: ", error.parameter(), ")");
  return text;
}

std::string FormatProgress(const v1::TrainingProgress& p) {
  return absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | eta %s", p.step(),
                         p.total_steps(), p.loss(), p.learning_rate(), p.tokens_per_second(),
                         FormatClock(p.eta_seconds()));
}

std::string FormatEvent(const v1::JobEvent& event) {
  switch (event.kind_case()) {
    case v1::JobEvent::kStateChange: {
      const v1::StateChange& change = event.state_change();
      std::string text = absl::StrCat("state ", v1::JobState_Name(change.from()), " -> ",
                                      v1::JobState_Name(change.to()));
      if (!change.reason().empty()) absl::StrAppend(&text, ": ", change.reason());
      return text;
    }
    case v1::JobEvent::kProgress:
      return FormatProgress(event.progress());
    case v1::JobEvent::kEval:
      return absl::StrFormat("eval step %d | loss %.4f | ppl %.3f", event.eval().step(),
                             event.eval().loss(), std::exp(event.eval().loss()));
    case v1::JobEvent::kCheckpoint:
      return absl::StrCat("checkpoint at step ", event.checkpoint().step());
    case v1::JobEvent::kWarning:
      return absl::StrCat("warning: ", event.warning());
    case v1::JobEvent::kError:
      return absl::StrCat("error: ", FormatJobError(event.error()));
    case v1::JobEvent::KIND_NOT_SET:
      break;
  }
  return "(event of an unknown kind)";
}

}  // namespace qlorad::ctl
