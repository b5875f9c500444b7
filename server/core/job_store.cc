#include "server/core/job_store.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"  // header-only
#include "server/core/timestamps.h"

namespace qlorad::core {
namespace {

using storage::Family;
using storage::StoreKey;
using storage::WriteSet;

absl::StatusOr<v1::Job> ParseJob(std::string_view bytes) {
  v1::Job job;
  if (!job.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("a stored job record does not parse");
  }
  return job;
}

}  // namespace

absl::StatusOr<int64_t> JobStore::LastSequence(const std::string& tenant,
                                               const std::string& id) const {
  ASSIGN_OR_RETURN(std::string key, StoreKey({"jobseq", tenant, id}));
  auto v = db_->Get(Family::kMeta, key);
  if (absl::IsNotFound(v.status())) return 0;
  if (!v.ok()) return v.status();
  int64_t seq = 0;
  if (!absl::SimpleAtoi(*v, &seq)) return absl::DataLossError("bad event counter");
  return seq;
}

absl::StatusOr<bool> JobStore::IdempotencyKeyUsed(const std::string& tenant,
                                                  const std::string& idempotency_key) const {
  if (idempotency_key.empty()) return false;
  ASSIGN_OR_RETURN(std::string key, StoreKey({"idem", tenant, idempotency_key}));
  auto existing = db_->Get(Family::kMeta, key);
  if (absl::IsNotFound(existing.status())) return false;
  if (!existing.ok()) return existing.status();
  auto job = Get(tenant, existing->substr(0, existing->find('\n')));
  if (absl::IsNotFound(job.status())) return false;  // deleted: the key is free again
  if (!job.ok()) return job.status();
  return true;
}

absl::StatusOr<v1::Job> JobStore::Create(const v1::Job& job, const std::string& idempotency_key,
                                         const std::string& fingerprint) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::string key, StoreKey({job.tenant(), job.id()}));
  std::string idem_key;
  if (!idempotency_key.empty()) {
    ASSIGN_OR_RETURN(idem_key, StoreKey({"idem", job.tenant(), idempotency_key}));
    auto existing = db_->Get(Family::kMeta, idem_key);
    if (existing.ok()) {
      const size_t sep = existing->find('\n');
      const std::string job_id = existing->substr(0, sep);
      auto used_for = Get(job.tenant(), job_id);
      // A job deleted before the key's reverse record existed frees its key here.
      if (!absl::IsNotFound(used_for.status())) {
        if (sep == std::string::npos || existing->substr(sep + 1) != fingerprint) {
          return absl::AlreadyExistsError(absl::StrCat("idempotency key '", idempotency_key,
                                                       "' was used for job ", job_id,
                                                       " with a different request"));
        }
        return used_for;
      }
    } else if (!absl::IsNotFound(existing.status())) {
      return existing.status();
    }
  }
  if (db_->Get(Family::kJobs, key).ok())
    return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " exists"));
  v1::Job stored = job;
  stored.set_state(v1::VALIDATING);
  *stored.mutable_create_time() = NowTimestamp();
  v1::JobEvent event;
  event.set_sequence(1);
  *event.mutable_time() = stored.create_time();
  event.mutable_state_change()->set_to(v1::VALIDATING);
  event.mutable_state_change()->set_reason("created");
  ASSIGN_OR_RETURN(std::string event_key,
                   StoreKey({job.tenant(), job.id(), storage::SequenceKeyPart(1)}));
  ASSIGN_OR_RETURN(std::string seq_key, StoreKey({"jobseq", job.tenant(), job.id()}));
  WriteSet w;
  w.Put(Family::kJobs, key, stored.SerializeAsString());
  w.Put(Family::kEvents, event_key, event.SerializeAsString());
  w.Put(Family::kMeta, seq_key, "1");
  if (!idem_key.empty()) {
    w.Put(Family::kMeta, idem_key, absl::StrCat(job.id(), "\n", fingerprint));
    // So that deleting the job frees its key: the record above is found by key, not by job.
    ASSIGN_OR_RETURN(std::string reverse_key, StoreKey({"idemof", job.tenant(), job.id()}));
    w.Put(Family::kMeta, reverse_key, idempotency_key);
  }
  RETURN_IF_ERROR(db_->Write(w));
  Recount(job.tenant(), std::nullopt, stored.state());
  return stored;
}

void JobStore::Recount(const std::string& tenant, std::optional<v1::JobState> from,
                       std::optional<v1::JobState> to) {
  absl::MutexLock lock(&counts_mu_);
  if (!counts_ || from == to) return;
  // A state no job is in is left out, as a fresh count leaves it out.
  if (from && --(*counts_)[{tenant, *from}] == 0) counts_->erase({tenant, *from});
  if (to) ++(*counts_)[{tenant, *to}];
}

absl::Status JobStore::Delete(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const v1::Job job, Get(tenant, id));
  if (!IsTerminal(static_cast<JobState>(static_cast<int>(job.state())))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", v1::JobState_Name(job.state()),
        ": only a SUCCEEDED, FAILED or CANCELLED job can be deleted (cancel it first)"));
  }
  ASSIGN_OR_RETURN(const std::string key, StoreKey({tenant, id}));
  ASSIGN_OR_RETURN(const std::string seq_key, StoreKey({"jobseq", tenant, id}));
  ASSIGN_OR_RETURN(const std::string reverse_key, StoreKey({"idemof", tenant, id}));
  WriteSet w;
  w.Delete(Family::kJobs, key);
  w.DeletePrefix(Family::kEvents, key + "/");
  w.Delete(Family::kMeta, seq_key);
  auto idempotency_key = db_->Get(Family::kMeta, reverse_key);
  if (idempotency_key.ok()) {
    ASSIGN_OR_RETURN(const std::string idem_key, StoreKey({"idem", tenant, *idempotency_key}));
    w.Delete(Family::kMeta, idem_key);
    w.Delete(Family::kMeta, reverse_key);
  } else if (!absl::IsNotFound(idempotency_key.status())) {
    return idempotency_key.status();
  }
  RETURN_IF_ERROR(db_->Write(w));
  Recount(tenant, job.state(), std::nullopt);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> JobStore::FinishedBefore(
    absl::Time cutoff, int limit, std::string* cursor) const {
  std::vector<std::pair<std::string, std::string>> out;
  std::string last;
  RETURN_IF_ERROR(db_->Scan(
      Family::kJobs, "",
      [&](std::string_view key, std::string_view value) {
        last.assign(key);
        auto job = ParseJob(value);
        if (job.ok() && IsTerminal(static_cast<JobState>(static_cast<int>(job->state()))) &&
            // Records from before end times were kept go by their creation.
            FromTimestamp(job->has_end_time() ? job->end_time() : job->create_time()) < cutoff) {
          out.emplace_back(job->tenant(), job->id());
        }
        return static_cast<int>(out.size()) < limit;
      },
      cursor != nullptr ? *cursor : std::string()));
  if (cursor != nullptr) *cursor = std::move(last);
  return out;
}

absl::StatusOr<v1::Job> JobStore::Get(const std::string& tenant, const std::string& id) const {
  auto key = StoreKey({tenant, id});
  if (!key.ok()) return absl::NotFoundError(absl::StrCat("no job ", id));
  auto bytes = db_->Get(Family::kJobs, *key);
  if (absl::IsNotFound(bytes.status())) return absl::NotFoundError(absl::StrCat("no job ", id));
  if (!bytes.ok()) return bytes.status();
  return ParseJob(*bytes);
}

absl::StatusOr<v1::Job> JobStore::Apply(const std::string& tenant, const std::string& id,
                                        const std::function<absl::Status(v1::Job&)>& change,
                                        std::vector<v1::JobEvent>* events) {
  ASSIGN_OR_RETURN(v1::Job job, Get(tenant, id));
  const v1::JobState before = job.state();
  RETURN_IF_ERROR(change(job));
  ASSIGN_OR_RETURN(int64_t seq, LastSequence(tenant, id));
  ASSIGN_OR_RETURN(std::string key, StoreKey({tenant, id}));
  ASSIGN_OR_RETURN(std::string seq_key, StoreKey({"jobseq", tenant, id}));
  WriteSet w;
  w.Put(Family::kJobs, key, job.SerializeAsString());
  const google::protobuf::Timestamp now = NowTimestamp();
  for (v1::JobEvent& event : *events) {
    ++seq;
    event.set_sequence(seq);
    *event.mutable_time() = now;
    ASSIGN_OR_RETURN(std::string event_key, StoreKey({tenant, id, storage::SequenceKeyPart(seq)}));
    w.Put(Family::kEvents, event_key, event.SerializeAsString());
  }
  w.Put(Family::kMeta, seq_key, absl::StrCat(seq));
  RETURN_IF_ERROR(db_->Write(w));
  Recount(tenant, before, job.state());
  return job;
}

absl::StatusOr<v1::Job> JobStore::Apply(const std::string& tenant, const std::string& id,
                                        const std::function<absl::Status(v1::Job&)>& change,
                                        v1::JobEvent* event) {
  std::vector<v1::JobEvent> events(1);
  auto job = Apply(
      tenant, id,
      [&](v1::Job& j) -> absl::Status {
        RETURN_IF_ERROR(change(j));
        events[0] = *event;  // as `change` left it
        return absl::OkStatus();
      },
      &events);
  if (job.ok()) *event = std::move(events[0]);
  return job;
}

absl::Status JobStore::MoveTo(v1::Job& job, JobState to, const std::string& reason,
                              v1::JobEvent* event) {
  const JobState from = static_cast<JobState>(static_cast<int>(job.state()));
  RETURN_IF_ERROR(CheckTransition(from, to));
  v1::StateChange* change = event->mutable_state_change();
  change->set_from(job.state());
  change->set_to(static_cast<v1::JobState>(static_cast<int>(to)));
  change->set_reason(reason);
  job.set_state(static_cast<v1::JobState>(static_cast<int>(to)));
  // A resumed job keeps the time it first started.
  if (to == JobState::kRunning && !job.has_start_time()) *job.mutable_start_time() = NowTimestamp();
  if (IsTerminal(to)) *job.mutable_end_time() = NowTimestamp();
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> JobStore::Transition(const std::string& tenant, const std::string& id,
                                             JobState to, const std::string& reason,
                                             const std::function<void(v1::Job&)>& mutate) {
  absl::MutexLock lock(&mu_);
  v1::JobEvent event;
  return Apply(
      tenant, id,
      [&](v1::Job& job) -> absl::Status {
        if (mutate) mutate(job);
        return MoveTo(job, to, reason, &event);
      },
      &event);
}

absl::StatusOr<v1::Job> JobStore::TransitionAlong(const std::string& tenant, const std::string& id,
                                                  const std::vector<JobState>& path,
                                                  const std::string& reason,
                                                  const std::function<void(v1::Job&)>& mutate) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::JobEvent> events;
  return Apply(
      tenant, id,
      [&](v1::Job& job) -> absl::Status {
        const JobState now = static_cast<JobState>(static_cast<int>(job.state()));
        auto next = std::find(path.begin(), path.end(), now);
        next = next == path.end() ? path.begin() : next + 1;
        if (next == path.end()) {
          return absl::FailedPreconditionError(
              absl::StrCat("the job is ", JobStateName(now), " already"));
        }
        if (mutate) mutate(job);
        for (; next != path.end(); ++next) {
          events.emplace_back();
          RETURN_IF_ERROR(MoveTo(job, *next, reason, &events.back()));
        }
        return absl::OkStatus();
      },
      &events);
}

absl::StatusOr<v1::Job> JobStore::Record(const std::string& tenant, const std::string& id,
                                         const std::function<void(v1::Job&)>& mutate,
                                         v1::JobEvent event) {
  absl::MutexLock lock(&mu_);
  return Apply(
      tenant, id,
      [&](v1::Job& job) -> absl::Status {
        const v1::JobState state = job.state();
        if (mutate) mutate(job);
        if (job.state() != state)
          return absl::InternalError("Record cannot change a job's state; use Transition");
        return absl::OkStatus();
      },
      &event);
}

absl::StatusOr<std::vector<v1::Job>> JobStore::List(const std::string& tenant,
                                                    const std::vector<v1::JobState>& states,
                                                    int page_size,
                                                    const std::string& page_token) const {
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant}));
  prefix += "/";
  std::string start;
  if (!page_token.empty()) {
    auto key = StoreKey({tenant, page_token});
    if (!key.ok()) {  // a token is a job id, as the previous page's next_page_token gave it
      return absl::InvalidArgumentError(
          absl::StrCat("page_token: '", page_token, "' is not one a listing returned"));
    }
    start = *std::move(key);
  }
  std::vector<v1::Job> out;
  absl::Status parse_error;
  RETURN_IF_ERROR(db_->Scan(
      Family::kJobs, prefix,
      [&](std::string_view, std::string_view value) {
        auto job = ParseJob(value);
        if (!job.ok()) {
          parse_error = job.status();
          return false;
        }
        if (states.empty() ||
            std::find(states.begin(), states.end(), job->state()) != states.end()) {
          out.push_back(std::move(*job));
        }
        return page_size <= 0 || static_cast<int>(out.size()) < page_size;
      },
      start));
  RETURN_IF_ERROR(parse_error);
  return out;
}

absl::StatusOr<std::vector<v1::JobEvent>> JobStore::Events(const std::string& tenant,
                                                           const std::string& id,
                                                           int64_t after_sequence,
                                                           int limit) const {
  auto key = StoreKey({tenant, id});
  if (!key.ok()) return absl::NotFoundError(absl::StrCat("no job ", id));
  const std::string prefix = *key + "/";
  std::string start;
  if (after_sequence > 0) {
    ASSIGN_OR_RETURN(start, StoreKey({tenant, id, storage::SequenceKeyPart(after_sequence)}));
  }
  std::vector<v1::JobEvent> out;
  absl::Status parse_error;
  RETURN_IF_ERROR(db_->Scan(
      Family::kEvents, prefix,
      [&](std::string_view, std::string_view value) {
        v1::JobEvent e;
        if (!e.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          parse_error = absl::DataLossError("a stored job event does not parse");
          return false;
        }
        out.push_back(std::move(e));
        return limit <= 0 || static_cast<int>(out.size()) < limit;
      },
      start));
  RETURN_IF_ERROR(parse_error);
  // Read after the scan: NOT_FOUND for an unknown or foreign job, and for one deleted while
  // the scan ran (not a history cut short, which a watch would end OK on).
  RETURN_IF_ERROR(Get(tenant, id).status());
  return out;
}

absl::Status JobStore::EnsureCounted() const {
  {
    absl::MutexLock lock(&counts_mu_);
    if (counts_) return absl::OkStatus();
  }
  // The first count scans the store with writers held off, so that no change is missed or
  // counted twice; later ones read the kept counts only.
  absl::MutexLock writers(&mu_);
  absl::MutexLock lock(&counts_mu_);
  if (!counts_) {
    Counts counts;
    RETURN_IF_ERROR(db_->Scan(Family::kJobs, "", [&](std::string_view, std::string_view value) {
      auto job = ParseJob(value);
      if (job.ok()) ++counts[{job->tenant(), job->state()}];
      return true;
    }));
    counts_ = std::move(counts);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<v1::JobState, int64_t>> JobStore::CountByState() const {
  RETURN_IF_ERROR(EnsureCounted());
  absl::MutexLock lock(&counts_mu_);
  std::map<v1::JobState, int64_t> by_state;
  for (const auto& [key, n] : *counts_) by_state[key.second] += n;
  return by_state;
}

absl::StatusOr<int64_t> JobStore::CountOf(const std::string& tenant, v1::JobState state) const {
  RETURN_IF_ERROR(EnsureCounted());
  absl::MutexLock lock(&counts_mu_);
  auto it = counts_->find({tenant, state});
  return it == counts_->end() ? 0 : it->second;
}

absl::StatusOr<std::vector<v1::Job>> JobStore::Unfinished(const std::string& tenant) const {
  std::string prefix;
  if (!tenant.empty()) {
    ASSIGN_OR_RETURN(prefix, StoreKey({tenant}));
    prefix += "/";
  }
  // A scan of every record that finds the kept counts not made yet makes them too (the
  // daemon's start reads every record once, not twice), holding writers off as EnsureCounted.
  bool count = false;
  if (tenant.empty()) {
    absl::MutexLock lock(&counts_mu_);
    count = !counts_.has_value();
  }
  std::optional<absl::MutexLock> writers;
  if (count) writers.emplace(&mu_);
  Counts counts;
  std::vector<v1::Job> out;
  RETURN_IF_ERROR(
      db_->Scan(Family::kJobs, prefix, [&](std::string_view key, std::string_view value) {
        auto job = ParseJob(value);
        if (!job.ok()) {
          std::fprintf(stderr, "qlorad: job record %s is left out: %s\n", std::string(key).c_str(),
                       std::string(job.status().message()).c_str());
          return true;
        }
        if (count) ++counts[{job->tenant(), job->state()}];
        if (!IsTerminal(static_cast<JobState>(static_cast<int>(job->state()))))
          out.push_back(std::move(*job));
        return true;
      }));
  if (count) {
    absl::MutexLock lock(&counts_mu_);
    if (!counts_) counts_ = std::move(counts);
  }
  return out;
}

}  // namespace qlorad::core
