// Persistence of jobs and their events in the node's KvStore. Every state change writes the job
// record, its event and the event counter in one synced write, so a job and its history never
// disagree after a crash. Records are qlorad.v1 messages (stable by the API's versioning rules).
// Keys are tenant-prefixed: another tenant's job reads as NOT_FOUND. Thread-safe: writes are
// serialized by a mutex (read-modify-write of records and counters).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "qlorad/v1/jobs.pb.h"
#include "server/core/job_state.h"
#include "storage/kv_store.h"

namespace qlorad::core {

class JobStore {
 public:
  explicit JobStore(storage::KvStore* db) : db_(db) {}

  // Stores a new job (state VALIDATING) with its first event. With an idempotency key already
  // used by the tenant: the stored job when `fingerprint` matches, ALREADY_EXISTS otherwise.
  // Returns the stored job.
  absl::StatusOr<v1::Job> Create(const v1::Job& job, const std::string& idempotency_key,
                                 const std::string& fingerprint) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::Job> Get(const std::string& tenant, const std::string& id) const;
  // Whether the tenant already created a job with this key that is still stored (a retry:
  // quotas do not apply). The key of a deleted job is free again.
  absl::StatusOr<bool> IdempotencyKeyUsed(const std::string& tenant,
                                          const std::string& idempotency_key) const;

  // Checks the edge, applies `mutate` (may be empty) to the record, sets the state and appends
  // a StateChange event, atomically. Returns the updated job.
  absl::StatusOr<v1::Job> Transition(const std::string& tenant, const std::string& id, JobState to,
                                     const std::string& reason,
                                     const std::function<void(v1::Job&)>& mutate = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  // Transition along `path` from where the job's state lies on it (from its start where it does
  // not): one StateChange event an edge, every edge checked, all in one write, so that the job
  // is never left part way (a refused write changes nothing). E.g. {QUEUED, RUNNING, SUCCEEDED}
  // takes a PAUSED job through all three and a RUNNING one to SUCCEEDED.
  absl::StatusOr<v1::Job> TransitionAlong(const std::string& tenant, const std::string& id,
                                          const std::vector<JobState>& path,
                                          const std::string& reason,
                                          const std::function<void(v1::Job&)>& mutate = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  // Updates fields other than the state and appends `event` (sequence and time are filled in).
  absl::StatusOr<v1::Job> Record(const std::string& tenant, const std::string& id,
                                 const std::function<void(v1::Job&)>& mutate, v1::JobEvent event)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Deletes a finished job: its record, its events and its idempotency key (a create retried
  // with that key makes a new job). NOT_FOUND for no such job of the tenant, FAILED_PRECONDITION
  // for one not yet SUCCEEDED, FAILED or CANCELLED. Its adapter is its own record and stays.
  absl::Status Delete(const std::string& tenant, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // The finished jobs of every tenant that ended before `cutoff` (were created before it, for a
  // record without an end time), as (tenant, id), at most `limit` of them (retention). Records
  // that do not parse are left out. `cursor` (optional) is where a scan resumes and, after the
  // call, where this one stopped: a sweep in batches reads each record once.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> FinishedBefore(
      absl::Time cutoff, int limit, std::string* cursor = nullptr) const;

  // The tenant's jobs in id order, filtered by state (empty: all); `page_token` is the last id
  // of the previous page.
  absl::StatusOr<std::vector<v1::Job>> List(const std::string& tenant,
                                            const std::vector<v1::JobState>& states, int page_size,
                                            const std::string& page_token) const;
  absl::StatusOr<std::vector<v1::JobEvent>> Events(const std::string& tenant, const std::string& id,
                                                   int64_t after_sequence, int limit) const;
  // Jobs of every tenant by state (metrics): counted by one scan on first use, then kept
  // current by this store's own writes (the only writer of job records), so a scrape costs
  // nothing however many jobs the node has kept.
  absl::StatusOr<std::map<v1::JobState, int64_t>> CountByState() const ABSL_LOCKS_EXCLUDED(mu_);
  // The tenant's jobs in `state`, from the same kept counts (the paused jobs a quota counts):
  // current as of this store's last write.
  absl::StatusOr<int64_t> CountOf(const std::string& tenant, v1::JobState state) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The jobs not in a terminal state of `tenant`, or of every tenant where it is empty (restart
  // recovery). A record that does not parse is left out and logged: one damaged record must not
  // keep the daemon from starting, nor every tenant from deleting a dataset. Every tenant's scan
  // also makes the kept counts where they are not made yet (the start's one read of each record).
  absl::StatusOr<std::vector<v1::Job>> Unfinished(const std::string& tenant = "") const;

 private:
  absl::StatusOr<int64_t> LastSequence(const std::string& tenant, const std::string& id) const;
  // The record changed by `change`, and the events it fills in (each given its sequence and
  // time here), in one write.
  absl::StatusOr<v1::Job> Apply(const std::string& tenant, const std::string& id,
                                const std::function<absl::Status(v1::Job&)>& change,
                                std::vector<v1::JobEvent>* events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Job> Apply(const std::string& tenant, const std::string& id,
                                const std::function<absl::Status(v1::Job&)>& change,
                                v1::JobEvent* event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One edge of a transition: checked, its event filled in, the state (and times) set.
  static absl::Status MoveTo(v1::Job& job, JobState to, const std::string& reason,
                             v1::JobEvent* event);

  // Moves one of the tenant's jobs from `from` to `to` in the kept counts (once they are
  // counted); `from` empty: a new job, `to` empty: a deleted one.
  void Recount(const std::string& tenant, std::optional<v1::JobState> from,
               std::optional<v1::JobState> to) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_)
      ABSL_LOCKS_EXCLUDED(counts_mu_);
  // Counts every stored job once, on first use (holding writers off).
  absl::Status EnsureCounted() const ABSL_LOCKS_EXCLUDED(mu_, counts_mu_);

  storage::KvStore* db_;
  mutable absl::Mutex mu_;  // writers, one at a time (held across the RocksDB write)
  // The counts have a lock of their own, so that a scrape reading them never waits behind a
  // write that RocksDB holds up (a write stall): taken after mu_ where both are held.
  mutable absl::Mutex counts_mu_ ABSL_ACQUIRED_AFTER(mu_);
  using Counts = std::map<std::pair<std::string, v1::JobState>, int64_t>;  // (tenant, state)
  mutable std::optional<Counts> counts_ ABSL_GUARDED_BY(counts_mu_);
};

}  // namespace qlorad::core
