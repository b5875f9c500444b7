// The job manager without gRPC: devices, admission by memory with the base model counted once
// per device, waiting jobs, cancellation, and jobs failing on their own input.
#include "server/core/job_manager.h"

#include <google/protobuf/util/time_util.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "engine/cuda_device.h"
#include "gtest/gtest.h"
#include "server/metrics/names.h"
#include "server/metrics/registry.h"
#include "tests/server/test_dirs.h"
#include "tests/server/test_inputs.h"

namespace qlorad::core {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::qlorad::testing::FactsJsonl;
using ::qlorad::testing::StoriesGguf;
using WriteFault = std::function<absl::Status(const storage::WriteSet&)>;

// Whether a write stores a progress event, or moves a job to `state`.
bool StoresProgress(const storage::WriteSet& w) {
  bool progress = false;
  w.ForEach([&](storage::Family f, std::string_view, std::string_view value) {
    v1::JobEvent e;
    progress |= f == storage::Family::kEvents &&
                e.ParseFromArray(value.data(), static_cast<int>(value.size())) && e.has_progress();
  });
  return progress;
}
bool MovesAJobTo(const storage::WriteSet& w, v1::JobState state) {
  bool moves = false;
  w.ForEach([&](storage::Family f, std::string_view, std::string_view value) {
    v1::Job j;
    moves |= f == storage::Family::kJobs &&
             j.ParseFromArray(value.data(), static_cast<int>(value.size())) && j.state() == state;
  });
  return moves;
}

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qlorad::testing::FreshTestDir("jm");
    storage::KvStoreOptions so;
    so.write_fault = [faults = faults_](const storage::WriteSet& w) {
      absl::MutexLock lock(&faults->mu);
      return faults->fault ? faults->fault(w) : absl::OkStatus();
    };
    auto db = storage::KvStore::Open(dir_ + "/db", so);
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
    jobs_ = std::make_unique<JobStore>(db_.get());
    models_ = std::make_unique<ModelStore>(db_.get());
    datasets_ = std::make_unique<DatasetStore>(db_.get());
    adapters_ = std::make_unique<AdapterStore>(db_.get());
    checkpoints_ = std::make_unique<CheckpointStore>(db_.get());
    auto tenants = TenantRegistry::FromJson(
        R"({"tenants": [{"name": "a", "key_sha256": ")" + Sha256Hex("ka") +
            R"(", "limits": {"max_concurrent_jobs": 8}},
                        {"name": "b", "key_sha256": ")" +
            Sha256Hex("kb") + R"(", "limits": {"max_concurrent_jobs": 8, "max_priority": 10}},
                        {"name": "c", "key_sha256": ")" +
            Sha256Hex("kc") + R"(", "limits": {"max_concurrent_jobs": 8, "max_adapters": 1}},
                        {"name": "d", "key_sha256": ")" +
            Sha256Hex("kd") + R"(", "limits": {"max_concurrent_jobs": 2}}]})",
        "test");
    ASSERT_TRUE(tenants.ok()) << tenants.status();
    tenants_ = std::move(*tenants);
    auto model = models_->Register("stories", StoriesGguf());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    for (const char* t : {"a", "b", "c", "d"}) {
      auto ds = datasets_->Create(t, "facts", FactsJsonl(), 1 << 20);
      ASSERT_TRUE(ds.ok());
      dataset_[t] = ds->id();
    }
  }
  void TearDown() override {
    if (manager_) manager_->Shutdown();
  }

  // `before_start`: what the daemon does between making the manager and starting it.
  void StartManager(JobManagerOptions o,
                    const std::function<void(JobManager&)>& before_start = nullptr,
                    metrics::Registry* metrics = nullptr) {
    o.scratch_dir = dir_ + "/scratch";
    o.progress_interval_seconds = 0;
    if (o.threads_per_device == 0) o.threads_per_device = 1;
    auto m = JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                                 checkpoints_.get(), tenants_.get(), metrics},
                                o);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    if (before_start) before_start(*manager_);
    ASSERT_TRUE(manager_->Start().ok());
  }

  v1::CreateJobRequest Request(const std::string& tenant, int64_t steps) {
    v1::CreateJobRequest req;
    req.set_model("stories");
    req.set_training_dataset(dataset_[tenant]);
    req.mutable_hyperparameters()->set_rank(4);
    req.mutable_hyperparameters()->set_max_steps(steps);
    req.mutable_hyperparameters()->set_batch_size(4);
    req.mutable_hyperparameters()->set_seq_len(64);
    return req;
  }

  int64_t JobBytes() { return JobBytes(Request("a", 1)); }
  int64_t JobBytes(const v1::CreateJobRequest& req) {
    auto r = ResolveHyperparameters(req.hyperparameters(), model_, {}, false);
    const LlamaConfig c = ConfigFromModel(model_);
    // the tests' devices are CPUs: their attention state, float32 activations
    return JobMemoryBytes(c, *r, CpuAttentionSavedPerRow(c, *r), false);
  }

  // Polls until `pred` holds for the job (or `limit` passes).
  v1::Job WaitFor(const std::string& tenant, const std::string& id,
                  const std::function<bool(const v1::Job&)>& pred,
                  absl::Duration limit = absl::Seconds(60)) {
    const absl::Time deadline = absl::Now() + limit;
    while (absl::Now() < deadline) {
      auto j = manager_->GetJob(tenant, id);
      EXPECT_TRUE(j.ok());
      if (pred(*j)) return *j;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "timed out waiting for job " << id;
    return *manager_->GetJob(tenant, id);
  }
  // A dataset of `tenant` whose examples keep no target within seq_len 64: each one's prompt
  // fills it.
  std::string LongPromptsDataset(const std::string& tenant) {
    std::string long_prompts;
    for (int i = 0; i < 3; ++i) {
      long_prompts += "{\"prompt\": \"" + std::string(400, 'x') + "\", \"completion\": \"y\"}\n";
    }
    auto ds = datasets_->Create(tenant, "long", long_prompts, 1 << 20);
    EXPECT_TRUE(ds.ok()) << ds.status();
    return ds.ok() ? ds->id() : "";
  }
  // Creates the job, which is accepted, and waits for it to fail as the user's (while queued, or
  // at its start), naming `parameter` and saying `message`.
  void ExpectFailsOnItsInput(const std::string& tenant, const v1::CreateJobRequest& req,
                             const std::string& parameter, const std::string& message) {
    auto job = manager_->CreateJob(T(tenant), req);
    ASSERT_TRUE(job.ok()) << job.status();
    const v1::Job f = WaitFor(tenant, job->id(), [](const v1::Job& j) {
      return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED || j.state() == v1::CANCELLED;
    });
    EXPECT_EQ(f.state(), v1::FAILED);
    EXPECT_TRUE(f.error().user_error());
    EXPECT_EQ(f.error().parameter(), parameter);
    EXPECT_NE(f.error().message().find(message), std::string::npos) << f.error().message();
  }

  // One job on a single device that is lost at its fourth step (after the checkpoint of step
  // 2): checks that it went back to the queue, not failed, and returns its id.
  std::string JobBackFromALostDevice() {
    JobManagerOptions o;
    o.devices = "cpu:0";
    o.checkpoint_every = 2;
    // Reads of results: one a step, three a checkpoint (adapter, two moments); the seventh
    // read, in step 4, is the first the lost device answers with NaN.
    o.cpu_device_faults["cpu:0"] = {6, absl::UnavailableError("cpu:0 is lost (injected)")};
    StartManager(o);
    auto job = manager_->CreateJob(T("a"), Request("a", 8));
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return "";
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!manager_->Devices()[0].lost && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    const DeviceInfo device = manager_->Devices()[0];
    EXPECT_TRUE(device.lost);
    EXPECT_NE(device.lost_reason.find("injected"), std::string::npos) << device.lost_reason;
    EXPECT_EQ(device.jobs_running, 0);
    const v1::Job back = WaitFor("a", job->id(), [](const v1::Job& j) {
      return j.state() == v1::QUEUED && j.device().empty();
    });
    EXPECT_FALSE(back.has_error()) << back.error().message();
    return job->id();
  }

  // Polls until each device runs `jobs` jobs (a job is RUNNING in the store a moment before
  // its device counts it).
  void WaitForJobsOnEachDevice(int jobs) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    auto all = [&] {
      for (const DeviceInfo& d : manager_->Devices()) {
        if (d.jobs_running != jobs) return false;
      }
      return true;
    };
    while (!all() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    for (const DeviceInfo& d : manager_->Devices()) EXPECT_EQ(d.jobs_running, jobs) << d.name;
  }

  const Tenant& T(const std::string& name) { return *tenants_->Find(name); }

  // What the store's writes meet from now on (a full disk, say); null for none.
  void SetWriteFault(WriteFault fault) {
    absl::MutexLock lock(&faults_->mu);
    faults_->fault = std::move(fault);
  }
  // The store refuses the first `n` writes that `matches` with `error` (a full disk that
  // mends). Returns the count of matching writes seen so far.
  std::shared_ptr<std::atomic<int>> RefuseFirst(
      int n, std::function<bool(const storage::WriteSet&)> matches, absl::Status error) {
    auto seen = std::make_shared<std::atomic<int>>(0);
    SetWriteFault([=](const storage::WriteSet& w) {
      return matches(w) && seen->fetch_add(1) < n ? error : absl::OkStatus();
    });
    return seen;
  }
  // A 3-step job on a fresh one-job manager, once it warned (a write of how it ended refused).
  void StartAJobUntilItWarns(std::optional<v1::Job>* job);
  // A 3-step job whose SUCCEEDED record the store refuses, stopped with its adapter stored (its
  // id in `stored`); the store takes every write again after the stop.
  void StopWithItsSuccessUnrecorded(std::optional<v1::Job>* job, std::string* stored);

  // CreateJob's second write (VALIDATING to QUEUED) fails once, as on a full disk.
  void RefuseTheFirstQueuedWrite() {
    RefuseFirst(
        1, [](const storage::WriteSet& w) { return MovesAJobTo(w, v1::QUEUED); },
        absl::ResourceExhaustedError("injected: no space left on device"));
  }
  struct WriteFaults {
    absl::Mutex mu;
    WriteFault fault ABSL_GUARDED_BY(mu);
  };
  std::shared_ptr<WriteFaults> faults_ = std::make_shared<WriteFaults>();

  std::string dir_;
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<JobStore> jobs_;
  std::unique_ptr<ModelStore> models_;
  std::unique_ptr<DatasetStore> datasets_;
  std::unique_ptr<AdapterStore> adapters_;
  std::unique_ptr<CheckpointStore> checkpoints_;
  std::unique_ptr<TenantRegistry> tenants_;
  std::unique_ptr<JobManager> manager_;
  v1::Model model_;
  std::map<std::string, std::string> dataset_;
};

JobManagerOptions Options(const std::string& devices, int64_t budget = 0, int max_jobs = 4) {
  JobManagerOptions o;
  o.devices = devices;
  o.device_memory_bytes = budget;
  o.max_jobs_per_device = max_jobs;
  return o;
}

auto IsRunning = [](const v1::Job& j) { return j.state() == v1::RUNNING; };
auto HasEnded = [](const v1::Job& j) {
  return j.state() == v1::SUCCEEDED || j.state() == v1::FAILED || j.state() == v1::CANCELLED;
};

// Each device could hold both jobs (four a device): the second goes to the idle device rather
// than take turns with the first.
TEST_F(JobManagerTest, TwoJobsSpreadOverTwoDevices) {
  StartManager(Options("cpu:0,cpu:1"));
  auto a = manager_->CreateJob(T("a"), Request("a", 100000));
  auto b = manager_->CreateJob(T("b"), Request("b", 100000));
  ASSERT_TRUE(a.ok() && b.ok());
  const v1::Job ra = WaitFor("a", a->id(), IsRunning);
  const v1::Job rb = WaitFor("b", b->id(), IsRunning);
  EXPECT_NE(ra.device(), rb.device());
  WaitForJobsOnEachDevice(1);
  for (const DeviceInfo& d : manager_->Devices()) {
    EXPECT_EQ(d.base_models_loaded, 1) << d.name;  // each device loads its own copy
  }
  EXPECT_EQ(manager_->CancelJob("a", a->id())->state(), v1::CANCELLED);
  EXPECT_EQ(manager_->CancelJob("b", b->id())->state(), v1::CANCELLED);
}

// Jobs queued when the daemon starts (here after a restart that added a device) are all there
// when the workers first look: the first worker to look takes one and leaves the other to the
// idle device, rather than take both in turns.
TEST_F(JobManagerTest, JobsQueuedAtTheStartSpreadOverTheDevices) {
  StartManager(Options("cpu:0"));
  auto a = manager_->CreateJob(T("a"), Request("a", 100000));
  auto b = manager_->CreateJob(T("b"), Request("b", 100000));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(WaitFor("a", a->id(), IsRunning).device(), "cpu:0");
  EXPECT_EQ(WaitFor("b", b->id(), IsRunning).device(), "cpu:0");
  manager_->Shutdown();  // both back to QUEUED, with their checkpoints
  StartManager(Options("cpu:0,cpu:1"));
  const v1::Job ra = WaitFor("a", a->id(), IsRunning);
  const v1::Job rb = WaitFor("b", b->id(), IsRunning);
  EXPECT_NE(ra.device(), rb.device());
  WaitForJobsOnEachDevice(1);
  EXPECT_EQ(manager_->CancelJob("a", a->id())->state(), v1::CANCELLED);
  EXPECT_EQ(manager_->CancelJob("b", b->id())->state(), v1::CANCELLED);
}

// Jobs queued at a restart keep their order (first come, first served), however quickly they
// came: records made within one second used to tie.
TEST_F(JobManagerTest, TheQueueKeepsItsOrderAcrossARestart) {
  StartManager(Options("cpu:0", 0, 1));
  auto running = manager_->CreateJob(T("a"), Request("a", 100000));
  ASSERT_TRUE(running.ok()) << running.status();
  WaitFor("a", running->id(), IsRunning);
  std::vector<std::string> waiting;
  for (int i = 0; i < 5; ++i) {
    auto job = manager_->CreateJob(T("a"), Request("a", 100000));
    ASSERT_TRUE(job.ok()) << job.status();
    waiting.push_back(job->id());
  }
  manager_->Shutdown();
  StartManager(Options("cpu:0", 0, 1));
  EXPECT_EQ(WaitFor("a", running->id(), IsRunning).device(), "cpu:0");  // the oldest first
  for (size_t i = 0; i < waiting.size(); ++i) {
    auto job = manager_->GetJob("a", waiting[i]);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->state(), v1::QUEUED);
    EXPECT_EQ(job->queue_position(), static_cast<int>(i)) << waiting[i];
  }
  for (const std::string& id : waiting) manager_->CancelJob("a", id).IgnoreError();
  EXPECT_EQ(manager_->CancelJob("a", running->id())->state(), v1::CANCELLED);
}

// Of two idle devices, a job goes to the one that has its base model loaded, every time; a
// device that already runs a job leaves the next one to an idle device, even one that has to
// load the model.
TEST_F(JobManagerTest, AJobGoesToTheIdleDeviceThatHasItsModel) {
  StartManager(Options("cpu:0,cpu:1"));
  auto first = manager_->CreateJob(T("a"), Request("a", 2));
  ASSERT_TRUE(first.ok()) << first.status();
  const v1::Job done = WaitFor("a", first->id(), HasEnded);
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  const std::string holder = done.device();
  for (int i = 0; i < 4; ++i) {
    auto next = manager_->CreateJob(T("a"), Request("a", 2));
    ASSERT_TRUE(next.ok()) << next.status();
    const v1::Job ended = WaitFor("a", next->id(), HasEnded);
    EXPECT_EQ(ended.state(), v1::SUCCEEDED) << ended.error().message();
    EXPECT_EQ(ended.device(), holder) << "job " << i;
  }
  for (const DeviceInfo& d : manager_->Devices()) {
    EXPECT_EQ(d.base_models_loaded, d.name == holder ? 1 : 0) << d.name;
  }
  auto busy = manager_->CreateJob(T("a"), Request("a", 100000));
  ASSERT_TRUE(busy.ok());
  EXPECT_EQ(WaitFor("a", busy->id(), IsRunning).device(), holder);
  auto other = manager_->CreateJob(T("b"), Request("b", 100000));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(WaitFor("b", other->id(), IsRunning).device(), holder);
  EXPECT_EQ(manager_->CancelJob("a", busy->id())->state(), v1::CANCELLED);
  EXPECT_EQ(manager_->CancelJob("b", other->id())->state(), v1::CANCELLED);
}

// A job whose base model is loaded but finds the budget taken by another model no job uses
// gets that model evicted, rather than waiting for a job that will never end.
TEST_F(JobManagerTest, AnUnusedModelMakesRoomForAJobWhoseModelIsLoaded) {
  auto second = models_->Register("stories-b", StoriesGguf());
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->quantized_bytes(), model_.quantized_bytes());
  const int64_t m = model_.quantized_bytes();
  auto shaped = [&](const char* model, int64_t seq) {
    v1::CreateJobRequest r = Request("a", 2);
    r.set_model(model);
    r.mutable_hyperparameters()->set_batch_size(1);
    r.mutable_hyperparameters()->set_seq_len(seq);
    return r;
  };
  // The longest facts example takes 41 tokens.
  const int64_t small = JobBytes(shaped("stories", 48));
  // A larger job of the same model that fits beside that model alone, not beside both.
  int64_t big_seq = 0;
  for (int64_t seq = 49; seq <= 256 && big_seq == 0; ++seq) {
    const int64_t big = JobBytes(shaped("stories", seq));
    if (big > small && big <= m + small) big_seq = seq;
  }
  ASSERT_GT(big_seq, 0) << "no seq_len gives a job between " << small << " and " << m + small;
  StartManager(Options("cpu:0", 2 * m + small));
  for (const char* model : {"stories", "stories-b"}) {  // both stay loaded, unused
    auto job = manager_->CreateJob(T("a"), shaped(model, 48));
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(WaitFor("a", job->id(), HasEnded).state(), v1::SUCCEEDED);
  }
  EXPECT_EQ(manager_->Devices()[0].base_models_loaded, 2);
  auto big = manager_->CreateJob(T("a"), shaped("stories", big_seq));
  ASSERT_TRUE(big.ok()) << big.status();
  const v1::Job done = WaitFor("a", big->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(manager_->Devices()[0].base_models_loaded, 1);
}

// Two equal jobs taking turns on one device: each one's ETA counts the other's turns (the
// trainer alone times only the job's own step, which promised half the time). The ETA at step
// 30 is held against the pace measured over the ten steps before, in the same window, so load
// on the machine before or after does not matter; the old estimate sat near 0.5 of it.
TEST_F(JobManagerTest, TheEtaCountsTheTurnsOfTheJobsSharingTheDevice) {
  StartManager(Options("cpu:0"));
  auto a = manager_->CreateJob(T("a"), Request("a", 100));
  auto b = manager_->CreateJob(T("b"), Request("b", 100));
  ASSERT_TRUE(a.ok() && b.ok());
  // The first time the job is seen at or past `step`, and when.
  auto reach = [&](int64_t step) {
    v1::Job j;
    while (true) {
      j = *manager_->GetJob("a", a->id());
      if (j.steps_completed() >= step || HasEnded(j)) return std::make_pair(j, absl::Now());
      absl::SleepFor(absl::Microseconds(500));
    }
  };
  const auto [at20, t20] = reach(20);
  const auto [at30, t30] = reach(30);
  ASSERT_EQ(at30.state(), v1::RUNNING);
  ASSERT_EQ(manager_->GetJob("b", b->id())->state(), v1::RUNNING);  // still taking turns
  const double pace = absl::ToDoubleSeconds(t30 - t20) /
                      static_cast<double>(at30.steps_completed() - at20.steps_completed());
  const double expected = pace * static_cast<double>(100 - at30.steps_completed());
  std::printf("ETA at step %lld: %.2f s; the pace of steps %lld-%lld gives %.2f s\n",
              static_cast<long long>(at30.steps_completed()), at30.eta_seconds(),
              static_cast<long long>(at20.steps_completed()),
              static_cast<long long>(at30.steps_completed()), expected);
  EXPECT_GT(at30.eta_seconds(), 0.7 * expected);
  EXPECT_LT(at30.eta_seconds(), 1.5 * expected);
  EXPECT_EQ(manager_->CancelJob("a", a->id())->state(), v1::CANCELLED);
  EXPECT_EQ(manager_->CancelJob("b", b->id())->state(), v1::CANCELLED);
}

TEST_F(JobManagerTest, BaseModelIsCountedOncePerDevice) {
  // Room for the model once and two jobs, not for the model twice: both jobs must fit.
  const int64_t budget = model_.quantized_bytes() + 2 * JobBytes() + model_.quantized_bytes() / 2;
  StartManager(Options("cpu:0", budget, 4));
  auto a = manager_->CreateJob(T("a"), Request("a", 100000));
  auto b = manager_->CreateJob(T("b"), Request("b", 100000));
  ASSERT_TRUE(a.ok() && b.ok());
  WaitFor("a", a->id(), IsRunning);
  WaitFor("b", b->id(), IsRunning);
  WaitForJobsOnEachDevice(2);  // RUNNING in the store a moment before the device counts it
  const DeviceInfo d = manager_->Devices()[0];
  EXPECT_EQ(d.base_models_loaded, 1);
  EXPECT_EQ(d.memory_reserved, model_.quantized_bytes() + 2 * JobBytes());

  // A third job does not fit: it waits at the head of the queue, and starts when one ends.
  auto c = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(c.ok());
  absl::SleepFor(absl::Milliseconds(300));
  auto waiting = manager_->GetJob("a", c->id());
  EXPECT_EQ(waiting->state(), v1::QUEUED);
  EXPECT_EQ(waiting->queue_position(), 0);
  ASSERT_EQ(manager_->CancelJob("b", b->id())->state(), v1::CANCELLED);
  const v1::Job done = WaitFor("a", c->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(manager_->CancelJob("a", a->id())->state(), v1::CANCELLED);
}

TEST_F(JobManagerTest, AJobLargerThanEveryDeviceIsRefusedAtCreation) {
  StartManager(Options("cpu:0", JobBytes()));
  auto r = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("hyperparameters.batch_size"), absl::string_view::npos);
  EXPECT_TRUE(jobs_->List("a", {}, 10, "")->empty());
}

// Generation and evaluation sharing a device take their share out of its budget before the
// workers start: admission sees only the rest, so a job that fits the whole budget but not the
// rest is refused at creation. A share of nothing, one that leaves training nothing, one for a
// device that is not here and one after the start are refused.
TEST_F(JobManagerTest, AShareForInferenceComesOutOfTheBudgetBeforeTheStart) {
  const int64_t budget = model_.quantized_bytes() + JobBytes() + 1000;
  constexpr int64_t kShare = 2000;
  StartManager(Options("cpu:0", budget), [&](JobManager& m) {
    EXPECT_EQ(m.ShareWithInference("cpu:1", kShare).code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(m.ShareWithInference("cpu:0", 0).code(), absl::StatusCode::kInvalidArgument);
    const absl::Status all = m.ShareWithInference("cpu:0", budget);
    EXPECT_EQ(all.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(all.message().find("no training budget"), absl::string_view::npos) << all;
    EXPECT_EQ(m.Devices()[0].memory_budget, budget);  // refusals change nothing
    EXPECT_TRUE(m.ShareWithInference("cpu:0", kShare).ok());
  });
  const DeviceInfo d = manager_->Devices()[0];
  EXPECT_EQ(d.memory_budget, budget - kShare);
  EXPECT_EQ(d.inference_memory_bytes, kShare);
  EXPECT_EQ(manager_->MaxDeviceBudget(), budget - kShare);
  auto r = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_EQ(manager_->ShareWithInference("cpu:0", 10).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, ADatasetTheModelCannotTrainOnFailsThatJobOnly) {
  StartManager(Options("cpu:0", 0, 2));
  const std::string ds = LongPromptsDataset("b");
  v1::CreateJobRequest bad = Request("b", 5);
  bad.set_training_dataset(ds);
  auto good = manager_->CreateJob(T("a"), Request("a", 5));
  ASSERT_TRUE(good.ok()) << good.status();
  // "<dataset id>:<line>: ...", like a compiler's file:line.
  ExpectFailsOnItsInput("b", bad, "training_dataset", ds + ":1: no target token");
  EXPECT_EQ(WaitFor("a", good->id(), HasEnded).state(), v1::SUCCEEDED);
}

// Epochs bound the steps through the data only: a job whose epochs make more steps than the
// node allows fails at its start naming the field (it used to run them all).
TEST_F(JobManagerTest, EpochsThatMakeTooManyStepsAreRefusedByName) {
  JobManagerOptions o = Options("cpu:0");
  o.limits.max_total_steps = 5;
  StartManager(o);
  v1::CreateJobRequest req = Request("a", 1);
  req.mutable_hyperparameters()->clear_max_steps();
  req.mutable_hyperparameters()->set_epochs(3);  // the facts make at least 2 steps an epoch
  ExpectFailsOnItsInput("a", req, "hyperparameters.epochs", "at most 5 are allowed");
}

// A validation set is evaluated whole within one step while the device's other jobs wait: one
// past the bound fails the job at its start, naming the field.
TEST_F(JobManagerTest, AValidationSetPastItsBoundIsRefusedByName) {
  JobManagerOptions o = Options("cpu:0");
  o.limits.max_validation_tokens = 64 * 3;  // three rows of seq_len 64
  StartManager(o);
  v1::CreateJobRequest req = Request("a", 2);
  req.set_validation_dataset(dataset_["a"]);  // the facts: more than three rows
  req.mutable_hyperparameters()->set_eval_every(1);
  ExpectFailsOnItsInput("a", req, "validation_dataset", "a validation set holds at most 192");
}

// Data a job cannot train on fails it while it waits in the queue, not when a device takes it:
// here the only device is busy with a long job the whole time.
TEST_F(JobManagerTest, DataAJobCannotTrainOnFailsItWhileItWaits) {
  StartManager(Options("cpu:0", 0, 1));
  auto busy = manager_->CreateJob(T("a"), Request("a", 100000));
  ASSERT_TRUE(busy.ok()) << busy.status();
  WaitFor("a", busy->id(), IsRunning);
  const std::string ds = LongPromptsDataset("b");
  v1::CreateJobRequest bad = Request("b", 5);
  bad.set_training_dataset(ds);
  ExpectFailsOnItsInput("b", bad, "training_dataset", ds + ":1: no target token");
  EXPECT_EQ(manager_->GetJob("a", busy->id())->state(), v1::RUNNING);  // the device never freed
  EXPECT_EQ(manager_->ActiveJobs("b"), 0);
  ASSERT_TRUE(manager_->CancelJob("a", busy->id(), absl::Seconds(30)).ok());
}

// The bounds checked at a start came after some jobs trained: such a job keeps its data after
// a restart (failing it would throw its checkpoint away).
TEST_F(JobManagerTest, AJobThatTrainedBeforeABoundCameKeepsItsData) {
  StartManager(Options("cpu:0", 0, 1));
  v1::CreateJobRequest req = Request("a", 60);
  req.set_validation_dataset(dataset_["a"]);
  req.mutable_hyperparameters()->set_eval_every(30);
  auto job = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(job.ok()) << job.status();
  WaitFor("a", job->id(), [](const v1::Job& j) { return j.steps_completed() >= 2; });
  manager_->Shutdown();  // its checkpoint is stored
  JobManagerOptions bounded = Options("cpu:0", 0, 1);
  bounded.limits.max_validation_tokens = 64;  // less than its validation set
  StartManager(bounded);
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 60);
}

// A model or dataset an unfinished job uses is not deleted; once the job ended it is.
TEST_F(JobManagerTest, InputsOfAnUnfinishedJobAreNotDeleted) {
  StartManager(Options("cpu:0"));
  auto job = manager_->CreateJob(T("a"), Request("a", 2));
  ASSERT_TRUE(job.ok()) << job.status();
  const absl::Status dataset = manager_->DeleteDataset("a", dataset_["a"]);
  EXPECT_EQ(dataset.code(), absl::StatusCode::kFailedPrecondition) << dataset;
  EXPECT_NE(dataset.message().find("used by an unfinished job"), std::string::npos);
  EXPECT_EQ(manager_->DeleteModel("stories").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(datasets_->Get("a", dataset_["a"]).ok());
  EXPECT_TRUE(models_->Get("stories").ok());
  // Another tenant's job is not this tenant's: b's dataset goes.
  EXPECT_TRUE(manager_->DeleteDataset("b", dataset_["b"]).ok());
  EXPECT_EQ(WaitFor("a", job->id(), HasEnded).state(), v1::SUCCEEDED);
  EXPECT_TRUE(manager_->DeleteDataset("a", dataset_["a"]).ok());
  EXPECT_EQ(datasets_->Get("a", dataset_["a"]).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(manager_->DeleteModel("stories").ok());
  // A job asked for now names what is missing.
  auto late = manager_->CreateJob(T("c"), Request("c", 2));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kNotFound) << late.status();
}

TEST_F(JobManagerTest, TheAdapterQuotaIsCheckedBeforeTraining) {
  StartManager(Options("cpu:0"));
  auto first = manager_->CreateJob(T("c"), Request("c", 2));
  ASSERT_TRUE(first.ok()) << first.status();
  // One adapter allowed and one job already on its way to it: refused until the job ends, and
  // after, through the moment its adapter is being stored.
  for (bool ended = false; !ended;) {
    ended = HasEnded(*manager_->GetJob("c", first->id()));
    auto second = manager_->CreateJob(T("c"), Request("c", 2));
    ASSERT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  }
  EXPECT_EQ(WaitFor("c", first->id(), HasEnded).state(), v1::SUCCEEDED);
  EXPECT_EQ(manager_->CreateJob(T("c"), Request("c", 2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(adapters_->List("c")->size(), 1u);
}

TEST_F(JobManagerTest, AnIdempotentRetryIsAnsweredEvenAtTheJobLimit) {
  StartManager(Options("cpu:0"));
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) {
    v1::CreateJobRequest req = Request("a", 100000);
    req.set_idempotency_key("key-" + std::to_string(i));
    auto job = manager_->CreateJob(T("a"), req);
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->id());
  }
  v1::CreateJobRequest ninth = Request("a", 100000);
  EXPECT_EQ(manager_->CreateJob(T("a"), ninth).status().code(),
            absl::StatusCode::kResourceExhausted);
  v1::CreateJobRequest retry = Request("a", 100000);
  retry.set_idempotency_key("key-0");
  auto again = manager_->CreateJob(T("a"), retry);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), ids[0]);
  for (const std::string& id : ids) EXPECT_EQ(manager_->CancelJob("a", id)->state(), v1::CANCELLED);
}

// The events recorded for a job (its first thousand).
std::vector<v1::JobEvent> EventsOf(JobStore& jobs, const std::string& tenant,
                                   const std::string& id) {
  auto events = jobs.Events(tenant, id, 0, 1000);
  EXPECT_TRUE(events.ok()) << events.status();
  return events.ok() ? *std::move(events) : std::vector<v1::JobEvent>{};
}

std::vector<std::string> Warnings(JobStore& jobs, const std::string& tenant,
                                  const std::string& id) {
  std::vector<std::string> out;
  for (const v1::JobEvent& e : EventsOf(jobs, tenant, id)) {
    if (e.has_warning()) out.push_back(e.warning());
  }
  return out;
}

void JobManagerTest::StartAJobUntilItWarns(std::optional<v1::Job>* job) {
  StartManager(Options("cpu:0", 0, 1));
  auto created = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(created.ok()) << created.status();
  *job = *created;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (Warnings(*jobs_, "a", created->id()).empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_FALSE(Warnings(*jobs_, "a", created->id()).empty());
}

void JobManagerTest::StopWithItsSuccessUnrecorded(std::optional<v1::Job>* job,
                                                  std::string* stored) {
  RefuseFirst(
      INT_MAX, [](const storage::WriteSet& w) { return MovesAJobTo(w, v1::SUCCEEDED); },
      absl::UnavailableError("injected: no space left"));
  ASSERT_NO_FATAL_FAILURE(StartAJobUntilItWarns(job));
  ASSERT_EQ(adapters_->List("a")->size(), 1u);
  *stored = adapters_->List("a")->front().id();
  manager_->Shutdown();
  SetWriteFault(nullptr);
}

// The state changes recorded for a job, as "FROM->TO: reason" lines.
std::vector<std::string> StateChanges(JobStore& jobs, const std::string& tenant,
                                      const std::string& id) {
  std::vector<std::string> out;
  for (const v1::JobEvent& e : EventsOf(jobs, tenant, id)) {
    if (!e.has_state_change()) continue;
    out.push_back(v1::JobState_Name(e.state_change().from()) + "->" +
                  v1::JobState_Name(e.state_change().to()) + ": " + e.state_change().reason());
  }
  return out;
}

bool AnyContains(const std::vector<std::string>& lines, const std::string& part) {
  for (const std::string& l : lines) {
    if (l.find(part) != std::string::npos) return true;
  }
  return false;
}

// A paused job leaves its device with a checkpoint of its step and holds no quota; it stays
// paused across a restart, and once resumed ends with the adapter an uninterrupted run makes.
TEST_F(JobManagerTest, APausedJobResumesToTheAdapterOfAnUninterruptedRun) {
  JobManagerOptions o = Options("cpu:0");
  o.checkpoint_every = 1000;  // the pause's checkpoint is the only one
  StartManager(o);
  // Steps enough that it is still running when the pause comes, on a loaded machine too, of
  // eight micro-batches each: the pause most often comes within a step, which it cuts short
  // (the trainer's interrupt), and the adapter must come out the same either way.
  v1::CreateJobRequest req = Request("a", 30);
  req.mutable_hyperparameters()->set_grad_accum(8);
  req.mutable_hyperparameters()->set_seed(7);
  auto job = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string id = job->id();
  WaitFor("a", id, [](const v1::Job& j) { return j.steps_completed() >= 3; });
  auto paused = manager_->PauseJob("a", id);
  ASSERT_TRUE(paused.ok()) << paused.status();
  ASSERT_EQ(paused->state(), v1::PAUSED);
  const int64_t step = paused->steps_completed();
  EXPECT_GE(step, 3);
  EXPECT_LT(step, 30);
  EXPECT_TRUE(paused->device().empty());
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
  EXPECT_EQ(manager_->Devices()[0].jobs_running, 0);
  ASSERT_EQ(checkpoints_->List()->size(), 1u);
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "a", id),
                          "RUNNING->PAUSED: paused by the client at step " + std::to_string(step)));
  EXPECT_EQ(manager_->PauseJob("a", id)->state(), v1::PAUSED);  // idempotent
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(manager_->GetJob("a", id)->steps_completed(), step);  // it trains no more

  manager_->Shutdown();
  manager_.reset();
  StartManager(o);
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(manager_->GetJob("a", id)->state(), v1::PAUSED);  // not queued by the restart

  auto resumed = manager_->ResumeJob(T("a"), id);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_NE(resumed->state(), v1::PAUSED);
  const v1::Job done = WaitFor("a", id, HasEnded);
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 30);
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "a", id),
                          "resumed from the checkpoint at step " + std::to_string(step)));
  EXPECT_TRUE(checkpoints_->List()->empty());
  auto twin = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(twin.ok()) << twin.status();
  const v1::Job twin_done = WaitFor("a", twin->id(), HasEnded);
  ASSERT_EQ(twin_done.state(), v1::SUCCEEDED);
  auto resumed_files = adapters_->Files("a", done.adapter_id());
  auto twin_files = adapters_->Files("a", twin_done.adapter_id());
  ASSERT_TRUE(resumed_files.ok() && twin_files.ok());
  EXPECT_TRUE(resumed_files->at("adapter_model.safetensors") ==
              twin_files->at("adapter_model.safetensors"));
  EXPECT_EQ(done.tokens_trained(), twin_done.tokens_trained());
}

// The evaluations of a job, as (step, loss) pairs in the order recorded.
std::vector<std::pair<int64_t, double>> Evaluations(JobStore& jobs, const std::string& tenant,
                                                    const std::string& id) {
  std::vector<std::pair<int64_t, double>> out;
  for (const v1::JobEvent& e : EventsOf(jobs, tenant, id)) {
    if (e.has_eval()) out.emplace_back(e.eval().step(), e.eval().loss());
  }
  return out;
}

// A pause during an evaluation (here most of each step's time: the facts evaluated after every
// one-batch step) cuts it: the job pauses at once, its step kept and its evaluation pending in
// the checkpoint. Resumed, it evaluates first and ends with the adapter and the evaluations of
// an uninterrupted run, each step evaluated once.
TEST_F(JobManagerTest, APauseDuringAnEvaluationResumesToTheRunNeverPaused) {
  JobManagerOptions o = Options("cpu:0");
  o.checkpoint_every = 1000;  // the pause's checkpoint is the only one
  StartManager(o);
  constexpr int kSteps = 30;
  v1::CreateJobRequest req = Request("a", kSteps);
  req.set_validation_dataset(dataset_["a"]);
  req.mutable_hyperparameters()->set_eval_every(1);
  req.mutable_hyperparameters()->set_seed(11);
  auto job = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string id = job->id();
  // Paused and resumed until a pause lands in an evaluation, seen as its step having none yet
  // (a pause that waited for the evaluation, as before, never shows that).
  bool cut = false;
  for (int tries = 0; tries < 6 && !cut; ++tries) {
    const int64_t from = manager_->GetJob("a", id)->steps_completed();
    WaitFor("a", id, [&](const v1::Job& j) { return j.steps_completed() > from; });
    auto paused = manager_->PauseJob("a", id);
    ASSERT_TRUE(paused.ok()) << paused.status();
    ASSERT_EQ(paused->state(), v1::PAUSED);
    ASSERT_LT(paused->steps_completed(), kSteps);
    cut = true;
    for (const auto& [step, loss] : Evaluations(*jobs_, "a", id)) {
      if (step == paused->steps_completed()) cut = false;
    }
    auto resumed = manager_->ResumeJob(T("a"), id);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
  }
  EXPECT_TRUE(cut) << "no pause of six came during an evaluation";
  const v1::Job done = WaitFor("a", id, HasEnded);
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  auto twin = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(twin.ok()) << twin.status();
  const v1::Job twin_done = WaitFor("a", twin->id(), HasEnded);
  ASSERT_EQ(twin_done.state(), v1::SUCCEEDED);
  const auto evaluations = Evaluations(*jobs_, "a", id);
  EXPECT_EQ(evaluations, Evaluations(*jobs_, "a", twin->id()));
  EXPECT_EQ(evaluations.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(done.best_eval_loss(), twin_done.best_eval_loss());
  auto files = adapters_->Files("a", done.adapter_id());
  auto twin_files = adapters_->Files("a", twin_done.adapter_id());
  ASSERT_TRUE(files.ok() && twin_files.ok());
  EXPECT_TRUE(files->at("adapter_model.safetensors") ==
              twin_files->at("adapter_model.safetensors"));
}

// A queued job is paused at once and leaves the queue. A paused job does not count against the
// tenant's running jobs, is resumed only within them, and can be cancelled; a finished one can
// be neither paused nor resumed.
TEST_F(JobManagerTest, AQueuedJobPausesAtOnceAndResumesWithinTheQuota) {
  StartManager(Options("cpu:0", 0, 1));  // one job at a time: the second waits in the queue
  auto first = manager_->CreateJob(T("d"), Request("d", 100000));
  ASSERT_TRUE(first.ok()) << first.status();
  WaitFor("d", first->id(), IsRunning);
  auto second = manager_->CreateJob(T("d"), Request("d", 5));
  ASSERT_TRUE(second.ok()) << second.status();
  auto paused = manager_->PauseJob("d", second->id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->state(), v1::PAUSED);
  EXPECT_EQ(manager_->GetJob("d", second->id())->queue_position(), -1);
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "d", second->id()),
                          "QUEUED->PAUSED: paused by the client while queued"));
  EXPECT_EQ(manager_->ActiveJobs("d"), 1);
  // Its place is free: a third job fits the limit of two, and the paused one no longer does.
  auto third = manager_->CreateJob(T("d"), Request("d", 100000));
  ASSERT_TRUE(third.ok()) << third.status();
  const absl::Status full = manager_->ResumeJob(T("d"), second->id()).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(manager_->GetJob("d", second->id())->state(), v1::PAUSED);
  ASSERT_TRUE(manager_->CancelJob("d", third->id()).ok());
  auto resumed = manager_->ResumeJob(T("d"), second->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::QUEUED);
  EXPECT_EQ(resumed->queue_position(), 0);
  // Paused again, then cancelled: it ends CANCELLED with nothing kept.
  ASSERT_EQ(manager_->PauseJob("d", second->id())->state(), v1::PAUSED);
  auto cancelled = manager_->CancelJob("d", second->id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_TRUE(checkpoints_->List()->empty());
  EXPECT_EQ(manager_->PauseJob("d", second->id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->ResumeJob(T("d"), second->id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->PauseJob("a", first->id()).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(manager_->CancelJob("d", first->id()).ok());
}

// A paused job will end with an adapter too: it counts against the adapter limit (which also
// bounds the paused jobs, each keeping a checkpoint), and its own resume fits.
TEST_F(JobManagerTest, APausedJobCountsAgainstTheAdapterLimit) {
  StartManager(Options("cpu:0"));
  auto job = manager_->CreateJob(T("c"), Request("c", 100000));  // c may hold one adapter
  ASSERT_TRUE(job.ok()) << job.status();
  auto paused = manager_->PauseJob("c", job->id());
  ASSERT_TRUE(paused.ok()) << paused.status();
  ASSERT_EQ(paused->state(), v1::PAUSED);
  const absl::Status another = manager_->CreateJob(T("c"), Request("c", 5)).status();
  EXPECT_EQ(another.code(), absl::StatusCode::kResourceExhausted) << another;
  EXPECT_NE(another.message().find("1 unfinished jobs (paused ones too)"), std::string::npos)
      << another;
  // Counted again from the store after a restart.
  manager_->Shutdown();
  manager_.reset();
  StartManager(Options("cpu:0"));
  EXPECT_EQ(manager_->CreateJob(T("c"), Request("c", 5)).status().code(),
            absl::StatusCode::kResourceExhausted);
  auto resumed = manager_->ResumeJob(T("c"), job->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE(manager_->CancelJob("c", job->id()).ok());
}

// A device that fails for good mid-job (what a GPU kernel fault does to the CUDA context): the
// job is not failed, and not blamed on its learning rate (the failed device's reads are NaN);
// it goes back to the queue with its checkpoint, the device takes no more jobs and says so,
// and after a restart the job resumes from that checkpoint and finishes.
TEST_F(JobManagerTest, ALostDeviceSendsItsJobBackToResumeFromItsCheckpoint) {
  const std::string id = JobBackFromALostDevice();
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "a", id),
                          "RUNNING->QUEUED: cpu:0 is lost (injected); the job resumes from its "
                          "last checkpoint on another device"));
  auto kept = checkpoints_->List();
  ASSERT_TRUE(kept.ok());
  ASSERT_EQ(kept->size(), 1u);  // the checkpoint of step 2 is kept, not deleted with a failure
  absl::SleepFor(absl::Milliseconds(300));  // the lost device takes the queued job no more:
  int starts = 0;                           // it started once, and was not taken again
  for (const std::string& c : StateChanges(*jobs_, "a", id)) {
    starts += c.rfind("QUEUED->RUNNING", 0) == 0;
  }
  EXPECT_EQ(starts, 1);
  EXPECT_EQ(manager_->GetJob("a", id)->state(), v1::QUEUED);
  // With every device lost, a new job is refused at once rather than queued for nothing.
  EXPECT_TRUE(absl::IsUnavailable(manager_->CreateJob(T("a"), Request("a", 2)).status()));

  manager_->Shutdown();  // a restart: the card works again
  manager_.reset();
  StartManager(Options("cpu:0"));
  const v1::Job done = WaitFor("a", id, HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 8);
  EXPECT_FALSE(done.adapter_id().empty());
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "a", id), "resumed from the checkpoint at step 2"));
}

// Cancelled while it waits in the queue after its device was lost: the job ends CANCELLED and
// its checkpoint goes with it, as any cancelled job's does (a queued job's was kept before).
TEST_F(JobManagerTest, ACancelledJobBackFromALostDeviceLeavesNoCheckpoint) {
  const std::string id = JobBackFromALostDevice();
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(checkpoints_->List()->size(), 1u);
  auto cancelled = manager_->CancelJob("a", id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_TRUE(checkpoints_->List()->empty());
}

// With two devices, a job whose device is lost resumes from its checkpoint on the other one,
// without a restart, and the other device's own job is untouched.
TEST_F(JobManagerTest, AJobOfALostDeviceResumesOnTheOtherDevice) {
  JobManagerOptions o = Options("cpu:0,cpu:1", 0, 1);
  o.checkpoint_every = 2;
  o.cpu_device_faults["cpu:0"] = {6, absl::UnavailableError("cpu:0 is lost (injected)")};
  StartManager(o);
  auto a = manager_->CreateJob(T("a"), Request("a", 12));
  auto b = manager_->CreateJob(T("b"), Request("b", 12));
  ASSERT_TRUE(a.ok() && b.ok());
  // One job a device; the one on cpu:0 meets the fault.
  const v1::Job ra = WaitFor("a", a->id(), IsRunning), rb = WaitFor("b", b->id(), IsRunning);
  ASSERT_NE(ra.device(), rb.device());
  const bool a_on_lost = ra.device() == "cpu:0";
  const std::string lost_tenant = a_on_lost ? "a" : "b", lost_id = a_on_lost ? a->id() : b->id();
  const std::string kept_tenant = a_on_lost ? "b" : "a", kept_id = a_on_lost ? b->id() : a->id();
  const v1::Job moved = WaitFor(lost_tenant, lost_id, HasEnded);
  EXPECT_EQ(moved.state(), v1::SUCCEEDED) << moved.error().message();
  EXPECT_EQ(moved.device(), "cpu:1");
  EXPECT_EQ(moved.steps_completed(), 12);
  const std::vector<std::string> history = StateChanges(*jobs_, lost_tenant, lost_id);
  EXPECT_TRUE(AnyContains(history, "RUNNING->QUEUED: cpu:0 is lost (injected)"));
  EXPECT_TRUE(AnyContains(history, "resumed from the checkpoint at step 2"));
  EXPECT_EQ(WaitFor(kept_tenant, kept_id, HasEnded).state(), v1::SUCCEEDED);
  for (const DeviceInfo& d : manager_->Devices()) EXPECT_EQ(d.lost, d.name == "cpu:0") << d.name;
}

// A failure the device recovers from (out of memory): the job fails as the system's fault,
// not the user's, and the device goes on with the next job.
TEST_F(JobManagerTest, ARecoverableDeviceErrorFailsOnlyTheJobThatMetIt) {
  JobManagerOptions o = Options("cpu:0", 0, 1);
  o.cpu_device_faults["cpu:0"] = {2, absl::ResourceExhaustedError("injected: out of memory")};
  StartManager(o);
  auto first = manager_->CreateJob(T("a"), Request("a", 6));
  ASSERT_TRUE(first.ok()) << first.status();
  const v1::Job failed = WaitFor("a", first->id(), HasEnded);
  EXPECT_EQ(failed.state(), v1::FAILED);
  EXPECT_FALSE(failed.error().user_error());
  EXPECT_EQ(failed.error().parameter(), "");  // not hyperparameters.learning_rate
  EXPECT_NE(failed.error().message().find("injected: out of memory"), std::string::npos)
      << failed.error().message();
  auto second = manager_->CreateJob(T("b"), Request("b", 3));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(WaitFor("b", second->id(), HasEnded).state(), v1::SUCCEEDED);
  EXPECT_FALSE(manager_->Devices()[0].lost);
}

// A store that cannot take progress records (a full disk) ends no job: it trains on, and its
// end is recorded once the store takes writes.
TEST_F(JobManagerTest, AJobTrainsOnWhileItsProgressCannotBeStored) {
  SetWriteFault([](const storage::WriteSet& w) {
    return StoresProgress(w) ? absl::UnavailableError("injected: no space left") : absl::OkStatus();
  });
  StartManager(Options("cpu:0"));
  auto job = manager_->CreateJob(T("a"), Request("a", 6));
  ASSERT_TRUE(job.ok()) << job.status();
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 6);
  EXPECT_FALSE(done.adapter_id().empty());
  EXPECT_GE(db_->failed_writes(), 6);  // every step's record
}

// A job that fails when its failure cannot be recorded is still RUNNING in the store: it keeps
// its checkpoint, so that once the disk is mended a restart resumes it from there.
TEST_F(JobManagerTest, AJobWhoseFailureCannotBeRecordedKeepsItsCheckpoint) {
  JobManagerOptions o = Options("cpu:0", 0, 1);
  o.checkpoint_every = 2;
  // The seventh read of results, in step 4, after the checkpoint of step 2 (as in
  // JobBackFromALostDevice), is refused: a recoverable error, which fails the job.
  o.cpu_device_faults["cpu:0"] = {6, absl::ResourceExhaustedError("injected: out of memory")};
  SetWriteFault([](const storage::WriteSet& w) {
    return MovesAJobTo(w, v1::FAILED) ? absl::UnavailableError("injected: no space left")
                                      : absl::OkStatus();
  });
  StartManager(o);
  auto job = manager_->CreateJob(T("a"), Request("a", 8));
  ASSERT_TRUE(job.ok()) << job.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while ((db_->failed_writes() == 0 || manager_->Devices()[0].jobs_running > 0) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GE(db_->failed_writes(), 1);
  EXPECT_EQ(manager_->GetJob("a", job->id())->state(), v1::RUNNING);
  auto kept = checkpoints_->List();
  ASSERT_TRUE(kept.ok());
  ASSERT_EQ(kept->size(), 1u);
  EXPECT_EQ((*kept)[0].second, job->id());

  manager_->Shutdown();
  SetWriteFault(nullptr);
  JobManagerOptions mended = Options("cpu:0", 0, 1);
  mended.checkpoint_every = 2;
  StartManager(mended);
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_TRUE(
      AnyContains(StateChanges(*jobs_, "a", job->id()), "resumed from the checkpoint at step 2"));
}

bool StoresAnAdapter(const storage::WriteSet& w) {
  bool adapter = false;
  w.ForEach([&](storage::Family f, std::string_view, std::string_view) {
    adapter |= f == storage::Family::kAdapters;
  });
  return adapter;
}

// A trained job whose adapter the store refuses (a full disk at the end of hours of training)
// keeps its training and stores the adapter once the store takes it. It used to fail, its
// checkpoint deleted, blamed on the user (RESOURCE_EXHAUSTED read as the adapter quota).
TEST_F(JobManagerTest, ATrainedJobWhoseAdapterCannotBeStoredYetStoresItLater) {
  auto refused = RefuseFirst(2, StoresAnAdapter,
                             absl::ResourceExhaustedError("injected: no space left on device"));
  StartManager(Options("cpu:0", 0, 1));
  auto job = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(job.ok()) << job.status();
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 3);
  EXPECT_EQ(refused->load(), 3);
  auto adapter = adapters_->Get("a", done.adapter_id());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  EXPECT_EQ(adapter->job_id(), job->id());
  EXPECT_TRUE(AnyContains(Warnings(*jobs_, "a", job->id()),
                          "its adapter cannot be stored yet (injected: no space left on device)"));
  auto kept = checkpoints_->List();
  ASSERT_TRUE(kept.ok());
  EXPECT_TRUE(kept->empty());
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);  // counted while it waited, released once
}

// A daemon stopped while a trained job waits to store its adapter keeps the training in a
// checkpoint at the last step: after the restart the job stores its adapter without training
// again, with the final loss it had.
TEST_F(JobManagerTest, AJobStoppedWhileItsAdapterWaitsStoresItAfterTheRestart) {
  RefuseFirst(INT_MAX, StoresAnAdapter,
              absl::ResourceExhaustedError("injected: no space left on device"));
  std::optional<v1::Job> job;
  ASSERT_NO_FATAL_FAILURE(StartAJobUntilItWarns(&job));
  const double trained_loss = manager_->GetJob("a", job->id())->last_loss();
  EXPECT_GT(trained_loss, 0.0);
  manager_->Shutdown();
  EXPECT_EQ(manager_->GetJob("a", job->id())->state(), v1::QUEUED);
  SetWriteFault(nullptr);
  StartManager(Options("cpu:0", 0, 1));
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 3);
  EXPECT_TRUE(
      AnyContains(StateChanges(*jobs_, "a", job->id()), "resumed from the checkpoint at step 3"));
  auto adapter = adapters_->Get("a", done.adapter_id());
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  EXPECT_DOUBLE_EQ(adapter->final_loss(), trained_loss);
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
}

// A trained job whose SUCCEEDED record the store refuses (its adapter stored) waits on its
// device and records it once the store takes it, with the adapter it stored: no second one. It
// used to stay RUNNING with nothing running it, its watchers waiting until a restart.
TEST_F(JobManagerTest, ASuccessThatCannotBeRecordedYetIsRecordedLater) {
  auto refused = RefuseFirst(
      2, [](const storage::WriteSet& w) { return MovesAJobTo(w, v1::SUCCEEDED); },
      absl::UnavailableError("injected: no space left on device"));
  StartManager(Options("cpu:0", 0, 1));
  auto job = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(job.ok()) << job.status();
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(refused->load(), 3);
  ASSERT_EQ(adapters_->List("a")->size(), 1u);
  EXPECT_EQ(adapters_->List("a")->front().id(), done.adapter_id());
  EXPECT_TRUE(AnyContains(Warnings(*jobs_, "a", job->id()),
                          "its success cannot be stored yet (injected: no space left on device)"));
  EXPECT_TRUE(checkpoints_->List()->empty());
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);  // its running count given back
}

// Stopped while its SUCCEEDED record waits, the job keeps a checkpoint; after the restart it
// finds the adapter it stored and records it, rather than storing a second.
TEST_F(JobManagerTest, ASuccessUnrecordedAtAStopIsRecordedAfterTheRestartWithItsAdapter) {
  std::optional<v1::Job> job;
  std::string stored;
  ASSERT_NO_FATAL_FAILURE(StopWithItsSuccessUnrecorded(&job, &stored));
  StartManager(Options("cpu:0", 0, 1));
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.adapter_id(), stored);
  EXPECT_TRUE(
      AnyContains(StateChanges(*jobs_, "a", job->id()), "its adapter was stored before a restart"));
  EXPECT_EQ(adapters_->List("a")->size(), 1u);
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
}

// A cancel that finds the job's adapter stored comes too late: here the job's success could not
// be recorded before the stop, so it is QUEUED in the store with its adapter, and a cancel
// (one that reached the stopped daemon, or the queue after a restart) ends it SUCCEEDED with
// that adapter. It used to end it CANCELLED beside an adapter whose job never finished.
TEST_F(JobManagerTest, ACancelAfterTheAdapterWasStoredEndsTheJobSucceededWithIt) {
  std::optional<v1::Job> job;
  std::string stored;
  ASSERT_NO_FATAL_FAILURE(StopWithItsSuccessUnrecorded(&job, &stored));
  ASSERT_EQ(manager_->GetJob("a", job->id())->state(), v1::QUEUED);
  auto cancelled = manager_->CancelJob("a", job->id(), absl::Seconds(1));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::SUCCEEDED);
  EXPECT_EQ(cancelled->adapter_id(), stored);
  EXPECT_TRUE(AnyContains(StateChanges(*jobs_, "a", job->id()),
                          "RUNNING->SUCCEEDED: the cancel came after its adapter was stored"));
  EXPECT_EQ(adapters_->List("a")->size(), 1u);
  EXPECT_TRUE(checkpoints_->List()->empty());
  // A job without an adapter is still cancelled.
  StartManager(Options("cpu:0", 0, 1));
  auto other = manager_->CreateJob(T("a"), Request("a", 100000));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(manager_->CancelJob("a", other->id())->state(), v1::CANCELLED);
}

// A cancel of a trained job waiting for its adapter's store ends the wait at once, not at the
// next try (up to 30 s later).
TEST_F(JobManagerTest, ACancelEndsAWaitForTheAdaptersStoreAtOnce) {
  RefuseFirst(INT_MAX, StoresAnAdapter,
              absl::ResourceExhaustedError("injected: no space left on device"));
  std::optional<v1::Job> job;
  ASSERT_NO_FATAL_FAILURE(StartAJobUntilItWarns(&job));
  // Tries 1 s, then 2 s, then 4 s apart: 3.5 s after the first, the next is 3.5 s away, and a
  // cancel that waited for it would take that long. (At 1.5 s the next was 1.5 s away, and a
  // 900 ms bound was once exceeded on a loaded machine.)
  absl::SleepFor(absl::Seconds(3.5));
  const absl::Time asked = absl::Now();
  auto cancelled = manager_->CancelJob("a", job->id(), absl::Seconds(10));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_LT(absl::Now() - asked, absl::Milliseconds(2500));
  EXPECT_TRUE(adapters_->List("a")->empty());
}

// A job whose adapter waits for the store is not paused: the pause is dropped and answered
// RUNNING at once, not after the whole wait, and the job stays on its device to end.
TEST_F(JobManagerTest, AJobWhoseAdapterWaitsForTheStoreIsNotPaused) {
  RefuseFirst(INT_MAX, StoresAnAdapter,
              absl::ResourceExhaustedError("injected: no space left on device"));
  std::optional<v1::Job> job;
  ASSERT_NO_FATAL_FAILURE(StartAJobUntilItWarns(&job));
  const absl::Time asked = absl::Now();
  auto paused = manager_->PauseJob("a", job->id(), absl::Seconds(20));
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->state(), v1::RUNNING);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(5));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(manager_->GetJob("a", job->id())->state(), v1::RUNNING);
  EXPECT_TRUE(checkpoints_->List()->empty());
  EXPECT_EQ(manager_->CancelJob("a", job->id(), absl::Seconds(10))->state(), v1::CANCELLED);
}

// A running job whose CANCELLED record the store refuses stays on its device, stopped, and
// records the cancel once the store takes it. The cancel used to be lost: the job stayed
// RUNNING, and after a restart trained to its end.
TEST_F(JobManagerTest, ACancelThatCannotBeRecordedYetIsRecordedLater) {
  auto refused = RefuseFirst(
      2, [](const storage::WriteSet& w) { return MovesAJobTo(w, v1::CANCELLED); },
      absl::UnavailableError("injected: no space left on device"));
  JobManagerOptions o = Options("cpu:0", 0, 1);
  o.checkpoint_every = 1;
  StartManager(o);
  auto job = manager_->CreateJob(T("a"), Request("a", 100000));
  ASSERT_TRUE(job.ok()) << job.status();
  WaitFor("a", job->id(), [](const v1::Job& j) { return j.steps_completed() >= 1; });
  (void)manager_->CancelJob("a", job->id());
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::CANCELLED) << done.error().message();
  EXPECT_EQ(refused->load(), 3);
  EXPECT_LT(done.steps_completed(), 100);  // it stopped training while it waited
  EXPECT_TRUE(AnyContains(Warnings(*jobs_, "a", job->id()), "its cancellation cannot be stored"));
  EXPECT_TRUE(checkpoints_->List()->empty());
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
}

// A start whose RUNNING write the store refuses (a full disk) is the store's failure, not the
// job's: the job waits in the queue and starts once the store takes writes again. It used to
// stay QUEUED, never tried again until a restart. A job queued behind it is not held up.
TEST_F(JobManagerTest, AJobWhoseStartCannotBeStoredStartsOnceTheStoreMends) {
  auto refused = std::make_shared<std::atomic<int>>(0);
  SetWriteFault([refused](const storage::WriteSet& w) {
    bool starts_a = false;  // tenant a's job, moving to RUNNING
    w.ForEach([&](storage::Family f, std::string_view, std::string_view value) {
      v1::Job j;
      starts_a |= f == storage::Family::kJobs &&
                  j.ParseFromArray(value.data(), static_cast<int>(value.size())) &&
                  j.tenant() == "a" && j.state() == v1::RUNNING;
    });
    if (starts_a && refused->load() < 2) {  // the first two starts
      ++*refused;
      return absl::ResourceExhaustedError("injected: no space left on device");
    }
    return absl::OkStatus();
  });
  // One device, one job at a time: the second job starts only if the first stops blocking.
  StartManager(Options("cpu:0", 0, 1));
  auto first = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = manager_->CreateJob(T("b"), Request("b", 2));
  ASSERT_TRUE(second.ok()) << second.status();
  const v1::Job second_done = WaitFor("b", second->id(), HasEnded);
  EXPECT_EQ(second_done.state(), v1::SUCCEEDED) << second_done.error().message();
  const v1::Job done = WaitFor("a", first->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  EXPECT_EQ(done.steps_completed(), 3);
  EXPECT_EQ(refused->load(), 2);
  // b went past it while it waited out its pauses: b ended before a started.
  const auto when = [&](const std::string& tenant, const std::string& id, v1::JobState to) {
    for (const v1::JobEvent& e : EventsOf(*jobs_, tenant, id)) {
      if (e.has_state_change() && e.state_change().to() == to) {
        return TimeUtil::TimestampToNanoseconds(e.time());
      }
    }
    return int64_t{-1};
  };
  const int64_t b_ended = when("b", second->id(), v1::SUCCEEDED);
  const int64_t a_started = when("a", first->id(), v1::RUNNING);
  ASSERT_GT(b_ended, 0);
  EXPECT_LT(b_ended, a_started);
}

// An INTERNAL store error (RocksDB's unclassified I/O errors) may be for good: a start meeting
// it is tried five times (about 30 s), then the job fails as the system's fault with the
// store's error, never as the user's input.
TEST_F(JobManagerTest, AStartThatKeepsMeetingAnInternalStoreErrorFailsAsTheSystems) {
  SetWriteFault([](const storage::WriteSet& w) {
    return MovesAJobTo(w, v1::RUNNING) ? absl::InternalError("injected: input/output error")
                                       : absl::OkStatus();
  });
  StartManager(Options("cpu:0"));
  auto job = manager_->CreateJob(T("a"), Request("a", 2));
  ASSERT_TRUE(job.ok()) << job.status();
  // 31 s of pauses by design (1, 2, 4, 8, 16 s), and six starts on a loaded machine.
  const v1::Job done = WaitFor("a", job->id(), HasEnded, absl::Seconds(150));
  EXPECT_EQ(done.state(), v1::FAILED);
  EXPECT_EQ(done.error().code(), "INTERNAL");
  EXPECT_NE(done.error().message().find("injected: input/output error"), std::string::npos);
  EXPECT_FALSE(done.error().user_error());
  EXPECT_EQ(db_->failed_writes(), 6);  // the first start and five tries
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
}

// A cancel of a queued job whose CANCELLED write fails (a full disk) leaves the job in the
// queue with its cancel asked, so that its next start ends it. It used to leave the queue at
// once: QUEUED in the store, in no queue and on no worker, until a restart trained it.
TEST_F(JobManagerTest, AQueuedJobWhoseCancelCannotBeStoredIsCancelledOnItsNextStart) {
  auto cancels_refused = std::make_shared<std::atomic<int>>(0);
  SetWriteFault([cancels_refused](const storage::WriteSet& w) {
    if (MovesAJobTo(w, v1::RUNNING)) return absl::UnavailableError("injected: disk busy");
    if (MovesAJobTo(w, v1::CANCELLED) && cancels_refused->fetch_add(1) == 0) {
      return absl::UnavailableError("injected: disk busy");
    }
    return absl::OkStatus();
  });
  StartManager(Options("cpu:0"));
  auto job = manager_->CreateJob(T("a"), Request("a", 3));
  ASSERT_TRUE(job.ok()) << job.status();
  // Its first start fails on the RUNNING write: it waits in the queue for its next try.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (db_->failed_writes() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  auto cancel = manager_->CancelJob("a", job->id(), absl::Seconds(1));
  EXPECT_EQ(cancel.status().code(), absl::StatusCode::kUnavailable) << cancel.status();
  const v1::Job done = WaitFor("a", job->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::CANCELLED);
  EXPECT_EQ(cancels_refused->load(), 2);  // refused once, then stored by its start
  EXPECT_EQ(manager_->ActiveJobs("a"), 0);
}

// CreateJob stores the job (VALIDATING), then queues it. Where the second write fails, the
// client is told, and its retry with the same idempotency key queues that job; before, the retry
// returned it VALIDATING as a success and it never ran.
TEST_F(JobManagerTest, AJobThatCouldNotBeQueuedIsQueuedByTheRetry) {
  RefuseTheFirstQueuedWrite();
  StartManager(Options("cpu:0"));
  v1::CreateJobRequest req = Request("a", 2);
  req.set_idempotency_key("nightly-1");
  auto first = manager_->CreateJob(T("a"), req);
  ASSERT_FALSE(first.ok());
  // ABORTED, which clients send again, not the full disk's RESOURCE_EXHAUSTED, which they take
  // as final.
  EXPECT_EQ(first.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(first.status().message().find("could not be queued"), std::string::npos)
      << first.status();
  EXPECT_NE(first.status().message().find("same idempotency_key"), std::string::npos);
  auto retry = manager_->CreateJob(T("a"), req);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_NE(retry->state(), v1::VALIDATING);
  const v1::Job done = WaitFor("a", retry->id(), HasEnded);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error().message();
  std::string next;
  auto all = manager_->ListJobs("a", {}, {}, 100, "", &next);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);  // the retry queued the stored job, it made no second one
}

// Without an idempotency key the client's retry would make a second job: the one that could not
// be queued is marked FAILED, so that a restart does not train it behind the client's back.
TEST_F(JobManagerTest, AJobWithoutAKeyThatCouldNotBeQueuedEndsFailed) {
  RefuseTheFirstQueuedWrite();
  StartManager(Options("cpu:0"));
  auto first = manager_->CreateJob(T("a"), Request("a", 2));
  ASSERT_FALSE(first.ok());
  EXPECT_NE(first.status().message().find("marked FAILED"), std::string::npos) << first.status();
  std::string next;
  auto all = manager_->ListJobs("a", {}, {}, 100, "", &next);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].state(), v1::FAILED);
  EXPECT_FALSE((*all)[0].error().user_error());
  manager_->Shutdown();
  StartManager(Options("cpu:0"));  // a restart leaves it ended
  EXPECT_EQ(manager_->GetJob("a", (*all)[0].id())->state(), v1::FAILED);
}

// The counters the alerts read exist at 0 from the start: a rate over a series that appears with
// its first event misses that event, and QloradQueueStuck (queued jobs, no token trained) joins
// on the trained-tokens series, so it could not fire before the first token. A job that could
// not be queued counts as failed.
TEST_F(JobManagerTest, CountersStartAtZeroAndEveryEndIsCounted) {
  metrics::Registry registry;
  metrics::DeclareDaemonMetrics(registry);
  RefuseTheFirstQueuedWrite();
  StartManager(Options("cpu:0,cpu:1"), nullptr, &registry);
  const std::string text = registry.Serialize();
  for (const char* series : {"qlorad_jobs_finished_total{result=\"succeeded\"} 0\n",
                             "qlorad_jobs_finished_total{result=\"failed\"} 0\n",
                             "qlorad_jobs_finished_total{result=\"cancelled\"} 0\n",
                             "qlorad_trained_tokens_total{device=\"cpu:0\"} 0\n",
                             "qlorad_trained_tokens_total{device=\"cpu:1\"} 0\n"}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << text;
  }
  EXPECT_FALSE(manager_->CreateJob(T("a"), Request("a", 2)).ok());  // marked FAILED
  EXPECT_NE(registry.Serialize().find("qlorad_jobs_finished_total{result=\"failed\"} 1\n"),
            std::string::npos);
}

// A page holds what was asked for up to 1000 jobs (asking for more gave the default 100).
TEST_F(JobManagerTest, ALargePageIsCutTo1000NotTo100) {
  for (int i = 0; i < 150; ++i) {
    v1::Job j;
    j.set_id("job-" + std::to_string(1000 + i));
    j.set_tenant("a");
    j.set_model("stories");
    ASSERT_TRUE(jobs_->Create(j, "", "").ok());
    ASSERT_TRUE(jobs_->Transition("a", j.id(), JobState::kFailed, "listed only").ok());
  }
  StartManager(Options("cpu:0"));
  std::string next;
  auto page = manager_->ListJobs("a", {}, {}, 5000, "", &next);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->size(), 150u);
  page = manager_->ListJobs("a", {}, {}, 0, "", &next);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->size(), 100u);  // the default
}

// Priority goes before fair share, so a tenant asks for no more than its limit allows: 0 unless
// the tenants file raises it; lowering one's own jobs is always allowed.
TEST_F(JobManagerTest, ATenantAsksForNoHigherPriorityThanItsLimit) {
  StartManager(Options("cpu:0"));
  v1::CreateJobRequest high = Request("a", 3);
  high.set_priority(5);
  auto refused = manager_->CreateJob(T("a"), high);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message().rfind("priority: at most 0 for tenant 'a'", 0), 0u)
      << refused.status();
  v1::CreateJobRequest low = Request("a", 3);
  low.set_priority(-5);
  EXPECT_TRUE(manager_->CreateJob(T("a"), low).ok());
  high = Request("b", 3);
  high.set_priority(10);  // b's limit
  EXPECT_TRUE(manager_->CreateJob(T("b"), high).ok());
}

TEST_F(JobManagerTest, UnknownDevicesAreRefused) {
  JobManagerOptions o;
  o.devices = "gpu0";
  EXPECT_EQ(JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                                checkpoints_.get(), tenants_.get()},
                               o)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  o.devices = "cuda:x";
  EXPECT_EQ(JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                                checkpoints_.get(), tenants_.get()},
                               o)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  if (CudaDeviceCount() == 0) {  // a GPU named where there is none: refused, naming it
    o.devices = "cpu:0,cuda:0";
    auto r = JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                                 checkpoints_.get(), tenants_.get()},
                                o);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("--devices: cuda:0"), absl::string_view::npos)
        << r.status();
  }
  // A device listed twice, also under another spelling: two workers must never share it.
  for (const char* twice : {"cpu:0,cpu:0", "cpu:0,cpu:00"}) {
    o.devices = twice;
    auto r = JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                                 checkpoints_.get(), tenants_.get()},
                                o);
    ASSERT_FALSE(r.ok()) << twice;
    EXPECT_NE(r.status().message().find("cpu:0 is listed twice"), absl::string_view::npos)
        << r.status();
  }
}

// auto takes every GPU; without a usable one it trains on the CPU, and an explicit cuda:N
// says why there is none (the runtime's words: no driver, a driver too old, no GPU).
TEST_F(JobManagerTest, AutoTakesTheGpusOrTheCpuAndSaysWhyThereIsNoGpu) {
  std::string why;
  const int gpus = CudaDeviceCount(&why);
  StartManager(Options("auto"));
  if (gpus > 0) {
    ASSERT_FALSE(manager_->Devices().empty());
    for (const DeviceInfo& d : manager_->Devices()) EXPECT_EQ(d.name.rfind("cuda:", 0), 0u);
    return;
  }
  EXPECT_FALSE(why.empty());
  ASSERT_EQ(manager_->Devices().size(), 1u);
  EXPECT_EQ(manager_->Devices()[0].name, "cpu:0");
  JobManagerOptions o;
  o.devices = "cuda:0";
  auto r = JobManager::Create({jobs_.get(), models_.get(), datasets_.get(), adapters_.get(),
                               checkpoints_.get(), tenants_.get()},
                              o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(why), absl::string_view::npos) << r.status();
}

}  // namespace
}  // namespace qlorad::core
