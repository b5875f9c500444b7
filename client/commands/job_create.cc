// `jobs create`: a CreateJobRequest from flags, setting only the hyperparameters given.
#include <chrono>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/commands/jobs.h"
#include "engine/status_macros.h"
#include "qlorad/v1/jobs.grpc.pb.h"

namespace qlorad::ctl {
namespace {

// Every create carries an idempotency key (the user's, or a fresh one), so that a call whose
// answer was lost (a timeout, the daemon restarting) can be sent again for the same job.
std::string NewIdempotencyKey() {
  std::random_device random;
  return absl::StrFormat("qloractl-%08x%08x", random(), random());
}

// An answer that does not say whether the job was stored, or says to send it again (ABORTED: a
// job stored and not queued): the same request, with the same key, gets that one job.
bool OutcomeUnknown(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsUnknown(s) ||
         absl::IsInternal(s) || absl::IsAborted(s) || absl::IsCancelled(s);
}

// The error tells how to retry without making a second job.
absl::Status WithRetryHint(absl::Status s, const std::string& key) {
  if (s.ok() || key.empty() || !OutcomeUnknown(s)) return s;
  return absl::Status(s.code(), absl::StrCat(s.message(),
                                             "\nThe job may have been stored: run the same command "
                                             "with --idempotency-key '",
                                             key, "' to get it rather than a second one"));
}

// Tries of a create whose outcome is unknown, with its key, before the error is reported.
constexpr int kCreateTries = 3;

// Calls `set` with the flag's value when the flag was given; a bad value passes its error on.
template <typename T, typename Setter>
absl::Status SetIfGiven(absl::StatusOr<std::optional<T>> value, Setter set) {
  if (!value.ok()) return value.status();
  if (value->has_value()) set(**value);
  return absl::OkStatus();
}

absl::Status ParseHyperparameters(const ParsedArgs& args, v1::Hyperparameters* h) {
  RETURN_IF_ERROR(SetIfGiven(args.Int("rank"), [&](int64_t v) { h->set_rank(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Float("alpha"), [&](float v) { h->set_alpha(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Float("dropout"), [&](float v) { h->set_dropout(v); }));
  if (args.Has("targets")) {
    std::vector<std::string> targets = args.GetList("targets");
    if (targets.empty()) {
      return UsageError("--targets: expected module names (q_proj,v_proj) or all-linear");
    }
    for (std::string& target : targets) h->add_target_modules(std::move(target));
  }
  RETURN_IF_ERROR(SetIfGiven(args.Double("lr"), [&](double v) { h->set_learning_rate(v); }));
  if (std::optional<std::string> schedule = args.Get("schedule"); schedule.has_value()) {
    if (*schedule != "cosine" && *schedule != "linear" && *schedule != "constant") {
      return UsageError(
          absl::StrCat("--schedule: expected cosine, linear or constant, got '", *schedule, "'"));
    }
    h->set_schedule(*schedule);
  }
  RETURN_IF_ERROR(
      SetIfGiven(args.Double("warmup-ratio"), [&](double v) { h->set_warmup_ratio(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("epochs"), [&](int64_t v) { h->set_epochs(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("max-steps"), [&](int64_t v) { h->set_max_steps(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("batch-size"), [&](int64_t v) { h->set_batch_size(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("grad-accum"), [&](int64_t v) { h->set_grad_accum(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("seq-len"), [&](int64_t v) { h->set_seq_len(v); }));
  RETURN_IF_ERROR(
      SetIfGiven(args.Double("weight-decay"), [&](double v) { h->set_weight_decay(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Uint("seed"), [&](uint64_t v) { h->set_seed(v); }));
  if (args.Has("packing")) h->set_packing(true);
  RETURN_IF_ERROR(SetIfGiven(args.Int("eval-every"), [&](int64_t v) { h->set_eval_every(v); }));
  RETURN_IF_ERROR(SetIfGiven(args.Int("early-stopping"),
                             [&](int64_t v) { h->set_early_stopping_patience(v); }));
  RETURN_IF_ERROR(
      SetIfGiven(args.Double("max-grad-norm"), [&](double v) { h->set_max_grad_norm(v); }));
  if (args.Has("rslora")) h->set_use_rslora(true);
  if (args.Has("no-gradient-checkpointing")) h->set_gradient_checkpointing(false);
  return absl::OkStatus();
}

absl::StatusOr<v1::CreateJobRequest> ParseCreateJob(const ParsedArgs& args) {
  v1::CreateJobRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), args.Required("model"));
  ASSIGN_OR_RETURN(*request.mutable_training_dataset(), args.Required("train"));
  request.set_validation_dataset(args.Get("valid").value_or(""));
  RETURN_IF_ERROR(ParseHyperparameters(args, request.mutable_hyperparameters()));
  request.set_suffix(args.Get("suffix").value_or(""));
  ASSIGN_OR_RETURN(auto labels, args.KeyValues("label"));
  request.mutable_labels()->insert(labels.begin(), labels.end());
  request.set_idempotency_key(args.Get("idempotency-key").value_or(NewIdempotencyKey()));
  ASSIGN_OR_RETURN(std::optional<int64_t> priority,
                   args.Int("priority", std::numeric_limits<int32_t>::min(),
                            std::numeric_limits<int32_t>::max()));
  request.set_priority(static_cast<int32_t>(priority.value_or(0)));
  return request;
}

}  // namespace

std::vector<FlagDef> CreateJobFlags() {
  std::vector<FlagDef> flags;
  for (const char* name : {"model",      "train",           "valid",          "rank",
                           "alpha",      "dropout",         "targets",        "lr",
                           "schedule",   "warmup-ratio",    "epochs",         "max-steps",
                           "batch-size", "grad-accum",      "seq-len",        "weight-decay",
                           "seed",       "eval-every",      "early-stopping", "max-grad-norm",
                           "suffix",     "idempotency-key", "priority"}) {
    flags.push_back({name});
  }
  flags.push_back({"label", /*takes_value=*/true, /*repeatable=*/true});
  for (const char* name : {"packing", "rslora", "no-gradient-checkpointing", "watch"}) {
    flags.push_back({name, false});
  }
  return flags;
}

absl::Status CreateJob(const Invocation& invocation) {
  ASSIGN_OR_RETURN(v1::CreateJobRequest request, ParseCreateJob(invocation.args));
  v1::Job job;
  // Tried again with the same key (1 s, then 2 s later) while the outcome is unknown (a daemon
  // restarting, a job stored but not queued): a user who just runs the command again would
  // make a second job, and the first would train after the daemon's next restart.
  absl::Status created;
  for (int attempt = 1;; ++attempt) {
    auto context = invocation.Context(kUnaryTimeout);
    created = RpcStatus(
        v1::JobService::NewStub(invocation.channel)->CreateJob(context.get(), request, &job));
    if (created.ok() || request.idempotency_key().empty() || !OutcomeUnknown(created) ||
        attempt == kCreateTries) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::seconds(attempt));
  }
  RETURN_IF_ERROR(WithRetryHint(created, request.idempotency_key()));
  RETURN_IF_ERROR(Emit(invocation, job, [&] {
    std::cout << "job " << job.id() << " " << v1::JobState_Name(job.state()) << "\n" << std::flush;
  }));
  if (!invocation.args.Has("watch")) return absl::OkStatus();
  return WatchJob(invocation, job.id(), /*after_sequence=*/0);
}

}  // namespace qlorad::ctl
