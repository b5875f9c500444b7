#include "server/core/job_manager.h"

#include <google/protobuf/util/time_util.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/cuda_device.h"
#include "engine/dataset.h"
#include "engine/device.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "engine/peft_adapter.h"
#include "engine/status_macros.h"
#include "engine/trainer.h"
#include "server/core/host_memory.h"
#include "server/core/ids.h"
#include "server/core/job_state.h"
#include "server/core/model_pool.h"
#include "server/metrics/names.h"

namespace qlorad::core {
namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;

namespace {

constexpr const char* kTokensFile = "qlorad_tokens_trained";

absl::Status Field(const std::string& field, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
}

bool ValidName(const std::string& s, size_t max_len) {
  if (s.size() > max_len) return false;
  for (char c : s) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

// A store error worth another try at a job's start: one that may pass (a full disk, a busy or
// timed-out store), or an INTERNAL one (RocksDB's unclassified I/O errors, a scratch folder that
// cannot be written) a few times only, as it may be for good. Not a record that is missing or
// unreadable (NOT_FOUND, DATA_LOSS).
constexpr int kInternalErrorStartTries = 5;  // about 30 s of tries (1, 2, 4, 8, 16 s apart)
bool StoreMayMend(const absl::Status& s, int internal_failures) {
  return absl::IsUnavailable(s) || absl::IsResourceExhausted(s) || absl::IsAborted(s) ||
         absl::IsDeadlineExceeded(s) ||
         (absl::IsInternal(s) && internal_failures < kInternalErrorStartTries);
}
bool StoreMayMend(const absl::Status& s, const QueuedJob& q) {
  return StoreMayMend(s, q.internal_failures);
}

// The pause before try `tries` + 1 of a write the store refused: 1 s, doubling up to 30 s.
absl::Duration PauseAfter(int tries) {
  return std::min(absl::Seconds(30), absl::Seconds(1 << std::min(tries - 1, 5)));
}

// A device's refused allocation as the job's error, naming the device once (a GPU's own message
// starts "cuda:N (model, ...)", a CPU device's "cpu: ...").
absl::Status OutOfMemoryOn(const std::string& device, const absl::Status& s) {
  const bool named = absl::StartsWith(s.message(), device);
  return absl::ResourceExhaustedError(
      absl::StrCat("out of memory on ", named ? "" : absl::StrCat(device, ": "), s.message()));
}

}  // namespace

struct JobManager::Worker {
  std::string name;
  std::string description;  // Device::name, taken once the device is made
  int threads = 0;
  int64_t budget = 0;
  int64_t inference_bytes = 0;  // taken out of the budget for generation and evaluation
  std::thread thread;
  std::unique_ptr<Device> device;
  std::unique_ptr<ModelPool> pool;
  // Reserved bytes of admitted jobs (their estimates), for admission and DeviceInfo.
  std::atomic<int64_t> jobs_bytes{0};
  std::atomic<int> jobs_running{0};
  // Jobs admitted here and not yet gone (started or not), under JobManager::mu_: placement
  // reads it for every device, and it never lags an admission.
  int resident = 0;
  // The device failed for good: its jobs are back in the queue and the worker has stopped.
  std::atomic<bool> lost{false};
  // Why a start or a step found the device lost (kUnavailable), until LoseDevice acts on it:
  // the worker thread's alone.
  absl::Status lost_cause;
  // The device's memory accounting: published once when the device is made, then by the worker
  // thread (which alone drives it) each round.
  absl::Mutex usage_mu;
  DeviceMemoryUsage usage ABSL_GUARDED_BY(usage_mu);
  std::string lost_reason ABSL_GUARDED_BY(usage_mu);
  void PublishUsage() {
    const DeviceMemoryUsage u = device->memory_usage();
    absl::MutexLock lock(&usage_mu);
    usage = u;
  }
};

struct JobManager::ActiveJob {
  v1::Job job;
  QueuedJob entry;
  std::shared_ptr<PooledModel> model;
  std::unique_ptr<Trainer> trainer;
  std::shared_ptr<std::atomic<bool>> cancel;
  std::shared_ptr<std::atomic<bool>> pause;  // PauseJob: checkpoint and leave after this step
  std::chrono::steady_clock::time_point last_progress{};
  // Wall-clock time from one of its steps to the next, smoothed: with jobs taking turns on the
  // device it includes their steps, which the trainer's own timing (this job's step) leaves out.
  std::chrono::steady_clock::time_point last_step_end{};
  double seconds_per_step = 0.0;
  bool records_failing = false;  // its last progress record could not be stored
  int64_t tokens = 0;
  double last_loss = 0.0;
  absl::Status failure;
  std::string failure_parameter;
  bool failure_is_user = false;
  std::vector<float> final_params;  // the adapter, read once the last step is done
  // Trained (its adapter read) and, while still on its device, its adapter not yet stored: the
  // store refused it (a full disk, a busy store). The job keeps its device and tries again from
  // store_again_at, rather than throwing the training away.
  bool trained() const { return !final_params.empty(); }
  // Its adapter, once stored: only the SUCCEEDED record is left, and a later try (or a cancel,
  // which no longer applies) must not store a second one.
  std::optional<v1::Adapter> stored_adapter;
  // How it ends (its adapter, or its SUCCEEDED or CANCELLED record) could not be stored: it stays
  // on its device and tries again from store_again_at (WaitToEnd).
  bool waiting_to_end() const { return store_tries > 0; }
  bool recording_cancel = false;  // of those, a wait for its CANCELLED record
  int store_tries = 0;
  int store_internal_failures = 0;  // of those, INTERNAL ones (tried a few times only)
  absl::Time store_again_at = absl::InfinitePast();
  bool quota_released = false;  // its running count, given back once (ReleaseQuotaOf)
};

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const JobManagerStores& stores,
                                                               const JobManagerOptions& options) {
  auto m = std::unique_ptr<JobManager>(new JobManager(stores, options));
  const bool automatic = options.devices.empty() || options.devices == "auto";
  std::vector<std::string> names;
  if (automatic) {
    // Every GPU, or one CPU device where there is none (saying why: a GPU host whose driver
    // is too old should not train on its CPU unnoticed).
    std::string why_none;
    const int gpus = CudaDeviceCount(&why_none);
    for (int i = 0; i < gpus; ++i) names.push_back(absl::StrCat("cuda:", i));
    if (gpus == 0) {
      std::fprintf(stderr, "qlorad: --devices auto: no GPU (%s); training on cpu:0\n",
                   why_none.c_str());
      names.push_back("cpu:0");
    }
  } else {
    for (absl::string_view d : absl::StrSplit(options.devices, ',', absl::SkipEmpty())) {
      names.emplace_back(d);
    }
  }
  std::set<std::string> seen;
  int cpu_devices = 0;
  for (std::string& n : names) {
    int index = 0;
    const bool cpu = n.rfind("cpu:", 0) == 0, gpu = n.rfind("cuda:", 0) == 0;
    if (!(cpu || gpu) || !absl::SimpleAtoi(n.substr(cpu ? 4 : 5), &index) || index < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--devices: '", n, "' is not a device (cpu:0, cuda:0, a comma-separated list, or auto)"));
    }
    // One spelling per device (cuda:00 is cuda:0): two workers must never share a card.
    const std::string canonical = absl::StrCat(cpu ? "cpu:" : "cuda:", index);
    if (!seen.insert(canonical).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--devices: ", canonical, " is listed twice (as '", n, "')"));
    }
    n = canonical;
    cpu_devices += cpu;
  }
  // A CPU budget past the host's memory admits jobs until the kernel's OOM killer ends the daemon.
  if (cpu_devices > 0 && options.device_memory_bytes > UsableMemoryBytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device-memory-bytes: ", options.device_memory_bytes,
                     " is more than this host's usable memory (", UsableMemoryBytes(), " bytes)"));
  }
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // Devices are made here, before the worker threads start, so that Devices() never races
  // with them.
  auto add_cpu = [&](const std::string& name, int cpu_count) {
    auto w = std::make_unique<Worker>();
    w->name = name;
    w->threads = options.threads_per_device > 0 ? options.threads_per_device
                                                : std::max(1, cores / cpu_count);
    w->budget = options.device_memory_bytes > 0 ? options.device_memory_bytes
                                                : UsableMemoryBytes() / 2 / cpu_count;
    auto fault = options.cpu_device_faults.find(name);
    w->device = fault == options.cpu_device_faults.end()
                    ? CreateCpuDevice(w->threads)
                    : CreateCpuDevice(w->threads, fault->second);
    w->pool = std::make_unique<ModelPool>(w->device.get());
    w->description = w->device->name();
    w->PublishUsage();  // the card's figures from the start, not the budget until a first job
    m->workers_.push_back(std::move(w));
  };
  for (const std::string& name : names) {
    if (name.rfind("cuda:", 0) != 0) {
      add_cpu(name, cpu_devices);
      continue;
    }
    const int ordinal = std::stoi(name.substr(5));
    auto device = CreateCudaDevice(ordinal);
    if (!device.ok()) {
      if (automatic) {  // a card that cannot serve (too old, faulted, held): the others do
        std::fprintf(stderr, "qlorad: --devices auto: skipping %s: %s\n", name.c_str(),
                     std::string(device.status().message()).c_str());
        continue;
      }
      return absl::Status(device.status().code(),
                          absl::StrCat("--devices: ", device.status().message()));
    }
    auto w = std::make_unique<Worker>();
    w->name = name;
    w->device = std::move(*device);
    w->threads = 1;
    // Room for the CUDA context and allocator slack: up to 90% of the card, and no more than
    // is free now (other processes; not the inference device, opened after this).
    const DeviceMemoryUsage u = w->device->memory_usage();
    // A budget past the card would admit jobs the card cannot hold, each then failing out of
    // memory instead of waiting in the queue.
    if (options.device_memory_bytes > u.device_total) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device-memory-bytes: ", options.device_memory_bytes, " is more than ",
                       name, " has (", u.device_total, " bytes)"));
    }
    w->budget = options.device_memory_bytes > 0 ? options.device_memory_bytes
                                                : std::min(u.device_total / 10 * 9, u.device_free);
    w->pool = std::make_unique<ModelPool>(w->device.get());
    w->description = w->device->name();
    w->PublishUsage();
    m->workers_.push_back(std::move(w));
  }
  if (m->workers_.empty()) {  // auto, and no GPU could serve: the CPU does
    std::fprintf(stderr, "qlorad: --devices auto: no GPU could be used; training on cpu:0\n");
    add_cpu("cpu:0", 1);
  }
  if (m->options_.scratch_dir.empty()) {
    m->options_.scratch_dir = (fs::temp_directory_path() / "qlorad-scratch").string();
  }
  std::error_code ec;
  fs::create_directories(m->options_.scratch_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", m->options_.scratch_dir, ": ", ec.message()));
  }
  return m;
}

JobManager::JobManager(const JobManagerStores& stores, const JobManagerOptions& options)
    : stores_(stores), options_(options) {}

JobManager::~JobManager() { Shutdown(); }

int64_t JobManager::MaxDeviceBudget(bool include_lost) const {
  int64_t best = 0;
  for (const auto& w : workers_) {
    if (include_lost || !w->lost) best = std::max(best, w->budget);  // a lost one takes no job
  }
  return best;
}

bool JobManager::DeviceLost(Worker* w, absl::Status* why) {
  absl::Status device = w->device->TakeError();
  if (!absl::IsUnavailable(device)) return false;
  if (why != nullptr) *why = std::move(device);
  return true;
}

int64_t JobManager::JobBytes(const LlamaConfig& c, const v1::Hyperparameters& r) const {
  const TrainAttentionDims dims{r.seq_len(), c.num_attention_heads, c.num_key_value_heads,
                                c.head_dim()};
  int64_t attention = 0;
  bool bf16 = !workers_.empty();  // float32 activations where any device keeps them so
  for (const auto& w : workers_) {
    attention = std::max(attention, w->device->AttentionSavedFloats(dims));
    bf16 = bf16 && w->device->PrefersBf16Activations(dims);
  }
  if (workers_.empty()) attention = CpuAttentionSavedPerRow(c, r);
  // With bf16 activations, the scratch of the conversion defaults where a device's own kernels
  // do not cover the graph (a LoRA rank over the fused dropout's 64, say): the graph reserves it.
  int64_t conversion = 0;
  if (bf16) {
    const ConversionShape shape =
        ConversionShape::Of(c, TrainerOptionsFrom(r).lora.rank, r.batch_size(), r.seq_len());
    for (const auto& w : workers_) {
      conversion = std::max(conversion, w->device->ConversionScratchFloats(shape));
    }
  }
  return JobMemoryBytes(c, r, attention, bf16) + conversion * 4;
}

QueuedJob JobManager::QueueEntry(const v1::Job& job) const {
  QueuedJob q;
  q.tenant = job.tenant();
  q.id = job.id();
  q.priority = job.priority();
  q.model = job.model();
  auto model = stores_.models->Get(job.model());
  if (model.ok()) {
    q.model_key = ModelPool::Key(*model);
    q.model_bytes = model->quantized_bytes();
    q.job_bytes = JobBytes(ConfigFromModel(*model), job.resolved());
  }
  return q;
}

absl::Status JobManager::ShareWithInference(const std::string& name, int64_t bytes) {
  {
    absl::MutexLock lock(&mu_);  // once started, the workers read budgets without a lock
    if (started_) return absl::FailedPreconditionError("the job manager is already started");
  }
  for (const auto& w : workers_) {
    if (w->name != name) continue;
    if (bytes <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "'s budget (", w->budget, " bytes) is too small to share"));
    }
    if (bytes >= w->budget) {
      return absl::InvalidArgumentError(
          absl::StrCat(bytes, " bytes for generation and evaluation would leave ", name,
                       " no training budget (it has ", w->budget,
                       " bytes: --device-memory-bytes, else 90% of the card)"));
    }
    w->budget -= bytes;
    w->inference_bytes += bytes;
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat(name, " does not train here"));
}

absl::Status JobManager::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("the job manager is already started");
    started_ = true;
  }
  // The scan also makes the store's kept counts, now rather than in the first quota check,
  // which reads them holding mu_.
  ASSIGN_OR_RETURN(std::vector<v1::Job> unfinished, stores_.jobs->Unfinished());
  // Oldest first, so that FIFO order survives a restart.
  // Records from before microsecond timestamps tie within a second: their ids break the tie,
  // so the order is at least the same at every start.
  std::sort(unfinished.begin(), unfinished.end(), [](const v1::Job& a, const v1::Job& b) {
    const int64_t ta = TimeUtil::TimestampToNanoseconds(a.create_time()),
                  tb = TimeUtil::TimestampToNanoseconds(b.create_time());
    return ta != tb ? ta < tb : a.id() < b.id();
  });
  for (const v1::Job& job : unfinished) {
    if (job.state() == v1::QUEUED) {
      Requeue(job);
      continue;
    }
    if (job.state() == v1::PAUSED) continue;  // until a client resumes it
    if (job.state() != v1::RUNNING && job.state() != v1::VALIDATING) {
      std::fprintf(stderr, "qlorad: job %s/%s has state %d; left alone\n", job.tenant().c_str(),
                   job.id().c_str(), static_cast<int>(job.state()));
      continue;
    }
    const std::string reason =
        job.state() == v1::RUNNING
            ? absl::StrCat("the daemon restarted; resuming from the last checkpoint (step ",
                           job.steps_completed(), " was reached)")
            : "validated; queued after a restart";
    auto moved = stores_.jobs->Transition(job.tenant(), job.id(), JobState::kQueued, reason,
                                          [](v1::Job& j) { j.clear_device(); });
    if (!moved.ok()) {  // one bad record must not keep the daemon from starting
      std::fprintf(stderr, "qlorad: cannot requeue job %s/%s: %s\n", job.tenant().c_str(),
                   job.id().c_str(), std::string(moved.status().message()).c_str());
      continue;
    }
    Requeue(*moved);
  }
  // Checkpoints of jobs that ended (a crash between the final write and the cleanup).
  auto checkpoints = stores_.checkpoints->List();
  if (checkpoints.ok()) {
    for (const auto& [tenant, id] : *checkpoints) {
      auto job = stores_.jobs->Get(tenant, id);
      if (absl::IsNotFound(job.status()) ||
          (job.ok() && IsTerminal(static_cast<JobState>(job->state())))) {
        (void)stores_.checkpoints->Delete(tenant, id);
      }
    }
  }
  if (stores_.metrics != nullptr) {
    stores_.metrics->AddCollector([this](metrics::Registry& r) { CollectMetrics(r); });
    // Counters exist from the start at 0: a rate over a series that appears with its first
    // event misses that event, and an alert joining on one (no token trained yet) never fires.
    for (const char* result : {"succeeded", "failed", "cancelled"}) {
      stores_.metrics->Add(metrics::kJobsFinished, {result}, 0);
    }
    for (const auto& w : workers_) stores_.metrics->Add(metrics::kTrainedTokens, {w->name}, 0);
  }
  stop_requested_ = false;
  for (auto& w : workers_) {
    Worker* raw = w.get();
    w->thread = std::thread([this, raw] { WorkerLoop(raw); });
  }
  checker_ = std::thread([this] { CheckLoop(); });
  if (options_.finished_job_retention > absl::ZeroDuration()) {
    pruner_ = std::thread([this] { PruneLoop(); });
  }
  return absl::OkStatus();
}

bool JobManager::PutBackAtStopLocked(const v1::Job& job) {
  return job.state() == v1::QUEUED && cancel_flags_.count(job.id()) == 0 &&
         FindQueued(job.id()) == queue_.end();
}

std::vector<QueuedJob>::iterator JobManager::FindQueued(const std::string& id) {
  return std::find_if(queue_.begin(), queue_.end(), [&](const QueuedJob& q) { return q.id == id; });
}

void JobManager::Requeue(const v1::Job& job) {
  QueuedJob q = QueueEntry(job);
  absl::MutexLock lock(&mu_);
  RequeueLocked(std::move(q), job);
}

void JobManager::RequeueLocked(QueuedJob q, const v1::Job& job) {
  q.arrival = arrivals_++;
  queue_.push_back(std::move(q));
  cancel_flags_[job.id()] = std::make_shared<std::atomic<bool>>(false);
  pause_flags_.erase(job.id());  // a run queued afresh has no pause asked of it
  // The data check, for a job that has not trained (one that has keeps its data: its start
  // skips the bounds too).
  if (job.steps_completed() == 0) to_check_.emplace_back(job.tenant(), job.id());
  work_cv_.SignalAll();
}

void JobManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    stop_requested_ = true;
    work_cv_.SignalAll();
  }
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  if (checker_.joinable()) checker_.join();
  if (pruner_.joinable()) pruner_.join();
}

absl::Status JobManager::DeleteJob(const std::string& tenant, const std::string& id) {
  // Under the creation lock: a create retried with the job's key, between its check of the key
  // and its store, would otherwise store a second job outside the quota it then refuses.
  absl::MutexLock create_lock(&create_mu_);
  RETURN_IF_ERROR(stores_.jobs->Delete(tenant, id));
  Notify();  // a watch of the job ends (NOT_FOUND) instead of waiting for its timeout
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobManager::PruneFinishedJobs(absl::Time cutoff) {
  // In batches, each found by a scan that holds no lock: a node may keep many thousands.
  constexpr int kBatch = 1000;
  int64_t deleted = 0;
  std::string cursor;  // each batch's scan goes on where the last one stopped
  while (true) {
    ASSIGN_OR_RETURN(const auto batch, stores_.jobs->FinishedBefore(cutoff, kBatch, &cursor));
    bool stopping = false;
    for (const auto& [tenant, id] : batch) {
      {
        absl::MutexLock lock(&mu_);
        stopping = stopping_;  // a stop never waits for a long sweep
      }
      if (stopping) break;
      absl::MutexLock create_lock(&create_mu_);  // as DeleteJob
      absl::Status s = stores_.jobs->Delete(tenant, id);
      if (absl::IsNotFound(s)) continue;  // deleted by its tenant meanwhile
      RETURN_IF_ERROR(s);
      ++deleted;
    }
    if (stopping || static_cast<int>(batch.size()) < kBatch) break;
  }
  if (deleted > 0) Notify();
  return deleted;
}

void JobManager::PruneLoop() {
  while (true) {
    const absl::Duration keep = options_.finished_job_retention;
    auto pruned = PruneFinishedJobs(absl::Now() - keep);
    if (!pruned.ok()) {
      std::fprintf(stderr, "qlorad: deleting jobs that ended over %s ago failed: %s\n",
                   absl::FormatDuration(keep).c_str(),
                   std::string(pruned.status().message()).c_str());
    } else if (*pruned > 0) {
      std::fprintf(stderr, "qlorad: deleted %lld jobs that ended over %s ago\n",
                   static_cast<long long>(*pruned), absl::FormatDuration(keep).c_str());
    }
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.retention_sweep_interval)) {
      return;
    }
  }
}

void JobManager::Notify() const {
  absl::MutexLock lock(&change_mu_);
  ++changes_;
  change_cv_.SignalAll();
}

int64_t JobManager::ChangeCounter() const {
  absl::MutexLock lock(&change_mu_);
  return changes_;
}

void JobManager::WaitForChange(int64_t seen, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&change_mu_);
  while (changes_ <= seen) {
    if (change_cv_.WaitWithDeadline(&change_mu_, deadline)) return;
  }
}

int JobManager::ActiveJobs(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  return ActiveJobsLocked(tenant);
}

int JobManager::ActiveJobsLocked(const std::string& tenant) const {
  int n = 0;
  for (const QueuedJob& q : queue_) n += q.tenant == tenant;
  auto it = running_by_tenant_.find(tenant);
  return n + (it == running_by_tenant_.end() ? 0 : it->second);
}

absl::StatusOr<bool> JobManager::ModelInUse(const std::string& model) const {
  ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, stores_.jobs->Unfinished());
  for (const v1::Job& j : jobs) {
    if (j.model() == model) return true;
  }
  return false;
}

absl::StatusOr<bool> JobManager::DatasetInUse(const std::string& tenant,
                                              const std::string& dataset) const {
  ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, stores_.jobs->Unfinished(tenant));
  for (const v1::Job& j : jobs) {
    if (j.training_dataset() == dataset || j.validation_dataset() == dataset) {
      return true;
    }
  }
  return false;
}

absl::Status JobManager::DeleteModel(const std::string& model) {
  absl::MutexLock create_lock(&create_mu_);
  ASSIGN_OR_RETURN(const bool in_use, ModelInUse(model));
  if (in_use) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", model, "' is used by unfinished jobs"));
  }
  return stores_.models->Delete(model);
}

absl::Status JobManager::DeleteDataset(const std::string& tenant, const std::string& dataset) {
  absl::MutexLock create_lock(&create_mu_);
  ASSIGN_OR_RETURN(const bool in_use, DatasetInUse(tenant, dataset));
  if (in_use) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", dataset, " is used by an unfinished job"));
  }
  return stores_.datasets->Delete(tenant, dataset);
}

absl::StatusOr<v1::Model> JobManager::JobInputs(const std::string& tenant,
                                                const v1::CreateJobRequest& req) const {
  if (req.model().empty()) return absl::InvalidArgumentError("model: required");
  auto model = stores_.models->Get(req.model());
  if (absl::IsNotFound(model.status()) || absl::IsInvalidArgument(model.status())) {
    return absl::NotFoundError(absl::StrCat("model: no base model named '", req.model(), "'"));
  }
  if (!model.ok()) return model.status();
  if (req.training_dataset().empty())
    return absl::InvalidArgumentError("training_dataset: required");
  for (const auto& [field, id] :
       {std::pair<std::string, std::string>{"training_dataset", req.training_dataset()},
        {"validation_dataset", req.validation_dataset()}}) {
    if (id.empty()) continue;
    auto ds = stores_.datasets->Get(tenant, id);
    if (absl::IsNotFound(ds.status()) || absl::IsInvalidArgument(ds.status())) {
      return absl::NotFoundError(absl::StrCat(field, ": no dataset '", id, "'"));
    }
    if (!ds.ok()) return ds.status();
  }
  return model;
}

absl::StatusOr<v1::Job> JobManager::CreateJob(const Tenant& tenant,
                                              const v1::CreateJobRequest& req) {
  // The whole creation under the lock deletes take (DeleteModel, DeleteDataset): the inputs
  // found here are still there when the job is stored.
  absl::MutexLock create_lock(&create_mu_);
  auto model = JobInputs(tenant.name, req);
  if (!model.ok()) return model.status();
  if (!ValidName(req.suffix(), 40))
    return absl::InvalidArgumentError("suffix: at most 40 characters of [a-zA-Z0-9._-]");
  if (req.labels_size() > kMaxLabels) {
    return absl::InvalidArgumentError(absl::StrCat("labels: at most ", kMaxLabels, " labels"));
  }
  for (const auto& [k, v] : req.labels()) {
    if (k.empty() || !ValidName(k, 63) || v.size() > 256) {
      return absl::InvalidArgumentError(absl::StrCat(
          "labels: key '", k, "' must be 1-63 characters of [a-zA-Z0-9._-], values at most 256"));
    }
  }
  if (req.priority() < -1000 || req.priority() > 1000)
    return absl::InvalidArgumentError("priority: must be in [-1000, 1000]");
  if (req.priority() > tenant.limits.max_priority) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority: at most ", tenant.limits.max_priority, " for tenant '", tenant.name,
                     "' (its limits.max_priority in the tenants file)"));
  }
  if (req.idempotency_key().size() > 128 || req.idempotency_key().find('/') != std::string::npos)
    return absl::InvalidArgumentError("idempotency_key: at most 128 characters, no '/'");
  ASSIGN_OR_RETURN(v1::Hyperparameters resolved,
                   ResolveHyperparameters(req.hyperparameters(), *model, options_.limits,
                                          !req.validation_dataset().empty()));
  const int64_t job_bytes = JobBytes(ConfigFromModel(*model), resolved);
  const int64_t budget = MaxDeviceBudget();
  if (job_bytes + model->quantized_bytes() > budget &&
      job_bytes + model->quantized_bytes() <= MaxDeviceBudget(/*include_lost=*/true)) {
    // Not the request's fault: the devices that could hold it failed for good (every one, it
    // may be).
    return absl::UnavailableError(absl::StrCat(
        "no device left up can hold the job (about ", job_bytes + model->quantized_bytes(),
        " bytes): the ones that could failed for good (qlorad_device_up is 0); restart qlorad"));
  }
  if (job_bytes + model->quantized_bytes() > budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "hyperparameters.batch_size: the job needs about ", job_bytes + model->quantized_bytes(),
        " bytes (base model ", model->quantized_bytes(), " + training ", job_bytes,
        ") and the largest device offers ", budget, "; lower batch_size or seq_len"));
  }

  v1::Job job;
  job.set_id(NewId("job"));
  job.set_tenant(tenant.name);
  job.set_model(req.model());
  job.set_training_dataset(req.training_dataset());
  job.set_validation_dataset(req.validation_dataset());
  *job.mutable_requested() = req.hyperparameters();
  *job.mutable_resolved() = resolved;
  job.set_suffix(req.suffix());
  *job.mutable_labels() = req.labels();
  job.set_priority(req.priority());

  ASSIGN_OR_RETURN(const bool retry,
                   stores_.jobs->IdempotencyKeyUsed(tenant.name, req.idempotency_key()));
  std::optional<v1::Job> unqueued;
  if (retry) {  // the stored job, or ALREADY_EXISTS when the request differs; no quota applies
    ASSIGN_OR_RETURN(v1::Job stored,
                     stores_.jobs->Create(job, req.idempotency_key(), RequestFingerprint(req)));
    // Still VALIDATING under create_mu_: its QUEUED write failed. This retry queues it, within
    // the quota (it counted nowhere meanwhile).
    if (stored.state() != v1::VALIDATING) return WithLiveFields(stored);
    unqueued = std::move(stored);
  }
  RETURN_IF_ERROR(RoomForAnotherJob(tenant));
  if (!unqueued) {
    ASSIGN_OR_RETURN(v1::Job stored,
                     stores_.jobs->Create(job, req.idempotency_key(), RequestFingerprint(req)));
    if (stored.id() != job.id()) return WithLiveFields(stored);  // an idempotent retry
  }
  const std::string& id = unqueued ? unqueued->id() : job.id();
  QueuedJob entry = QueueEntry(unqueued ? *unqueued : job);
  absl::StatusOr<v1::Job> queued;
  {
    // The record and the queue in one section: a pause finds the job in one or the other.
    absl::MutexLock lock(&mu_);
    queued = stores_.jobs->Transition(tenant.name, id, JobState::kQueued, "validated");
    if (queued.ok()) RequeueLocked(std::move(entry), *queued);
  }
  if (!queued.ok()) return NotQueued(tenant.name, id, req.idempotency_key(), queued.status());
  Notify();
  return WithLiveFields(*queued);
}

absl::Status JobManager::RoomForAnotherJob(const Tenant& tenant, bool resuming) const {
  int active = 0;
  absl::StatusOr<int64_t> paused;
  {
    // Both in one section: every move to or from PAUSED is made under mu_, taking the job from
    // one count to the other (the store keeps its count of paused jobs with the record).
    absl::MutexLock lock(&mu_);
    active = ActiveJobsLocked(tenant.name);
    paused = stores_.jobs->CountOf(tenant.name, v1::PAUSED);
  }
  RETURN_IF_ERROR(paused.status());
  if (active >= tenant.limits.max_concurrent_jobs) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant '", tenant.name, "' already has ", tenant.limits.max_concurrent_jobs,
                     " queued or running jobs (its limit); wait for one to finish"));
  }
  // Each job ends with an adapter, a paused one too: refuse now rather than after hours of
  // training. This also bounds the paused jobs, each of which keeps a checkpoint.
  ASSIGN_OR_RETURN(std::vector<v1::Adapter> adapters, stores_.adapters->List(tenant.name));
  // A job resumed is one of the paused: it adds no adapter to come.
  const int64_t unfinished = active + *paused - (resuming && *paused > 0 ? 1 : 0);
  if (static_cast<int64_t>(adapters.size()) + unfinished >= tenant.limits.max_adapters) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant '", tenant.name, "' holds ", adapters.size(), " adapters and has ",
                     unfinished, " unfinished jobs (paused ones too); its limit is ",
                     tenant.limits.max_adapters, " adapters: delete one first"));
  }
  return absl::OkStatus();
}

absl::Status JobManager::NotQueued(const std::string& tenant, const std::string& id,
                                   const std::string& idempotency_key, const absl::Status& why) {
  if (!idempotency_key.empty()) {
    // Left VALIDATING: the same request again queues it (a restart would too). ABORTED whatever
    // the store said (a full disk is RESOURCE_EXHAUSTED, which clients take as final): the
    // code that tells a client to send the same request again.
    return absl::Status(
        absl::StatusCode::kAborted,
        absl::StrCat("job ", id, " is stored but could not be queued (", why.message(),
                     "); send the request again with the same "
                     "idempotency_key to queue it"));
  }
  // Without a key the client cannot name this job in a retry, and it would create another: the
  // job ends here, so that nothing trains behind the client's back (when this write succeeds).
  v1::JobError error;
  error.set_code(absl::StatusCodeToString(why.code()));
  error.set_message(absl::StrCat("the job could not be queued: ", why.message()));
  auto failed = stores_.jobs->Transition(tenant, id, JobState::kFailed, error.message(),
                                         [&](v1::Job& j) { *j.mutable_error() = error; });
  if (failed.ok()) JobEnded(id, "failed");
  return absl::Status(
      why.code(),
      absl::StrCat("job ", id, " could not be queued (", why.message(), "); ",
                   failed.ok() ? "it is marked FAILED: create it again"
                               : "nor marked FAILED: it is queued when qlorad restarts, or "
                                 "cancel it; an idempotency_key makes such a retry safe"));
}

v1::Job JobManager::WithLiveFields(v1::Job job) const {
  std::vector<v1::Job> one = {std::move(job)};
  ApplyLiveFields(one);
  return std::move(one[0]);
}

void JobManager::ApplyLiveFields(std::vector<v1::Job>& jobs) const {
  absl::MutexLock lock(&mu_);
  // The queue's order is computed once for all the jobs asked about.
  std::map<std::string, int32_t> position;
  if (std::any_of(jobs.begin(), jobs.end(),
                  [](const v1::Job& j) { return j.state() == v1::QUEUED; })) {
    const std::vector<size_t> order = QueueOrder(queue_, running_by_tenant_);
    for (size_t i = 0; i < order.size(); ++i)
      position[queue_[order[i]].id] = static_cast<int32_t>(i);
  }
  for (v1::Job& job : jobs) {
    auto pos = position.find(job.id());
    job.set_queue_position(pos == position.end() ? -1 : pos->second);
    if (job.state() != v1::RUNNING) continue;
    auto it = live_.find(job.id());
    if (it != live_.end() && it->second.steps >= job.steps_completed()) {
      job.set_steps_completed(it->second.steps);
      job.set_total_steps(it->second.total_steps);
      job.set_tokens_trained(it->second.tokens);
      job.set_last_loss(it->second.loss);
      job.set_eta_seconds(it->second.eta_seconds);
    }
  }
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& tenant, const std::string& id) const {
  ASSIGN_OR_RETURN(v1::Job job, stores_.jobs->Get(tenant, id));
  return WithLiveFields(std::move(job));
}

absl::StatusOr<std::vector<v1::Job>> JobManager::ListJobs(
    const std::string& tenant, const std::vector<v1::JobState>& states,
    const std::map<std::string, std::string>& labels, int page_size, const std::string& page_token,
    std::string* next_page_token) const {
  page_size = page_size <= 0 ? 100 : std::min(page_size, 1000);
  std::vector<v1::Job> out;
  std::string cursor = page_token;
  next_page_token->clear();
  // Labels filter after the store's page; keep reading pages until this one is full.
  while (static_cast<int>(out.size()) < page_size) {
    ASSIGN_OR_RETURN(std::vector<v1::Job> page,
                     stores_.jobs->List(tenant, states, page_size, cursor));
    for (v1::Job& j : page) {
      cursor = j.id();
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = j.labels().find(k);
        match = match && it != j.labels().end() && it->second == v;
      }
      if (match) out.push_back(std::move(j));
      if (static_cast<int>(out.size()) == page_size) {
        *next_page_token = cursor;
        ApplyLiveFields(out);
        return out;
      }
    }
    if (static_cast<int>(page.size()) < page_size) break;
  }
  ApplyLiveFields(out);
  return out;
}

namespace {

// What CancelJob, PauseJob and ResumeJob answer for a job that ended.
absl::Status AlreadyEnded(const v1::Job& job) {
  return absl::FailedPreconditionError(
      absl::StrCat("job ", job.id(), " already ended: ", v1::JobState_Name(job.state())));
}

}  // namespace

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& tenant, const std::string& id,
                                              absl::Duration wait) {
  ASSIGN_OR_RETURN(v1::Job job, stores_.jobs->Get(tenant, id));
  if (job.state() == v1::CANCELLED) return job;
  if (IsTerminal(static_cast<JobState>(job.state()))) {
    return AlreadyEnded(job);
  }
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  // A queued job is cancelled here and now; false where it is not in the queue.
  auto cancel_queued = [&](absl::StatusOr<v1::Job>* done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto queued = FindQueued(id);
    if (queued == queue_.end()) return false;
    *done = EndCancelled(tenant, id, "cancelled by the client while queued");
    if (done->ok()) {
      queue_.erase(queued);
      ReleaseLocked(id);
    } else if (auto flag = cancel_flags_.find(id); flag != cancel_flags_.end()) {
      // Not recorded (a full disk): it stays queued with its flag set, so that its start ends
      // it, rather than leaving the queue while QUEUED in the store.
      flag->second->store(true);
    }
    work_cv_.SignalAll();
    return true;
  };
  absl::StatusOr<v1::Job> done;
  if (cancel_queued(&done)) return done;
  auto flag = cancel_flags_.find(id);
  if (flag == cancel_flags_.end()) {
    // Neither queued nor on a worker (paused, or a store write failed on its way): nothing else
    // will end it, so end it here (the event's `from` says which).
    return EndCancelled(tenant, id, "cancelled by the client");
  }
  flag->second->store(true);
  // The worker stops it after the current step; wait for the record to say so. A job sent back
  // to the queue meanwhile (its device was lost) is cancelled from there.
  while (absl::Now() < deadline) {
    if (cancel_flags_.count(id) == 0) break;
    if (cancel_queued(&done)) return done;
    work_cv_.WaitWithDeadline(&mu_, deadline);
  }
  auto now = stores_.jobs->Get(tenant, id);
  if (!now.ok()) return now.status();
  // The daemon put it back for its next start while it stopped, and the flag set here went
  // with it. The cancel is honoured here, or the job would train again after the restart.
  if (PutBackAtStopLocked(*now)) {
    return EndCancelled(tenant, id, "cancelled by the client while the daemon stopped");
  }
  return *now;
}

absl::StatusOr<v1::Job> JobManager::PauseJob(const std::string& tenant, const std::string& id,
                                             absl::Duration wait) {
  ASSIGN_OR_RETURN(v1::Job job, stores_.jobs->Get(tenant, id));
  if (job.state() == v1::PAUSED) return job;
  if (IsTerminal(static_cast<JobState>(job.state()))) {
    return AlreadyEnded(job);
  }
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  // A queued job is paused here and now (out of the queue); false where it is not queued.
  auto pause_queued = [&](absl::StatusOr<v1::Job>* done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto queued = FindQueued(id);
    if (queued == queue_.end()) return false;
    *done = stores_.jobs->Transition(tenant, id, JobState::kPaused,
                                     "paused by the client while queued");
    if (done->ok()) {
      queue_.erase(queued);
      ReleaseLocked(id);
    }
    return true;
  };
  absl::StatusOr<v1::Job> done;
  if (pause_queued(&done)) {
    if (done.ok()) Notify();
    return done;
  }
  if (cancel_flags_.count(id) == 0) {
    // Neither queued nor on a worker (a store write failed on its way, or it is still being
    // validated): recorded as paused, to resume from its last checkpoint, where the state
    // machine allows it.
    auto moved = stores_.jobs->Transition(tenant, id, JobState::kPaused, "paused by the client");
    if (moved.ok()) Notify();
    return moved;
  }
  std::shared_ptr<std::atomic<bool>> flag = pause_flags_[id];
  if (!flag) flag = pause_flags_[id] = std::make_shared<std::atomic<bool>>(false);
  flag->store(true);
  // The worker pauses it within the current step; wait for it to leave the worker. A job sent
  // back to the queue meanwhile (its device was lost) is paused from there. The flag dropped
  // (a resume withdrew it, its end is being stored, the store refused the record) ends the wait.
  while (absl::Now() < deadline && cancel_flags_.count(id) != 0 && flag->load()) {
    if (pause_queued(&done)) {
      if (done.ok()) Notify();
      return done;
    }
    work_cv_.WaitWithDeadline(&mu_, deadline);
  }
  auto now = stores_.jobs->Get(tenant, id);
  if (!now.ok()) return now.status();
  // The daemon put it back for its next start while it stopped, and the flag set here went
  // with it. Paused here instead.
  if (PutBackAtStopLocked(*now)) {
    return stores_.jobs->Transition(tenant, id, JobState::kPaused,
                                    "paused by the client while the daemon stopped");
  }
  return now;
}

absl::StatusOr<v1::Job> JobManager::ResumeJob(const Tenant& tenant, const std::string& id) {
  // Under the creation lock: the quota check and the requeue are one step, as CreateJob's.
  absl::MutexLock create_lock(&create_mu_);
  v1::Job job;
  {
    // Read under mu_, which every move to PAUSED holds: a pause taking effect now is either
    // seen here (and resumed below) or not yet asked of a worker (and withdrawn here).
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(job, stores_.jobs->Get(tenant.name, id));
    auto flag = pause_flags_.find(id);
    if (job.state() != v1::PAUSED && flag != pause_flags_.end()) {
      flag->second->store(false);  // a pause asked and not yet taken: withdrawn, its wait ended
      work_cv_.SignalAll();
    }
  }
  if (IsTerminal(static_cast<JobState>(job.state()))) return AlreadyEnded(job);
  if (job.state() != v1::PAUSED) return WithLiveFields(job);
  RETURN_IF_ERROR(RoomForAnotherJob(tenant, /*resuming=*/true));
  QueuedJob entry = QueueEntry(job);
  absl::StatusOr<v1::Job> moved;
  {
    // The record and the queue in one section, so that a pause finds the job in one or the
    // other, never between them.
    absl::MutexLock lock(&mu_);
    moved = stores_.jobs->Transition(
        tenant.name, id, JobState::kQueued,
        job.steps_completed() > 0
            ? absl::StrCat("resumed by the client; resumes from step ", job.steps_completed())
            : "resumed by the client");
    if (!moved.ok()) return moved.status();
    RequeueLocked(std::move(entry), *moved);
  }
  Notify();
  return WithLiveFields(*moved);
}

std::vector<DeviceInfo> JobManager::Devices() const {
  std::vector<DeviceInfo> out;
  for (const auto& w : workers_) {
    DeviceInfo d;
    d.name = w->name;
    d.description = w->description;
    d.memory_budget = w->budget;
    d.inference_memory_bytes = w->inference_bytes;
    if (w->pool) {
      d.base_model_bytes = w->pool->ResidentBytes();
      d.base_models_loaded = w->pool->LoadedCount();
    }
    d.memory_reserved = d.base_model_bytes + w->jobs_bytes.load();
    {
      absl::MutexLock lock(&w->usage_mu);
      d.usage = w->usage;
    }
    d.jobs_running = w->jobs_running.load();
    d.lost = w->lost.load();
    if (d.lost) {
      absl::MutexLock lock(&w->usage_mu);
      d.lost_reason = w->lost_reason;
    }
    out.push_back(d);
  }
  return out;
}

void JobManager::AdmitLocked(Worker* w, const std::vector<std::unique_ptr<ActiveJob>>& active,
                             std::vector<QueuedJob>* admitted,
                             std::vector<std::shared_ptr<PooledModel>>* evicted) {
  std::set<std::string> models_admitted;  // ModelPool::Key of the admitted jobs' base models
  // One ordering per call: admitting a job raises its tenant's share exactly as QueueOrder
  // counts the jobs placed ahead, so walking this order matches recomputing it each time. A job
  // left to an idle device does not change that: the idle device, walking the same order, takes
  // it when it looks (IdleDeviceFitsBetter).
  const std::vector<size_t> order = QueueOrder(queue_, running_by_tenant_);
  const absl::Time now = absl::Now();
  std::set<size_t> taken;
  for (size_t next : order) {
    const int resident = static_cast<int>(active.size() + admitted->size());
    if (resident >= options_.max_jobs_per_device) break;
    const QueuedJob& q = queue_[next];
    // Its start failed on the store: it waits out a pause, and the jobs behind it may start
    // meanwhile (a store that fails for every job fails theirs too).
    if (q.not_before > now) continue;
    bool loaded = false;
    for (const auto& a : active) loaded = loaded || a->entry.model_key == q.model_key;
    loaded = loaded || models_admitted.count(q.model_key) || w->pool->IsLoaded(q.model_key);
    int64_t pending = 0;
    for (const QueuedJob& p : *admitted) pending += p.job_bytes;
    for (const std::string& m : models_admitted) {
      if (!w->pool->IsLoaded(m)) {
        for (const QueuedJob& p : *admitted) {
          if (p.model_key == m) {
            pending += p.model_bytes;
            break;
          }
        }
      }
    }
    if (q.job_bytes + q.model_bytes > MaxDeviceBudget()) {
      // It can never fit (the devices changed since it was queued): StartJob fails it, so
      // that it does not hold up the jobs behind it.
      admitted->push_back(q);
      ++running_by_tenant_[q.tenant];
      ++w->resident;
      taken.insert(next);
      continue;
    }
    // Not an overtaking: that device takes it when it looks, at the latest when its idle
    // worker's wait ends.
    if (IdleDeviceFitsBetter(w, resident, loaded, q)) continue;
    // Never here (a smaller budget: the share of generation and evaluation), so not an
    // overtaking either: it waits for a device it fits.
    if (q.job_bytes + q.model_bytes > w->budget) continue;
    const int64_t needed = q.job_bytes + (loaded ? 0 : q.model_bytes);
    int64_t available = w->budget - w->pool->ResidentBytes() - w->jobs_bytes.load() - pending;
    if (needed > available) {
      // Unused base models (other than those of this job and of the jobs here) make room;
      // otherwise the job waits for this device or another (jobs never overtake each other, so
      // a large job is not starved by small ones).
      std::set<std::string> keep = models_admitted;
      keep.insert(q.model_key);
      for (const auto& a : active) keep.insert(a->entry.model_key);
      if (needed > available + w->pool->UnusedBytes(keep)) break;
      available += w->pool->EvictUnused(keep, evicted);
      if (needed > available) break;
    }
    models_admitted.insert(q.model_key);
    admitted->push_back(q);
    ++running_by_tenant_[q.tenant];
    ++w->resident;
    taken.insert(next);
  }
  // Erase from the back so that the indices of the rest stay valid.
  for (auto it = taken.rbegin(); it != taken.rend(); ++it) {
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));
  }
}

void JobManager::WorkerLoop(Worker* w) {
#ifdef _OPENMP
  omp_set_num_threads(w->threads);  // this thread's parallel regions
#endif
  std::vector<std::unique_ptr<ActiveJob>> active;
  while (true) {
    std::vector<QueuedJob> admitted;
    bool stopping = false;
    {
      std::vector<std::shared_ptr<PooledModel>> evicted;  // released after the lock
      absl::MutexLock lock(&mu_);
      while (!stopping_ && active.empty() && queue_.empty()) {
        work_cv_.WaitWithTimeout(&mu_, absl::Seconds(1));
      }
      stopping = stopping_;
      if (!stopping) AdmitLocked(w, active, &admitted, &evicted);
    }
    if (stopping) break;
    for (const QueuedJob& q : admitted) {
      w->jobs_bytes += q.job_bytes;
      Started started;
      if (stop_requested_) {
        // Stopping: the running jobs' checkpoints come first (a start can take long, loading a
        // model). The job stays QUEUED in the store and starts after the restart, unless a
        // cancel waits for it (StartJob would have honoured it).
        if (CancelAsked(q.id)) {
          (void)EndCancelled(q.tenant, q.id, "cancelled by the client while the daemon stopped");
        } else if (PauseAdmitted(w, q)) {
          w->jobs_bytes -= q.job_bytes;  // released by PauseAdmitted, its quota and flags too
          continue;
        }
      } else if (w->lost_cause.ok()) {
        started = StartJob(w, q);
      } else {
        RequeueFromLostDevice(q, w->lost_cause);  // not started on a lost device
      }
      if (started.job) {
        ++w->jobs_running;
        active.push_back(std::move(started.job));
      } else {
        w->jobs_bytes -= q.job_bytes;
        // Not started. A job that met a lost device went through RequeueFromLostDevice, and one
        // queued again through StartLater (which released its running count already): each kept
        // or released its flags itself (another worker may already run it); any other (failed,
        // cancelled, vanished) is released here.
        if (!started.count_released) ReleaseQuota(w, q.tenant);
        if (w->lost_cause.ok() && !started.queued_again) Release(q.id);
      }
    }
    if (!w->lost_cause.ok()) {
      LoseDevice(w, active, w->lost_cause);
      break;
    }
    w->PublishUsage();
    if (active.empty()) {
      // Nothing fits yet (or every admitted job failed to start): wait for a change.
      absl::MutexLock lock(&mu_);
      if (!stopping_) work_cv_.WaitWithTimeout(&mu_, absl::Milliseconds(200));
      continue;
    }
    bool worked = false;  // a step, or a try to store an adapter, this round
    for (auto it = active.begin(); it != active.end();) {
      if (stop_requested_) break;  // checkpoint at once, not after a round of steps
      StepOutcome outcome = RunStep(w, **it);
      const bool waits = (*it)->waiting_to_end() && outcome == StepOutcome::kContinue;
      worked |= !waits;
      if (outcome == StepOutcome::kContinue && active.size() > 1 && !waits) {
        // Other jobs step before this one again: its optimizer state waits in host memory.
        if (absl::Status paged = (*it)->trainer->PageOutOptimizer(); !paged.ok()) {
          (*it)->failure = paged;
          outcome =
              DeviceLost(w, &(*it)->failure) ? StepOutcome::kDeviceLost : StepOutcome::kFailed;
        }
      }
      if (outcome == StepOutcome::kContinue) {
        ++it;
        continue;
      }
      if (outcome == StepOutcome::kDeviceLost) {
        w->lost_cause = (*it)->failure;
        break;
      }
      if (outcome == StepOutcome::kPaused) {
        const PauseResult paused = Pause(w, **it);
        if (paused == PauseResult::kTrainsOn) {
          ++it;
          continue;
        }
        if (paused == PauseResult::kPaused) {  // released by Pause, its flags too
          it = active.erase(it);
          if (active.empty()) w->PublishUsage();
          continue;
        }
        outcome = StepOutcome::kCancelled;  // a cancel came while it checkpointed
      }
      if (!Finish(w, **it, outcome)) {
        ++it;
        continue;
      }
      Release((*it)->job.id());
      w->jobs_bytes -= (*it)->entry.job_bytes;
      --w->jobs_running;
      it = active.erase(it);
      // A worker left idle waits at the top of the loop and publishes nothing until the next
      // job: said now that the last job's memory is free (with jobs left, the next round does).
      if (active.empty()) w->PublishUsage();
    }
    if (!worked && !active.empty()) {
      // Every job here waits to store its adapter: paced to the first one's next try, not spun;
      // a new job, a stop or a cancel (within 200 ms) ends the wait.
      absl::Time first = absl::InfiniteFuture();
      for (const auto& a : active) first = std::min(first, a->store_again_at);
      absl::MutexLock lock(&mu_);
      if (!stop_requested_) {
        work_cv_.WaitWithTimeout(
            &mu_, std::clamp(first - absl::Now(), absl::ZeroDuration(), absl::Milliseconds(200)));
      }
    }
    if (!w->lost_cause.ok()) {
      LoseDevice(w, active, w->lost_cause);
      break;
    }
  }
  // Shutdown: each running job keeps its progress in a checkpoint and goes back to QUEUED.
  for (auto& a : active) {
    // A stored adapter is recorded, and a cancel asked before the stop honoured, if the store
    // takes it now; else the job keeps a checkpoint like the others (its adapter is not stored
    // twice: the next start finds it).
    const bool ended =
        (a->stored_adapter && Finish(w, *a, StepOutcome::kSucceeded, /*may_wait=*/false)) ||
        (!a->stored_adapter && a->cancel->load() &&
         Finish(w, *a, StepOutcome::kCancelled, /*may_wait=*/false));
    if (ended) {
      Release(a->job.id());
      continue;
    }
    // A pause asked before the stop stays after it (not of a job whose adapter is stored: only
    // its SUCCEEDED record is left, which the next start writes).
    if (!a->stored_adapter && a->pause->load() && Pause(w, *a) == PauseResult::kPaused) continue;
    ReleaseQuotaOf(w, *a);
    absl::Status saved = SaveCheckpoint(*a);
    const int64_t step = a->trainer->step();
    auto moved = stores_.jobs->Transition(
        a->job.tenant(), a->job.id(), JobState::kQueued,
        saved.ok() ? absl::StrCat("the daemon is shutting down; resumes from step ", step)
                   : absl::StrCat("the daemon is shutting down; the checkpoint failed (",
                                  saved.message(), "); resumes from the previous one"),
        [&](v1::Job& j) {
          j.clear_device();
          if (saved.ok()) j.set_steps_completed(step);
        });
    if (!moved.ok()) {
      std::fprintf(stderr, "qlorad: job %s: %s\n", a->job.id().c_str(),
                   std::string(moved.status().message()).c_str());
    }
    Release(a->job.id());
  }
  active.clear();
  Notify();
}

void JobManager::LoseDevice(Worker* w, std::vector<std::unique_ptr<ActiveJob>>& active,
                            const absl::Status& why) {
  std::fprintf(stderr, "qlorad: %s is lost; its %zu jobs go back to the queue: %s\n",
               w->name.c_str(), active.size(), std::string(why.message()).c_str());
  for (auto& a : active) {
    // Back in the queue before its running count goes, so that the tenant's limit never misses
    // it in between.
    RequeueFromLostDevice(a->entry, why, a->stored_adapter.has_value());
    ReleaseQuotaOf(w, *a);
    w->jobs_bytes -= a->entry.job_bytes;
    --w->jobs_running;
    ForgetJobSeries(a->job.id());  // back when the job runs again
  }
  active.clear();  // the trainers' device memory, as far as a lost device frees anything
  {
    absl::MutexLock lock(&w->usage_mu);
    w->lost_reason = std::string(why.message());
  }
  absl::MutexLock lock(&mu_);
  w->lost = true;        // last: whoever sees it sees the jobs back in the queue
  work_cv_.SignalAll();  // a job left to this device while it was leaving goes elsewhere now
}

void JobManager::RequeueFromLostDevice(const QueuedJob& entry, const absl::Status& why,
                                       bool adapter_stored) {
  auto job = stores_.jobs->Get(entry.tenant, entry.id);
  if (!job.ok()) return Release(entry.id);
  if (!adapter_stored &&
      CancelAsked(
          entry.id)) {  // a cancel waits for this job: honoured, not deferred to another device
    (void)EndCancelled(entry.tenant, entry.id,
                       absl::StrCat("cancelled by the client (", why.message(), ")"));
    return Release(entry.id);
  }
  if (job->state() == v1::RUNNING) {
    auto moved = stores_.jobs->Transition(
        entry.tenant, entry.id, JobState::kQueued,
        absl::StrCat(why.message(), "; the job resumes from its last checkpoint on another device"),
        [](v1::Job& j) { j.clear_device(); });
    if (!moved.ok()) {  // RUNNING in the store until a restart requeues it; a cancel ends it
      std::fprintf(stderr, "qlorad: job %s: %s\n", entry.id.c_str(),
                   std::string(moved.status().message()).c_str());
      return Release(entry.id);
    }
  } else if (job->state() != v1::QUEUED) {
    return Release(entry.id);  // it ended meanwhile (a cancel)
  }
  {
    absl::MutexLock lock(&mu_);
    live_.erase(entry.id);
    queue_.push_back(entry);  // its old arrival: its old place in the queue
    if (cancel_flags_.count(entry.id) == 0) {
      cancel_flags_[entry.id] = std::make_shared<std::atomic<bool>>(false);
    }
    work_cv_.SignalAll();
  }
  Notify();
}

void JobManager::ReleaseQuota(Worker* w, const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  ReleaseQuotaLocked(w, tenant);
}

void JobManager::ReleaseQuotaOf(Worker* w, ActiveJob& a) {
  if (a.quota_released) return;
  a.quota_released = true;
  ReleaseQuota(w, a.job.tenant());
}

bool JobManager::WaitToEnd(ActiveJob& a, const absl::Status& why, const std::string& what) {
  ++a.store_tries;
  if (absl::IsInternal(why)) ++a.store_internal_failures;
  const absl::Duration pause = PauseAfter(a.store_tries);
  a.store_again_at = absl::Now() + pause;
  std::fprintf(stderr, "qlorad: job %s: %s cannot be stored yet (try %d: %s); next try in %s\n",
               a.job.id().c_str(), what.c_str(), a.store_tries, std::string(why.message()).c_str(),
               absl::FormatDuration(pause).c_str());
  if (a.store_tries == 1) {  // said once, where the client sees it (if the store takes it)
    v1::JobEvent warning;
    warning.set_warning(absl::StrCat(what, " cannot be stored yet (", why.message(),
                                     "); it is tried again until it is"));
    (void)stores_.jobs->Record(a.job.tenant(), a.job.id(), {}, warning);
    Notify();
  }
  return false;
}

void JobManager::ReleaseQuotaLocked(Worker* w, const std::string& tenant) {
  if (--running_by_tenant_[tenant] <= 0) running_by_tenant_.erase(tenant);
  --w->resident;
}

// Placement among devices: a job runs faster on a device of its own than taking turns, and
// starts sooner where its base model is already loaded. Only an idle device is preferred
// because only of an idle device is it sure that it admits the job at its next look (nothing of
// its budget is reserved, every model it holds is unused, so evictable): a device passed over
// for one that then refused would leave the job waiting on neither.
bool JobManager::IdleDeviceFitsBetter(const Worker* w, int resident, bool loaded,
                                      const QueuedJob& q) const {
  for (const auto& other : workers_) {
    if (other.get() == w || other->lost || other->resident > 0) continue;
    if (q.job_bytes + q.model_bytes > other->budget) continue;
    if (resident > 0 || (!loaded && other->pool->IsLoaded(q.model_key))) return true;
  }
  return false;
}

bool JobManager::CancelAsked(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto flag = cancel_flags_.find(id);
  return flag != cancel_flags_.end() && flag->second->load();
}

bool JobManager::PauseAdmitted(Worker* w, const QueuedJob& q) {
  absl::MutexLock lock(&mu_);  // the record, the quota and the flags in one section, as Pause
  auto flag = pause_flags_.find(q.id);
  if (flag == pause_flags_.end() || !flag->second->load()) return false;
  auto moved = stores_.jobs->Transition(q.tenant, q.id, JobState::kPaused,
                                        "paused by the client while the daemon stopped");
  if (!moved.ok()) return false;
  ReleaseQuotaLocked(w, q.tenant);
  ReleaseLocked(q.id);
  return true;
}

void JobManager::Release(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ReleaseLocked(id);
}

void JobManager::ReleaseLocked(const std::string& id) {
  cancel_flags_.erase(id);
  pause_flags_.erase(id);
  live_.erase(id);
  work_cv_.SignalAll();
}

absl::StatusOr<std::optional<v1::Adapter>> JobManager::StoredAdapterOf(const std::string& tenant,
                                                                       const std::string& id) {
  ASSIGN_OR_RETURN(std::vector<v1::Adapter> adapters, stores_.adapters->List(tenant));
  for (v1::Adapter& ad : adapters) {
    if (ad.job_id() == id) return std::optional<v1::Adapter>(std::move(ad));
  }
  return std::optional<v1::Adapter>();
}

absl::StatusOr<v1::Job> JobManager::SucceedWithStoredAdapter(const std::string& tenant,
                                                             const std::string& id,
                                                             const v1::Adapter& adapter,
                                                             const std::string& reason) {
  // Through QUEUED and RUNNING as the state machine has it, in one write: a refused write
  // leaves the job as it was, to be tried again.
  auto succeeded = stores_.jobs->TransitionAlong(
      tenant, id, {JobState::kQueued, JobState::kRunning, JobState::kSucceeded}, reason,
      [&](v1::Job& j) {
        j.set_adapter_id(adapter.id());
        j.set_eta_seconds(0);
      });
  if (succeeded.ok()) {
    (void)stores_.checkpoints->Delete(tenant, id);
    JobEnded(id, "succeeded");
  } else {
    std::fprintf(stderr, "qlorad: job %s: %s\n", id.c_str(),
                 std::string(succeeded.status().message()).c_str());
  }
  Notify();
  return succeeded;
}

absl::StatusOr<v1::Job> JobManager::EndCancelled(const std::string& tenant, const std::string& id,
                                                 const std::string& reason) {
  // A cancel that finds the job's adapter stored comes too late: the job has succeeded, only its
  // record not yet saying so (its success could not be stored before a stop or a lost device,
  // and it waits in the queue, or in the store, for its next start to record it). It ends
  // SUCCEEDED with that adapter, as that start would end it, not CANCELLED beside an adapter
  // whose job says it never finished. Where the adapters cannot be read (a damaged record), the
  // cancel stands: refusing every cancel of the tenant's would be worse than the rare orphan.
  absl::StatusOr<std::optional<v1::Adapter>> found = StoredAdapterOf(tenant, id);
  if (!found.ok()) {
    std::fprintf(stderr, "qlorad: job %s: its adapter, if any, cannot be looked up: %s\n",
                 id.c_str(), std::string(found.status().message()).c_str());
  }
  if (found.ok() && found->has_value()) {
    return SucceedWithStoredAdapter(tenant, id, **found,
                                    "the cancel came after its adapter was stored");
  }
  auto moved = stores_.jobs->Transition(tenant, id, JobState::kCancelled, reason,
                                        [](v1::Job& j) { j.set_eta_seconds(0); });
  if (!moved.ok()) {
    std::fprintf(stderr, "qlorad: job %s: %s\n", id.c_str(),
                 std::string(moved.status().message()).c_str());
  } else {
    // A job resumed after a restart, or sent back from a lost device, has a checkpoint.
    (void)stores_.checkpoints->Delete(tenant, id);
    JobEnded(id, "cancelled");
  }
  Notify();
  return moved;
}

absl::Status JobManager::FailJob(const std::string& tenant, const std::string& id,
                                 const absl::Status& status, const std::string& parameter,
                                 bool user_error) {
  v1::JobError error;
  error.set_code(absl::StatusCodeToString(status.code()));
  error.set_message(std::string(status.message()));
  error.set_parameter(parameter);
  error.set_user_error(user_error);
  v1::JobEvent event;
  *event.mutable_error() = error;
  (void)stores_.jobs->Record(tenant, id, {}, event);
  auto moved =
      stores_.jobs->Transition(tenant, id, JobState::kFailed,
                               absl::StrCat(error.code(), ": ", error.message()), [&](v1::Job& j) {
                                 *j.mutable_error() = error;
                                 j.set_eta_seconds(0);
                               });
  if (!moved.ok()) {
    std::fprintf(stderr, "qlorad: job %s: cannot record its failure: %s\n", id.c_str(),
                 std::string(moved.status().message()).c_str());
  }
  // A job still unfinished in the store (its failure not written) keeps its checkpoint, so
  // that a restart resumes it rather than training it again from the start.
  const auto ended_anyway = [&] {
    auto stored = stores_.jobs->Get(tenant, id);
    return stored.ok() && IsTerminal(static_cast<JobState>(stored->state()));
  };
  if (moved.ok() || ended_anyway()) (void)stores_.checkpoints->Delete(tenant, id);
  // Counted as failed only once recorded: a job whose failure is not stored runs again.
  if (moved.ok()) {
    JobEnded(id, "failed");
  } else {
    ForgetJobSeries(id);
  }
  Notify();
  return moved.status();
}

void JobManager::JobEnded(const std::string& id, const char* result) {
  ForgetJobSeries(id);
  if (stores_.metrics != nullptr) stores_.metrics->Add(metrics::kJobsFinished, {result}, 1);
}

void JobManager::ForgetJobSeries(const std::string& id) {
  if (stores_.metrics == nullptr) return;
  stores_.metrics->Remove(metrics::kJobLoss, {id});
  stores_.metrics->Remove(metrics::kJobProgress, {id});
}

void JobManager::CollectMetrics(metrics::Registry& r) {
  for (const DeviceInfo& d : Devices()) {
    const DeviceMemoryUsage& u = d.usage;
    const int64_t engine =
        u.base_weights + u.adapters + u.optimizer_device + u.activations + u.workspace;
    // A GPU reports the card's own figures; a CPU device its budget and the engine's use.
    const int64_t total = u.device_total > 0 ? u.device_total : d.memory_budget;
    const int64_t used = u.device_total > 0 ? u.device_total - u.device_free : engine;
    r.Set(metrics::kDeviceMemory, {d.name, "total"}, static_cast<double>(total));
    r.Set(metrics::kDeviceMemory, {d.name, "used"}, static_cast<double>(used));
    r.Set(metrics::kDeviceMemory, {d.name, "free"},
          static_cast<double>(std::max<int64_t>(0, total - used)));
    for (const auto& [category, bytes] : MemoryCategories(u)) {
      r.Set(metrics::kEngineMemory, {d.name, category}, static_cast<double>(bytes));
    }
    if (u.peak_held > 0) {
      r.Set(metrics::kEngineMemoryPeak, {d.name}, static_cast<double>(u.peak_held));
    }
    r.Set(metrics::kBaseModelsLoaded, {d.name}, d.base_models_loaded);
    r.Set(metrics::kDeviceUp, {d.name}, d.lost ? 0.0 : 1.0);
    r.Set(metrics::kDeviceAdmission, {d.name, "budget"}, static_cast<double>(d.memory_budget));
    r.Set(metrics::kDeviceAdmission, {d.name, "reserved"}, static_cast<double>(d.memory_reserved));
    if (d.inference_memory_bytes > 0) {
      r.Set(metrics::kDeviceAdmission, {d.name, "inference"},
            static_cast<double>(d.inference_memory_bytes));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    r.Set(metrics::kQueueDepth, {}, static_cast<double>(queue_.size()));
  }
  auto counts = stores_.jobs->CountByState();
  if (counts.ok()) {
    for (int s = v1::VALIDATING; s <= v1::PAUSED; ++s) {
      const auto state = static_cast<v1::JobState>(s);
      auto it = counts->find(state);
      r.Set(metrics::kJobs, {v1::JobState_Name(state)},
            it == counts->end() ? 0.0 : static_cast<double>(it->second));
    }
  }
}

absl::StatusOr<JobManager::JobData> JobManager::ReadJobData(
    const v1::Job& job, const Tokenizer& tokenizer, std::string* field,
    const std::function<bool()>& still_wanted, bool count_only) const {
  const v1::Hyperparameters& r = job.resolved();
  auto wanted = [&] { return !still_wanted || still_wanted(); };
  // The bounds came after some jobs started: one that trained already keeps its data (failing it
  // now would throw its checkpoint away).
  const bool started_before = job.steps_completed() > 0;
  JobData data;
  const std::string ids[2] = {job.training_dataset(), job.validation_dataset()};
  const char* fields[2] = {"training_dataset", "validation_dataset"};
  for (int k = 0; k < 2; ++k) {
    if (ids[k].empty()) continue;
    if (!wanted()) return absl::CancelledError("no longer wanted");
    *field = fields[k];
    auto content = stores_.datasets->Content(job.tenant(), ids[k]);
    if (!content.ok()) return content.status();
    auto examples = TokenizeJsonl(*content, tokenizer, ids[k]);
    if (!examples.ok()) return Field(fields[k], examples.status());
    if (!wanted()) return absl::CancelledError("no longer wanted");
    if (count_only) {
      auto counted = CountRows(*examples, RowOptionsFrom(r), ids[k]);
      if (!counted.ok()) return Field(fields[k], counted.status());
      data.row_count[k] = *counted;
    } else {
      auto built = BuildRows(*examples, RowOptionsFrom(r), ids[k]);
      if (!built.ok()) return Field(fields[k], built.status());
      data.row_count[k] = static_cast<int64_t>(built->size());
      data.rows[k] = std::move(*built);
    }
    const int64_t tokens = data.row_count[k] * r.seq_len();
    if (k == 1 && tokens > options_.limits.max_validation_tokens && !started_before) {
      return absl::InvalidArgumentError(absl::StrCat(
          "validation_dataset: ", data.row_count[k], " rows of ", r.seq_len(),
          " tokens; a validation set holds at most ", options_.limits.max_validation_tokens,
          " (it is evaluated whole, while the device's other jobs wait): use a sample"));
    }
  }
  // Epochs bound the steps only through the data's size, known from here: max_steps was bounded
  // at creation, epochs only to 1000 (2M rows one at a time for 1000 epochs are 2e9 steps).
  const int64_t steps = Trainer::TotalSteps(data.row_count[0], TrainerOptionsFrom(r));
  if (steps > options_.limits.max_total_steps && !started_before) {
    *field = "hyperparameters.epochs";
    return absl::InvalidArgumentError(
        absl::StrCat("hyperparameters.epochs: ", r.epochs(), " epochs of batch ", r.batch_size(),
                     " x grad_accum ", r.grad_accum(), " make ", steps,
                     " steps on this data; at most ", options_.limits.max_total_steps,
                     " are allowed: give fewer epochs, a larger batch or max_steps"));
  }
  return data;
}

void JobManager::CheckLoop() {
  // Tokenizers by ModelPool::Key, a few: read from the model's files alone, no weights.
  std::map<std::string, std::shared_ptr<const Tokenizer>> tokenizers;
  while (true) {
    std::string tenant, id;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](JobManager* m)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return m->stopping_ || !m->to_check_.empty(); },
          this));
      if (stopping_) return;
      std::tie(tenant, id) = to_check_.front();
      to_check_.pop_front();
      // Only a job still waiting: one taken by a worker is checked by its start.
      if (FindQueued(id) == queue_.end()) continue;
    }
    // Whatever the check cannot read (the store, the model's files) is left to the start.
    auto job = stores_.jobs->Get(tenant, id);
    if (!job.ok() || job->state() != v1::QUEUED) continue;
    auto model = stores_.models->Get(job->model());
    if (!model.ok()) continue;
    const std::string key = ModelPool::Key(*model);
    if (tokenizers.count(key) == 0) {
      auto tokenizer = OpenModelTokenizer(model->source_path());
      if (!tokenizer.ok()) continue;
      if (tokenizers.size() >= 4) tokenizers.clear();
      tokenizers[key] = std::move(*tokenizer);
    }
    std::string field;
    // Given up once a worker takes the job (its start reads the data itself) or the daemon stops.
    // Counted, not built: the rows would double the memory the job's start takes.
    auto data = ReadJobData(
        *job, *tokenizers[key], &field,
        [&] {
          absl::MutexLock lock(&mu_);
          return !stopping_ && FindQueued(id) != queue_.end();
        },
        /*count_only=*/true);
    if (data.ok() || !absl::IsInvalidArgument(data.status())) continue;
    // Data the job cannot train on: it fails now, not when a device takes it (hours later on a
    // busy node), if it still waits in the queue.
    absl::MutexLock lock(&mu_);
    auto queued = FindQueued(id);
    if (queued == queue_.end() || stopping_) continue;
    // A cancel whose record could not be written waits for the job's start, which honours it.
    if (auto flag = cancel_flags_.find(id); flag != cancel_flags_.end() && flag->second->load()) {
      continue;
    }
    if (FailJob(tenant, id, data.status(), field, true).ok()) {
      queue_.erase(queued);
      ReleaseLocked(id);
    }
  }
}

JobManager::Started JobManager::StartJob(Worker* w, const QueuedJob& q) {
  auto a = std::make_unique<ActiveJob>();
  a->entry = q;
  {
    absl::MutexLock lock(&mu_);
    auto flag = cancel_flags_.find(q.id);
    a->cancel =
        flag != cancel_flags_.end() ? flag->second : std::make_shared<std::atomic<bool>>(false);
    cancel_flags_[q.id] = a->cancel;
    auto& pause = pause_flags_[q.id];  // set already where a pause came while it started
    if (!pause) pause = std::make_shared<std::atomic<bool>>(false);
    a->pause = pause;
  }
  // A start that ends the job releases its running count before the terminal write (as Finish
  // does), so that a client told it ended can create the next one at once.
  constexpr bool kCountReleased = true;
  auto fail = [&](const absl::Status& s, const std::string& parameter, bool user) -> Started {
    // A setup error on a device that is now lost is the device's: the job waits for another.
    if (DeviceLost(w, &w->lost_cause)) {  // the worker loses the device once its starts are done
      RequeueFromLostDevice(q, w->lost_cause);
      return {};
    }
    ReleaseQuota(w, q.tenant);
    const absl::Status recorded = FailJob(q.tenant, q.id, s, parameter, user);
    // Not recorded (the store failing too): the job stays QUEUED in the store, so it stays in
    // the queue, tried again, rather than waiting in no queue for a restart. Unless it ended
    // meanwhile (a cancel): FAILED_PRECONDITION from the state machine.
    if (!recorded.ok() && !absl::IsFailedPrecondition(recorded) && !absl::IsNotFound(recorded)) {
      return StartLater(w, q, recorded, kCountReleased);
    }
    return {nullptr, /*queued_again=*/false, kCountReleased};
  };
  // A store error: tried again where it may pass; an INTERNAL one past its tries fails the job
  // as the system's, never as the user's input (which the error says nothing about).
  auto store_failed = [&](const absl::Status& s) -> std::optional<Started> {
    if (StoreMayMend(s, q)) return StartLater(w, q, s);
    if (absl::IsInternal(s)) return fail(s, "", false);
    return std::nullopt;
  };
  auto job = stores_.jobs->Get(q.tenant, q.id);
  if (!job.ok()) {
    if (auto handled = store_failed(job.status())) return std::move(*handled);
    std::fprintf(stderr, "qlorad: queued job %s vanished: %s\n", q.id.c_str(),
                 std::string(job.status().message()).c_str());
    return {};
  }
  a->job = *job;
  if (a->job.state() != v1::QUEUED) return {};  // ended meanwhile (a cancel)
  // A crash between storing the adapter and recording success leaves the adapter (so may a
  // stop or a lost device while that record waited): the job finishes with it. Not knowing
  // whether it did, the job does not train again (a second adapter).
  auto stored = StoredAdapterOf(q.tenant, q.id);
  const bool adapter_stored = stored.ok() && stored->has_value();
  // Cancelled between admission and now: no setup. (With its adapter stored, too late: below.)
  if (a->cancel->load() && !adapter_stored) {
    ReleaseQuota(w, q.tenant);
    auto ended = EndCancelled(q.tenant, q.id, "cancelled by the client before it started");
    // Not recorded: its flag stays set and the next try ends it (unless it ended meanwhile).
    if (!ended.ok() && !absl::IsFailedPrecondition(ended.status()) &&
        !absl::IsNotFound(ended.status())) {
      return StartLater(w, q, ended.status(), kCountReleased);
    }
    return {nullptr, /*queued_again=*/false, kCountReleased};
  }
  if (!stored.ok()) {
    if (auto handled = store_failed(stored.status())) return std::move(*handled);
    return fail(stored.status(), "", false);
  }
  if (adapter_stored) {
    ReleaseQuota(w, q.tenant);
    auto succeeded = SucceedWithStoredAdapter(q.tenant, q.id, **stored,
                                              "its adapter was stored before a restart");
    // One write: refused, the job is still QUEUED here, and tried again.
    if (!succeeded.ok() && StoreMayMend(succeeded.status(), q)) {
      return StartLater(w, q, succeeded.status(), kCountReleased);
    }
    return {nullptr, /*queued_again=*/false, kCountReleased};
  }
  if (q.job_bytes + q.model_bytes > MaxDeviceBudget()) {
    // The user's to fix only where no device of this node could ever hold it; where a lost
    // device could, the node's (a restart brings the device back).
    const bool user = q.job_bytes + q.model_bytes > MaxDeviceBudget(/*include_lost=*/true);
    return fail(
        absl::ResourceExhaustedError(absl::StrCat(
            "the job needs about ", q.job_bytes + q.model_bytes, " bytes and the largest device ",
            user ? "" : "left up ", "now offers ", MaxDeviceBudget(),
            user ? "; lower batch_size or seq_len"
                 : " (a larger one was lost: restart qlorad, or lower batch_size)")),
        user ? "hyperparameters.batch_size" : "", user);
  }
  auto model = stores_.models->Get(q.model);
  if (!model.ok()) {
    if (auto handled = store_failed(model.status())) return std::move(*handled);
    return fail(absl::NotFoundError(absl::StrCat("base model '", q.model, "' is gone")), "model",
                true);
  }
  auto pooled = w->pool->Acquire(*model);
  if (!pooled.ok()) return fail(pooled.status(), "model", false);
  a->model = *pooled;
  std::string data_field;
  auto data = ReadJobData(a->job, *a->model->tokenizer, &data_field);
  if (!data.ok()) {
    // A dataset the store could not read: tried again where that may pass; gone or damaged,
    // the user's (it names the field).
    if (!absl::IsInvalidArgument(data.status())) {
      if (auto handled = store_failed(data.status())) return std::move(*handled);
      return fail(Field(data_field, data.status()), data_field, true);
    }
    return fail(data.status(), data_field, true);
  }
  const v1::Hyperparameters& r = a->job.resolved();
  TrainerOptions to = TrainerOptionsFrom(r);
  // On a GPU the AdamW moments are pageable (as QLoRA does it): they wait in host memory while
  // other jobs step on the card, so jobs waiting for their turn hold less of it.
  to.paged_optimizer = w->name.rfind("cuda:", 0) == 0;
  auto trainer = Trainer::Create(a->model->model.get(), std::move(data->rows[0]),
                                 std::move(data->rows[1]), to);
  if (!trainer.ok()) {
    if (absl::IsResourceExhausted(trainer.status())) {
      return fail(OutOfMemoryOn(w->name, trainer.status()), "", false);
    }
    // The options were checked at creation: what the trainer still refuses is the job's
    // input (INVALID_ARGUMENT); anything else is the system's, not the user's to fix.
    if (absl::IsInvalidArgument(trainer.status())) {
      return fail(trainer.status(), "hyperparameters", true);
    }
    return fail(trainer.status(), "", false);
  }
  // A stop, a cancel or a pause ends a long step between its micro-batches, unapplied.
  (*trainer)->set_interrupt([this, cancel = a->cancel, pause = a->pause] {
    return stop_requested_.load() || cancel->load() || pause->load();
  });
  a->trainer = std::move(*trainer);
  const std::string dir = (fs::path(options_.scratch_dir) / (q.id + "-resume")).string();
  // The restored files go whichever way the start ends.
  const absl::Cleanup remove_resume_files = [&dir] {
    std::error_code ec;
    fs::remove_all(dir, ec);
  };
  auto restored = stores_.checkpoints->Restore(q.tenant, q.id, dir);
  std::string reason = "started";
  if (restored.ok() && *restored) {
    absl::Status loaded = a->trainer->LoadCheckpoint(dir);
    if (!loaded.ok()) return fail(loaded, "", false);
    auto tokens = ReadFileToString((fs::path(dir) / kTokensFile).string());
    if (tokens.ok()) (void)absl::SimpleAtoi(*tokens, &a->tokens);
    // The last loss recorded: the adapter's final loss where no step is left to run (a job
    // stopped while its adapter waited to be stored).
    a->last_loss = a->job.last_loss();
    reason = absl::StrCat("resumed from the checkpoint at step ", a->trainer->step());
  } else if (!restored.ok()) {
    if (auto handled = store_failed(restored.status())) return std::move(*handled);
    return fail(restored.status(), "", false);
  }
  const int64_t total = a->trainer->total_steps();
  const int64_t step = a->trainer->step();
  auto running =
      stores_.jobs->Transition(q.tenant, q.id, JobState::kRunning, reason, [&](v1::Job& j) {
        j.set_device(w->name);
        j.set_total_steps(total);
        j.set_steps_completed(step);
        j.set_tokens_trained(a->tokens);
      });
  if (!running.ok()) {
    if (auto handled = store_failed(running.status())) return std::move(*handled);
  }
  if (!running.ok()) {
    std::fprintf(stderr, "qlorad: job %s cannot start: %s\n", q.id.c_str(),
                 std::string(running.status().message()).c_str());
    return {};
  }
  a->job = *running;
  Notify();
  {
    absl::MutexLock lock(&mu_);
    live_[q.id] = Live{step, total, a->tokens, 0.0, 0.0};
  }
  a->last_progress = std::chrono::steady_clock::now();
  // Started: a later trip through the queue (a lost device) starts its tries afresh.
  a->entry.start_failures = a->entry.internal_failures = 0;
  a->entry.not_before = absl::InfinitePast();
  return {std::move(a)};
}

JobManager::Started JobManager::StartLater(Worker* w, const QueuedJob& q, const absl::Status& why,
                                           bool count_released) {
  QueuedJob again = q;
  ++again.start_failures;
  if (absl::IsInternal(why)) ++again.internal_failures;
  const absl::Duration pause = PauseAfter(again.start_failures);
  again.not_before = absl::Now() + pause;
  std::fprintf(stderr, "qlorad: job %s cannot start yet (try %d: %s); next try in %s\n",
               q.id.c_str(), again.start_failures, std::string(why.message()).c_str(),
               absl::FormatDuration(pause).c_str());
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(again));  // its old arrival: its old place in the queue
    // Its running count goes in the same step, so that the tenant's limit never counts it twice
    // (queued and running) nor misses it.
    if (!count_released) ReleaseQuotaLocked(w, q.tenant);
    work_cv_.SignalAll();
  }
  Notify();
  return {nullptr, /*queued_again=*/true, /*count_released=*/true};
}

absl::Status JobManager::SaveCheckpoint(ActiveJob& a) {
  const std::string dir = (fs::path(options_.scratch_dir) / (a.job.id() + "-checkpoint")).string();
  std::error_code ec;
  fs::remove_all(dir, ec);  // the daemon's own: a leftover of a failed removal goes
  RETURN_IF_ERROR(a.trainer->SaveCheckpoint(dir));
  {
    std::ofstream out(fs::path(dir) / kTokensFile, std::ios::trunc);
    out << a.tokens;
  }
  absl::Status s = stores_.checkpoints->Save(a.job.tenant(), a.job.id(), dir);
  fs::remove_all(dir, ec);
  RETURN_IF_ERROR(s);
  v1::JobEvent event;
  event.mutable_checkpoint()->set_step(a.trainer->step());
  const int64_t step = a.trainer->step();
  const int64_t tokens = a.tokens;
  RETURN_IF_ERROR(stores_.jobs
                      ->Record(
                          a.job.tenant(), a.job.id(),
                          [&](v1::Job& j) {
                            j.set_steps_completed(step);
                            j.set_tokens_trained(tokens);
                          },
                          event)
                      .status());
  Notify();
  return absl::OkStatus();
}

JobManager::StepOutcome JobManager::RunStep(Worker* w, ActiveJob& a) {
  // A job whose end is being stored is not paused: the pause is dropped, which ends its
  // PauseJob's wait.
  if ((a.waiting_to_end() || a.stored_adapter) && a.pause->exchange(false)) {
    absl::MutexLock lock(&mu_);
    work_cv_.SignalAll();
  }
  if (a.stored_adapter) {  // only its SUCCEEDED record is left: a cancel comes too late
    return absl::Now() < a.store_again_at ? StepOutcome::kContinue : StepOutcome::kSucceeded;
  }
  // A cancel ends a wait for the adapter's store at once; a wait for the cancel's own record
  // is paced (store_again_at), as a wait for the adapter is.
  if (a.cancel->load()) {
    return a.recording_cancel && absl::Now() < a.store_again_at ? StepOutcome::kContinue
                                                                : StepOutcome::kCancelled;
  }
  if (absl::Now() < a.store_again_at) return StepOutcome::kContinue;  // InfinitePast until a wait
  if (a.trained()) return StepOutcome::kSucceeded;
  if (a.pause->load()) return StepOutcome::kPaused;
  StepReport report;
  bool stepped = false;
  const auto started = std::chrono::steady_clock::now();
  // One report a call: an evaluation an interrupt cut from the last step is done on its own.
  const int64_t until = a.trainer->step() + (a.trainer->evaluation_pending() ? 0 : 1);
  absl::Status s = a.trainer->RunUntil(until, [&](const StepReport& r) {
    report = r;
    stepped = true;
    return true;
  });
  const double step_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  // Interrupted (set_interrupt; the trainer's only ABORTED, read as such even where a pause was
  // withdrawn since): in a step, the trainer is as after its last step; in the evaluation after
  // one, that step stands (reported below) and its evaluation is pending.
  const bool cut = absl::IsAborted(s);
  // Either way a cancel ends the job; a pause pauses it; a pause withdrawn since trains on (the
  // step done again from the start, or the evaluation first).
  const auto after_cut = [&] {
    if (a.cancel->load()) return StepOutcome::kCancelled;
    return a.pause->load() && !stop_requested_.load() ? StepOutcome::kPaused
                                                      : StepOutcome::kContinue;
  };
  if (cut && !stepped) return after_cut();
  if (!s.ok() && !cut) {
    // A failure that left the device lost is the device's, whatever the step reported (an
    // allocation refused by a faulted card reads as out of memory).
    a.failure = s;
    if (DeviceLost(w, &a.failure)) return StepOutcome::kDeviceLost;  // not this job's doing
    if (absl::IsFailedPrecondition(s)) {  // the watchdog: the loss diverged
      a.failure_parameter = "hyperparameters.learning_rate";
      a.failure_is_user = true;
    } else if (absl::IsResourceExhausted(s)) {
      a.failure = OutOfMemoryOn(w->name, s);
    }
    return StepOutcome::kFailed;
  }
  const bool done = !cut && !a.trainer->evaluation_pending() &&
                    (a.trainer->step() >= a.trainer->total_steps() || a.trainer->stopped_early());
  // A repeated report (a step again, with the evaluation cut from it before) is no new step:
  // only its evaluation is recorded.
  const bool new_step = stepped && !report.repeated;
  if (new_step && stores_.metrics != nullptr) {
    metrics::Registry& m = *stores_.metrics;
    m.Add(metrics::kTrainedTokens, {w->name}, static_cast<double>(report.tokens));
    m.Observe(metrics::kStepDuration, {w->name}, step_seconds);
    m.Set(metrics::kJobLoss, {a.job.id()}, report.loss);
    m.Set(metrics::kJobProgress, {a.job.id()},
          report.total_steps > 0 ? static_cast<double>(report.step) / report.total_steps : 0.0);
  }
  if (new_step) {
    a.tokens += report.tokens;
    a.last_loss = report.loss;
    // ETA and speed as the job sees them: from its steps' wall-clock pace on this device (the
    // other jobs' turns, evaluations and checkpoints included), once there is a pace to go by.
    const auto end = std::chrono::steady_clock::now();
    if (a.last_step_end != std::chrono::steady_clock::time_point{}) {
      const double wall = std::chrono::duration<double>(end - a.last_step_end).count();
      a.seconds_per_step =
          std::max(a.seconds_per_step == 0.0 ? wall : 0.9 * a.seconds_per_step + 0.1 * wall, 1e-9);
      report.eta_seconds =
          a.seconds_per_step * static_cast<double>(report.total_steps - report.step);
      report.tokens_per_second = static_cast<double>(report.tokens) / a.seconds_per_step;
    }
    a.last_step_end = end;
    absl::MutexLock lock(&mu_);
    live_[a.job.id()] =
        Live{report.step, report.total_steps, a.tokens, report.loss, report.eta_seconds};
  }
  if (stepped) {
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - a.last_progress).count();
    if (report.step == 1 || done || report.eval_loss ||
        since >= options_.progress_interval_seconds) {
      a.last_progress = now;
      v1::JobEvent event;
      v1::TrainingProgress* p = event.mutable_progress();
      p->set_step(report.step);
      p->set_total_steps(report.total_steps);
      p->set_loss(report.loss);
      p->set_learning_rate(report.learning_rate);
      p->set_grad_norm(report.grad_norm);
      p->set_tokens_per_second(report.tokens_per_second);
      p->set_eta_seconds(report.eta_seconds);
      p->set_epoch(report.epoch);
      const int64_t tokens = a.tokens;
      // The job's record and one event, in one write.
      auto record = [&](const std::function<void(v1::Job&)>& update, const v1::JobEvent& e) {
        return stores_.jobs->Record(a.job.tenant(), a.job.id(), update, e).status();
      };
      absl::Status recorded;
      if (new_step) {
        recorded = record(
            [&](v1::Job& j) {
              j.set_steps_completed(report.step);
              j.set_total_steps(report.total_steps);
              j.set_tokens_trained(tokens);
              j.set_last_loss(report.loss);
              j.set_eta_seconds(report.eta_seconds);
            },
            event);
      }
      if (report.eval_loss) {  // stored on its own: a failed progress record loses no eval
        v1::JobEvent eval;
        eval.mutable_eval()->set_step(report.step);
        eval.mutable_eval()->set_loss(*report.eval_loss);
        const std::optional<double> best = a.trainer->best_eval_loss();
        recorded.Update(record(
            [&](v1::Job& j) {
              if (best) j.set_best_eval_loss(*best);
            },
            eval));
      }
      // A progress record that cannot be stored (a full disk) ends nothing: the job trains on,
      // its next record carries everything, and its checkpoints and end are written as usual.
      if (!recorded.ok() && !a.records_failing) {
        std::fprintf(stderr, "qlorad: job %s: progress is not being stored: %s\n",
                     a.job.id().c_str(), std::string(recorded.message()).c_str());
      } else if (recorded.ok() && a.records_failing) {
        std::fprintf(stderr, "qlorad: job %s: progress is stored again\n", a.job.id().c_str());
      }
      a.records_failing = !recorded.ok();
      Notify();
    }
  }
  if (cut) return after_cut();
  if (done) {
    // The adapter is read here, where a lost device can still send the job elsewhere.
    absl::StatusOr<std::vector<float>> params = a.trainer->ReadParams();
    if (!params.ok()) {
      a.failure = params.status();
      return DeviceLost(w, &a.failure) ? StepOutcome::kDeviceLost : StepOutcome::kFailed;
    }
    a.final_params = *std::move(params);
    return StepOutcome::kSucceeded;
  }
  if (options_.checkpoint_every > 0 && a.trainer->step() % options_.checkpoint_every == 0) {
    absl::Status saved = SaveCheckpoint(a);
    if (!saved.ok() && DeviceLost(w, &a.failure)) return StepOutcome::kDeviceLost;  // moves on
    if (!saved.ok()) {
      v1::JobEvent warning;
      warning.set_warning(
          absl::StrCat("checkpoint at step ", a.trainer->step(), " failed: ", saved.message()));
      (void)stores_.jobs->Record(a.job.tenant(), a.job.id(), {}, warning);
      Notify();
    }
  }
  return StepOutcome::kContinue;
}

bool JobManager::Finish(Worker* w, ActiveJob& a, StepOutcome outcome, bool may_wait) {
  const std::string& tenant = a.job.tenant();
  const std::string& id = a.job.id();
  const int64_t step = a.trainer->step();
  if (outcome == StepOutcome::kFailed) {
    ReleaseQuotaOf(w, a);
    (void)FailJob(tenant, id, a.failure, a.failure_parameter, a.failure_is_user);
    return true;
  }
  if (outcome == StepOutcome::kCancelled) {
    // Given back before the record (and kept so while a refused record waits), so that a client
    // told the job ended can create the next one at once.
    ReleaseQuotaOf(w, a);
    // The state first: a crash in between must not leave a RUNNING job without its checkpoint.
    auto moved = stores_.jobs->Transition(tenant, id, JobState::kCancelled,
                                          absl::StrCat("cancelled by the client after step ", step),
                                          [&](v1::Job& j) {
                                            j.set_steps_completed(step);
                                            j.set_tokens_trained(a.tokens);
                                            j.set_eta_seconds(0);
                                          });
    // Unrecorded, the cancel would be lost: after a restart the job would train to its end.
    if (!moved.ok() && may_wait && StoreMayMend(moved.status(), a.store_internal_failures)) {
      a.recording_cancel = true;
      return WaitToEnd(a, moved.status(), "its cancellation");
    }
    if (!moved.ok()) {
      std::fprintf(stderr, "qlorad: job %s: %s\n", id.c_str(),
                   std::string(moved.status().message()).c_str());
      // A stop: it keeps a checkpoint as the other jobs do (the cancel itself, held in memory,
      // does not outlive the process).
      if (!may_wait) return false;
    } else {
      (void)stores_.checkpoints->Delete(tenant, id);
    }
    JobEnded(id, "cancelled");
    Notify();
    return true;
  }
  if (!a.stored_adapter) {
    absl::StatusOr<v1::Adapter> adapter = StoreAdapter(w, a);
    if (!adapter.ok()) {
      // An error that may pass (a full disk, for the scratch folder or the store) keeps the
      // training: the job waits on its device and tries again (or is cancelled; a stop keeps it
      // in a checkpoint at its last step), counted as running meanwhile. Not the tenant's
      // adapter limit (lowered since the job was accepted): that waits for the user, so the job
      // fails.
      const bool quota = AdapterStore::IsQuotaError(adapter.status());
      if (!quota && may_wait && StoreMayMend(adapter.status(), a.store_internal_failures)) {
        return WaitToEnd(a, adapter.status(), "trained; its adapter");
      }
      ReleaseQuotaOf(w, a);
      (void)FailJob(tenant, id, adapter.status(), "", quota);
      return true;
    }
    a.stored_adapter = *std::move(adapter);
  }
  const int64_t kept = a.trainer->kept_step();
  const std::string kept_best =
      kept == step ? "" : absl::StrCat("; the adapter of step ", kept, " (best eval loss) is kept");
  const std::string reason = a.trainer->stopped_early()
                                 ? absl::StrCat("stopped early at step ", step, kept_best)
                                 : absl::StrCat("finished ", step, " steps", kept_best);
  const std::optional<double> best = a.trainer->best_eval_loss();
  auto moved = stores_.jobs->Transition(tenant, id, JobState::kSucceeded, reason, [&](v1::Job& j) {
    j.set_adapter_id(a.stored_adapter->id());
    j.set_steps_completed(step);
    j.set_tokens_trained(a.tokens);
    j.set_last_loss(a.last_loss);
    j.set_eta_seconds(0);
    if (best) j.set_best_eval_loss(*best);
  });
  // Unrecorded, the job would stay RUNNING with nothing running it, its watchers waiting.
  if (!moved.ok() && may_wait && StoreMayMend(moved.status(), a.store_internal_failures)) {
    return WaitToEnd(a, moved.status(), "its success");
  }
  if (!moved.ok()) {
    std::fprintf(stderr, "qlorad: job %s: %s\n", id.c_str(),
                 std::string(moved.status().message()).c_str());
    if (!may_wait) return false;  // a stop: it keeps its checkpoint, and the next start ends it
  } else {
    (void)stores_.checkpoints->Delete(tenant, id);
  }
  ReleaseQuotaOf(w, a);
  JobEnded(id, "succeeded");
  Notify();
  return true;
}

JobManager::PauseResult JobManager::Pause(Worker* w, ActiveJob& a) {
  const absl::Status saved = SaveCheckpoint(a);
  const int64_t step = a.trainer->step();
  const std::string& id = a.job.id();
  {
    // One section with the record: no client sees PAUSED (and resumes the job, which queues it
    // with fresh flags) before this run's place, quota and flags are given back.
    absl::MutexLock lock(&mu_);
    // Asked while it checkpointed: a cancel ends it; a resume withdrew the pause.
    if (a.cancel->load()) return PauseResult::kCancelled;
    if (!a.pause->load()) return PauseResult::kTrainsOn;
    auto moved = stores_.jobs->Transition(
        a.job.tenant(), id, JobState::kPaused,
        saved.ok()
            ? absl::StrCat("paused by the client at step ", step)
            : absl::StrCat("paused by the client at step ", step, "; the checkpoint failed (",
                           saved.message(), "): it resumes from the previous one"),
        [&](v1::Job& j) {
          j.clear_device();
          if (saved.ok()) j.set_steps_completed(step);
        });
    if (!moved.ok()) {
      // Still RUNNING in the store: it trains on rather than leave its device unrecorded, and
      // the client's pause, which waits for the job to leave, is answered RUNNING.
      std::fprintf(stderr, "qlorad: job %s: cannot be paused: %s\n", id.c_str(),
                   std::string(moved.status().message()).c_str());
      a.pause->store(false);
      work_cv_.SignalAll();
      return PauseResult::kTrainsOn;
    }
    a.pause->store(false);  // taken: a PauseJob still waiting must not pause a later run again
    if (!a.quota_released) {
      a.quota_released = true;
      ReleaseQuotaLocked(w, a.job.tenant());
    }
    w->jobs_bytes -= a.entry.job_bytes;
    --w->jobs_running;
    ReleaseLocked(id);
  }
  ForgetJobSeries(id);
  Notify();
  return PauseResult::kPaused;
}

absl::StatusOr<v1::Adapter> JobManager::StoreAdapter(Worker* w, ActiveJob& a) {
  const std::string& tenant = a.job.tenant();
  const std::string& id = a.job.id();
  const LlamaConfig& config = a.model->model->config();
  const TrainerOptions& o = a.trainer->options();
  const std::string dir = (fs::path(options_.scratch_dir) / (id + "-adapter")).string();
  std::error_code ec;
  fs::remove_all(dir, ec);
  PeftExportOptions eo;
  eo.base_model_name_or_path = a.job.model();
  // Written to the scratch folder first, on the store's disk: a full disk fails it too, and is
  // tried again as the store's refusals are.
  if (absl::Status saved = SavePeftAdapter(dir, config, o.lora, a.final_params, eo); !saved.ok()) {
    fs::remove_all(dir, ec);
    return absl::UnavailableError(absl::StrCat("the scratch folder: ", saved.message()));
  }
  v1::Adapter meta;
  meta.set_name(absl::StrCat(a.job.model(), "-", a.job.suffix().empty() ? id : a.job.suffix()));
  meta.set_job_id(id);
  meta.set_base_model(a.job.model());
  meta.set_rank(o.lora.rank);
  meta.set_alpha(o.lora.alpha);
  for (const std::string& m : o.lora.target_modules) meta.add_target_modules(m);
  meta.set_trainable_parameters(a.trainer->layout().num_params());
  meta.set_final_loss(a.last_loss);
  // The validation loss of the adapter stored (with early stopping the best, else the last).
  if (a.trainer->kept_eval_loss()) meta.set_best_eval_loss(*a.trainer->kept_eval_loss());
  const Tenant* t = stores_.tenants->Find(tenant);
  const int64_t max_adapters = t ? t->limits.max_adapters : TenantLimits{}.max_adapters;
  absl::StatusOr<v1::Adapter> adapter;
  {
    // Only now: until its adapter is stored, the job counts against the tenant's adapter limit
    // as an unfinished job, so CreateJob never lets in a job whose adapter will not fit. Under
    // CreateJob's lock, so that no check sees the job counted twice (as a job and an adapter).
    absl::MutexLock create_lock(&create_mu_);
    adapter = stores_.adapters->Create(tenant, meta, dir, max_adapters);
    if (adapter.ok()) ReleaseQuotaOf(w, a);
  }
  fs::remove_all(dir, ec);
  return adapter;
}

}  // namespace qlorad::core
