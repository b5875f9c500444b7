// The job manager: validates and queues fine-tune jobs, and runs them on one worker thread per
// device. It knows nothing of gRPC (the services call it).
//
// Scheduling: one global queue (job_queue.h: priority, fair share, FIFO). A device worker
// admits the next job when its memory estimate fits the device's budget beside the jobs
// already there, counting each base model once per device (model_pool.h shares it); jobs never
// overtake one another on a device. A busy device leaves a job to an idle one that can hold it,
// and an idle device leaves it to another idle one that has its base model loaded, so jobs
// spread over the devices rather than take turns on one, and a model is loaded again only where
// that buys a device of its own. A worker keeps up to `max_jobs_per_device` jobs resident and
// gives each one optimizer step in turn, so small jobs make progress beside large ones and a
// device's engine is only ever driven from its own thread.
//
// Durability: every state change, progress record and event goes through JobStore (synced).
// Checkpoints go to RocksDB every `checkpoint_every` steps and at shutdown. On start, jobs found
// RUNNING (a crash, kill -9) or QUEUED are queued again; a job with a checkpoint resumes from
// it and ends with the adapter an uninterrupted run gives (bitwise on the same thread count).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/dataset.h"
#include "engine/device.h"
#include "engine/tokenizer.h"
#include "qlorad/v1/jobs.pb.h"
#include "server/core/adapter_store.h"
#include "server/core/checkpoint_store.h"
#include "server/core/dataset_store.h"
#include "server/core/job_queue.h"
#include "server/core/job_spec.h"
#include "server/core/job_store.h"
#include "server/core/model_store.h"
#include "server/core/tenants.h"
#include "server/metrics/registry.h"

namespace qlorad::core {

struct PooledModel;  // server/core/model_pool.h

struct JobManagerOptions {
  // "cuda:0,cpu:0,..."; "auto": every GPU, or one CPU device where there is none.
  std::string devices = "auto";
  int threads_per_device = 0;  // 0: the machine's cores shared among the devices
  // A CPU device's budget; 0: half the usable RAM (the container's limit where lower; see
  // server/core/host_memory.h) among the devices.
  int64_t device_memory_bytes = 0;
  int max_jobs_per_device = 4;
  int64_t checkpoint_every = 50;  // steps; 0: only at shutdown
  // Progress events at most this often (the first and last step, and evaluations, always).
  double progress_interval_seconds = 1.0;
  // Finished jobs that ended longer ago are deleted (record and events; adapters stay), checked
  // every `retention_sweep_interval`. Zero: kept until deleted (DeleteJob).
  absl::Duration finished_job_retention = absl::ZeroDuration();
  absl::Duration retention_sweep_interval = absl::Hours(1);
  ServerLimits limits;
  std::string scratch_dir;  // temporary files (checkpoint and adapter folders)
  // Faults for CPU devices to report, by name ("cpu:0"), for tests of what the daemon does
  // when a device fails (CpuDeviceFaults; a GPU fault cannot be caused on demand).
  std::map<std::string, CpuDeviceFaults> cpu_device_faults;
};

struct JobManagerStores {
  JobStore* jobs;
  ModelStore* models;
  DatasetStore* datasets;
  AdapterStore* adapters;
  CheckpointStore* checkpoints;
  const TenantRegistry* tenants;
  metrics::Registry* metrics = nullptr;  // optional: training and device metrics go here
};

struct DeviceInfo {
  std::string name;         // as --devices names it: cuda:0, cpu:0
  std::string description;  // the engine's: the card, its GEMM and attention paths
  DeviceMemoryUsage usage;  // the engine's accounting, as of the worker's last round
  int64_t memory_budget = 0;
  int64_t memory_reserved = 0;  // base models + admitted jobs' estimates
  // Of the card, what generation and evaluation may hold where they share it (ShareWithInference):
  // outside memory_budget, which it was taken from.
  int64_t inference_memory_bytes = 0;
  int64_t base_model_bytes = 0;
  int base_models_loaded = 0;
  int jobs_running = 0;
  // The device failed for good (a GPU kernel fault); its jobs went back to the queue, and it
  // takes no more until the daemon restarts. `lost_reason` says what happened.
  bool lost = false;
  std::string lost_reason;
};

class JobManager {
 public:
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(const JobManagerStores& stores,
                                                            const JobManagerOptions& options);
  ~JobManager();  // Shutdown()

  // Gives `bytes` of device `name`'s budget to generation and evaluation, which run on that card
  // too, under that limit (before Start, so that admission only ever sees the smaller budget).
  // NOT_FOUND for a device that is not here, INVALID_ARGUMENT for nothing to give or where no
  // budget would be left, FAILED_PRECONDITION once started.
  absl::Status ShareWithInference(const std::string& name, int64_t bytes);
  // Requeues what the store holds unfinished, then starts the device workers.
  absl::Status Start();
  // Checkpoints running jobs and marks them QUEUED (they resume on the next start), then stops
  // the workers. Idempotent.
  void Shutdown();

  absl::StatusOr<v1::Job> CreateJob(const Tenant& tenant, const v1::CreateJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::vector<v1::Job>> ListJobs(const std::string& tenant,
                                                const std::vector<v1::JobState>& states,
                                                const std::map<std::string, std::string>& labels,
                                                int page_size, const std::string& page_token,
                                                std::string* next_page_token) const;
  // Queued jobs end at once; a running job stops after its current step (waits for it, up to
  // `wait`). Cancelling a cancelled job returns it; other finished jobs: FAILED_PRECONDITION.
  absl::StatusOr<v1::Job> CancelJob(const std::string& tenant, const std::string& id,
                                    absl::Duration wait = absl::Seconds(30));

  // Stops a queued job at once, a running one within its current step (waits for it, up to
  // `wait`), with a checkpoint, and keeps it PAUSED: no device, no place in the queue, not
  // counted in the tenant's running jobs. Pausing a paused job returns it; a finished job, or a
  // queued one whose adapter is stored and its success still to be recorded:
  // FAILED_PRECONDITION. On a worker, a job whose end is being stored drops the pause: the call
  // answers RUNNING.
  absl::StatusOr<v1::Job> PauseJob(const std::string& tenant, const std::string& id,
                                   absl::Duration wait = absl::Seconds(30));
  // Queues a paused job again (it resumes from its checkpoint), within the tenant's quotas
  // (RESOURCE_EXHAUSTED past them). A queued or running job is returned as it is, any pause
  // asked of it and not yet taken withdrawn; a finished one: FAILED_PRECONDITION.
  absl::StatusOr<v1::Job> ResumeJob(const Tenant& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(create_mu_);
  // Deletes a finished job (JobStore::Delete): NOT_FOUND, or FAILED_PRECONDITION for a job
  // not yet SUCCEEDED, FAILED or CANCELLED.
  absl::Status DeleteJob(const std::string& tenant, const std::string& id)
      ABSL_LOCKS_EXCLUDED(create_mu_);
  // Deletes every finished job of any tenant that ended before `cutoff`; returns how many. Ends
  // early once the manager stops.
  absl::StatusOr<int64_t> PruneFinishedJobs(absl::Time cutoff) ABSL_LOCKS_EXCLUDED(create_mu_);

  // A counter that rises with every job write; WaitForChange blocks until it passes `seen` or
  // the timeout ends (watch streams poll the store after each change).
  int64_t ChangeCounter() const;
  void WaitForChange(int64_t seen, absl::Duration timeout) const;

  // Queued and running jobs of the tenant (the concurrent-jobs quota).
  int ActiveJobs(const std::string& tenant) const;
  // Whether an unfinished job uses the model, or the tenant's dataset.
  absl::StatusOr<bool> ModelInUse(const std::string& model) const;
  absl::StatusOr<bool> DatasetInUse(const std::string& tenant, const std::string& dataset) const;
  // Deletes the model or the tenant's dataset unless an unfinished job uses it
  // (FAILED_PRECONDITION): the check and the delete under the lock CreateJob stores a job under,
  // so that no job is accepted on inputs deleted a moment later.
  absl::Status DeleteModel(const std::string& model) ABSL_LOCKS_EXCLUDED(create_mu_);
  absl::Status DeleteDataset(const std::string& tenant, const std::string& dataset)
      ABSL_LOCKS_EXCLUDED(create_mu_);

  std::vector<DeviceInfo> Devices() const;
  const JobManagerOptions& options() const { return options_; }
  // The largest budget of a device that takes jobs (`include_lost`: of any device, lost ones
  // too, which tells "too large for this node" from "too large for what is left of it").
  int64_t MaxDeviceBudget(bool include_lost = false) const;
  // JobMemoryBytes with the attention state and activation type of this daemon's devices (the
  // largest among them: the job's device is chosen when it starts), so a GPU running flash
  // attention on bf16 activations is not charged the CPU's [heads, seq, seq] probabilities and
  // float32 activations), plus the bf16 conversion scratch a device reserves where its kernels
  // do not cover the graph (Device::ConversionScratchFloats).
  int64_t JobBytes(const LlamaConfig& config, const v1::Hyperparameters& resolved) const;

 private:
  struct Worker;
  struct ActiveJob;
  enum class StepOutcome { kContinue, kSucceeded, kFailed, kCancelled, kDeviceLost, kPaused };

  JobManager(const JobManagerStores& stores, const JobManagerOptions& options);
  void WorkerLoop(Worker* w);
  // Models evicted to make room go to `evicted`, released by the caller after mu_.
  void AdmitLocked(Worker* w, const std::vector<std::unique_ptr<ActiveJob>>& active,
                   std::vector<QueuedJob>* admitted,
                   std::vector<std::shared_ptr<PooledModel>>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What StartJob did: the job runs (`job`), or it does not: it ended or failed, or it waits in
  // the queue again (`queued_again`: the store failed to answer), its flags kept.
  struct Started {
    std::unique_ptr<ActiveJob> job;
    bool queued_again = false;
    bool count_released = false;  // its running count on the worker is released already
  };
  Started StartJob(Worker* w, const QueuedJob& q);
  // A job's training and validation rows, built with `tokenizer` as its start builds them, and
  // checked against what the node allows. INVALID_ARGUMENT for the user's data (`field` names
  // the request field); a dataset the store cannot give, its own error (`field` names it).
  struct JobData {
    std::vector<TrainingRow> rows[2];  // training, validation; empty when only counted
    int64_t row_count[2] = {0, 0};
  };
  // `still_wanted` (optional) is asked between the stages; once false, CANCELLED. `count_only`
  // (the data check): the same checks, the rows counted and not kept.
  absl::StatusOr<JobData> ReadJobData(const v1::Job& job, const Tokenizer& tokenizer,
                                      std::string* field,
                                      const std::function<bool()>& still_wanted = nullptr,
                                      bool count_only = false) const;
  // The data check: each job put in the queue has its data read as its start will read it, on a
  // thread of its own while it waits, so that data it cannot train on (an example whose targets
  // seq_len cuts off, a validation set past its bound, epochs that make too many steps) fails
  // it moments after its creation rather than when a device takes it.
  void CheckLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Applies finished_job_retention every retention_sweep_interval until the manager stops.
  void PruneLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // The request's base model, once it and the tenant's datasets it names are found (NOT_FOUND
  // naming the field otherwise).
  absl::StatusOr<v1::Model> JobInputs(const std::string& tenant,
                                      const v1::CreateJobRequest& req) const;
  // A start that failed on the store, not on the job: the job goes back to its place in the
  // queue and is tried again after a pause (1 s, doubling up to 30 s).
  // Its running count on `w` is released with it (ReleaseQuota) unless `count_released`.
  Started StartLater(Worker* w, const QueuedJob& q, const absl::Status& why,
                     bool count_released = false) ABSL_LOCKS_EXCLUDED(mu_);
  StepOutcome RunStep(Worker* w, ActiveJob& a);
  // Records how the job ended; gives back its place on `w` and its tenant's running count
  // (ReleaseQuotaOf), for a success once its adapter is stored. False while the store refuses
  // for now its adapter or its SUCCEEDED or CANCELLED record (WaitToEnd): it stays on `w` and
  // RunStep tries again after a pause; with `may_wait` false (a stop), false only for a success
  // whose record could not be written, which then keeps its checkpoint.
  bool Finish(Worker* w, ActiveJob& a, StepOutcome outcome, bool may_wait = true);
  // Checkpoints a job whose pause was asked and records it PAUSED, giving back its place on `w`,
  // its tenant's running count and its flags in the same section (kPaused: the caller drops it).
  // kTrainsOn where a resume withdrew the pause meanwhile or the store refuses the record (the
  // pause is dropped); kCancelled where a cancel came meanwhile (the caller finishes it so).
  enum class PauseResult { kPaused, kTrainsOn, kCancelled };
  PauseResult Pause(Worker* w, ActiveJob& a) ABSL_LOCKS_EXCLUDED(mu_);
  // The tenant's quotas for one more queued or running job: its concurrent jobs, and its
  // adapters with every unfinished job's to come, paused ones included (`resuming`: one of
  // those is the job). RESOURCE_EXHAUSTED naming the limit.
  absl::Status RoomForAnotherJob(const Tenant& tenant, bool resuming = false) const;
  // Stores the job's adapter (an earlier run's is found by StartJob, which trains no more).
  absl::StatusOr<v1::Adapter> StoreAdapter(Worker* w, ActiveJob& a);
  // Schedules the next try of storing how `a` ended (`what`: "its success"), warning once.
  // Returns false (Finish's answer).
  bool WaitToEnd(ActiveJob& a, const absl::Status& why, const std::string& what);
  // ReleaseQuota for an active job, once whatever path ends it.
  void ReleaseQuotaOf(Worker* w, ActiveJob& a);
  // The worker's device is lost (Device::TakeError said kUnavailable): it takes no more jobs,
  // and each of `active` goes back to the queue.
  void LoseDevice(Worker* w, std::vector<std::unique_ptr<ActiveJob>>& active,
                  const absl::Status& why);
  // Whether the worker's device is lost for good, and why (`why` may be null): asked of the
  // device (Device::TakeError's kUnavailable stays once set), never read off an error's code,
  // which the store uses too (a busy or timed-out RocksDB).
  bool DeviceLost(Worker* w, absl::Status* why);
  // A job of a lost device goes back to the queue in its old place, to resume from its last
  // checkpoint (or its start) on another device; nothing is read from the lost device again.
  // Where it does not go back (a cancel waited for it, it ended, the store failed) its flags
  // and live fields are released here: the caller never guesses which. `adapter_stored`: only
  // its SUCCEEDED record was left, which its next start writes (a cancel comes too late).
  void RequeueFromLostDevice(const QueuedJob& entry, const absl::Status& why,
                             bool adapter_stored = false) ABSL_LOCKS_EXCLUDED(mu_);
  // The error for a job stored by CreateJob whose QUEUED write failed (`why`): with an
  // idempotency key the job is left VALIDATING for the client's retry to queue; without one it is
  // marked FAILED where the store allows, so that it never runs unseen.
  absl::Status NotQueued(const std::string& tenant, const std::string& id,
                         const std::string& idempotency_key, const absl::Status& why);
  // Records the failure (an error event, then FAILED); the status of the FAILED write.
  absl::Status FailJob(const std::string& tenant, const std::string& id, const absl::Status& status,
                       const std::string& parameter, bool user_error);
  absl::Status SaveCheckpoint(ActiveJob& a);
  void Requeue(const v1::Job& job) ABSL_LOCKS_EXCLUDED(mu_);
  void RequeueLocked(QueuedJob q, const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // QUEUED in the store, yet in no queue and on no worker: a job the daemon put back for its
  // next start while it stopped (a cancel's or a pause's flag went with it).
  bool PutBackAtStopLocked(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's entry in queue_, or queue_.end().
  std::vector<QueuedJob>::iterator FindQueued(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sizes from the registered model (zero when it is gone: StartJob then fails the job).
  QueuedJob QueueEntry(const v1::Job& job) const;
  void Notify() const;
  // Metrics of a job that ended: its per-job series go away, the result is counted.
  void JobEnded(const std::string& id, const char* result);
  // A job's per-job series (loss, progress), gone while it does not run.
  void ForgetJobSeries(const std::string& id);
  void CollectMetrics(metrics::Registry& r);
  // The job no longer counts as running for its tenant (before its terminal write, so that a
  // client told "ended" can start the next one at once), nor as resident on `w`.
  void ReleaseQuota(Worker* w, const std::string& tenant) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseQuotaLocked(Worker* w, const std::string& tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether an idle device other than `w` should take `q` rather than `w`, which holds
  // `resident` jobs and has `q`'s base model loaded or not (`loaded`).
  bool IdleDeviceFitsBetter(const Worker* w, int resident, bool loaded, const QueuedJob& q) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a client asked to cancel the job (its flag is set).
  bool CancelAsked(const std::string& id) const ABSL_LOCKS_EXCLUDED(mu_);
  // A job admitted while the daemon stops, whose pause was asked: recorded PAUSED, its quota
  // and flags given back in the same section (as Pause). False where no pause was asked, or the
  // store refused the record.
  bool PauseAdmitted(Worker* w, const QueuedJob& q) ABSL_LOCKS_EXCLUDED(mu_);
  int ActiveJobsLocked(const std::string& tenant) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the job's flags and live fields (after its final write: CancelJob waits for it).
  void Release(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A job cancelled where no worker steps it (queued, starting, sent back from a lost device):
  // recorded as such, its checkpoint (a resumed job's) gone, the metrics told. A job whose
  // adapter is stored ends SUCCEEDED with it instead: the cancel came too late.
  absl::StatusOr<v1::Job> EndCancelled(const std::string& tenant, const std::string& id,
                                       const std::string& reason);
  // A job that stored `adapter` (from QUEUED, PAUSED or RUNNING) recorded SUCCEEDED with it in
  // one write, its checkpoint gone, the metrics told.
  absl::StatusOr<v1::Job> SucceedWithStoredAdapter(const std::string& tenant, const std::string& id,
                                                   const v1::Adapter& adapter,
                                                   const std::string& reason);
  // The adapter the job stored (its success perhaps not recorded yet), if any.
  absl::StatusOr<std::optional<v1::Adapter>> StoredAdapterOf(const std::string& tenant,
                                                             const std::string& id);
  // Queue positions and a running job's live progress, which the stored record lags behind.
  v1::Job WithLiveFields(v1::Job job) const ABSL_LOCKS_EXCLUDED(mu_);
  void ApplyLiveFields(std::vector<v1::Job>& jobs) const ABSL_LOCKS_EXCLUDED(mu_);

  JobManagerStores stores_;
  JobManagerOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;

  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;  // queue changes, finished jobs, shutdown
  std::vector<QueuedJob> queue_ ABSL_GUARDED_BY(mu_);
  int64_t arrivals_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> running_by_tenant_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> cancel_flags_ ABSL_GUARDED_BY(mu_);
  // PauseJob's flags, by job id, while a job is started or stepped (released with its others).
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> pause_flags_ ABSL_GUARDED_BY(mu_);
  struct Live {
    int64_t steps = 0, total_steps = 0, tokens = 0;
    double loss = 0.0, eta_seconds = 0.0;
  };
  std::map<std::string, Live> live_ ABSL_GUARDED_BY(mu_);  // by job id, while running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::pair<std::string, std::string>> to_check_ ABSL_GUARDED_BY(mu_);  // tenant, id
  std::thread checker_;
  std::thread pruner_;                       // only with a finished_job_retention
  std::atomic<bool> stop_requested_{false};  // read by workers between steps
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex create_mu_;  // quota check and creation together

  mutable absl::Mutex change_mu_;
  mutable absl::CondVar change_cv_;
  mutable int64_t changes_ ABSL_GUARDED_BY(change_mu_) = 0;
};

}  // namespace qlorad::core
