// Crash and shutdown recovery of the real daemon: a job interrupted by kill -9 or SIGTERM
// resumes from its last checkpoint in RocksDB and ends with the adapter an uninterrupted twin
// produces; nothing stored before the crash is lost.
#include <filesystem>
#include <future>

#include "engine/model_source.h"
#include "engine/peft_adapter.h"
#include "gtest/gtest.h"
#include "qlorad/v1/admin.grpc.pb.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/rpc_client.h"
#include "tests/server/test_dirs.h"

namespace qlorad::testing {
namespace {
namespace fs = std::filesystem;

v1::CreateJobRequest TwinRequest(const std::string& dataset) {
  v1::CreateJobRequest req;
  req.set_model("stories");
  req.set_training_dataset(dataset);
  v1::Hyperparameters* h = req.mutable_hyperparameters();
  h->set_rank(4);
  h->set_alpha(8);
  h->set_dropout(0.1f);  // dropout masks must be regenerated identically after a resume
  h->set_learning_rate(3e-3);
  h->set_max_steps(60);
  h->set_batch_size(8);
  h->set_seq_len(64);
  h->set_seed(11);
  return req;
}

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_ = Stories260kGguf();
    if (gguf_.empty()) GTEST_SKIP() << "stories260K.gguf not found (QLORAD_TEST_MODELS)";
    dir_ = FreshTestDir("recovery");
    // One compute thread: resumes are bitwise only for the same thread count.
    daemon_ = std::make_unique<DaemonProcess>(
        dir_, std::vector<std::string>{"--devices=cpu:0", "--threads-per-device=1",
                                       "--checkpoint-every=5", "--progress-interval=0",
                                       "--inference-threads=1"});
    ASSERT_TRUE(daemon_->Start()) << daemon_->log();
    ASSERT_TRUE(Ops().RegisterModel("stories", gguf_).ok());
    auto ds = Acme().Upload("facts", ReadTestData("facts_train.jsonl"));
    ASSERT_TRUE(ds.ok()) << ds.status();
    dataset_ = ds->id();
  }

  RpcClient Ops() { return RpcClient(daemon_->address(), kOpsKey); }
  RpcClient Acme() { return RpcClient(daemon_->address(), kAcmeKey); }

  // Starts the twin job and waits for a checkpoint at step >= 10 (so there is one to resume).
  std::string StartAndReachCheckpoint() {
    auto job = Acme().CreateJob(TwinRequest(dataset_));
    EXPECT_TRUE(job.ok()) << job.status();
    auto seen = Acme().Watch(job->id(), [](const v1::JobEvent& e) {
      return e.has_checkpoint() && e.checkpoint().step() >= 10;
    });
    EXPECT_TRUE(seen.ok()) << seen.status();
    EXPECT_TRUE(!seen->empty() && seen->back().has_checkpoint()) << daemon_->log();
    return job->id();
  }

  v1::Job WaitForEnd(const std::string& id) {
    auto events = Acme().Watch(id);
    EXPECT_TRUE(events.ok()) << events.status();
    auto job = Acme().GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }

  std::vector<float> AdapterParams(const std::string& adapter_id) {
    const std::string dir = dir_ + "/download-" + adapter_id;
    EXPECT_TRUE(Acme().Download(adapter_id, dir).ok());
    auto source = OpenModelSource(gguf_);
    EXPECT_TRUE(source.ok());
    auto peft = LoadPeftAdapter(dir, source->weights.config);
    EXPECT_TRUE(peft.ok()) << peft.status();
    return peft->params;
  }

  // Runs the same request uninterrupted and checks both adapters agree.
  void ExpectSameAdapterAsTwin(const v1::Job& resumed) {
    ASSERT_EQ(resumed.state(), v1::SUCCEEDED) << resumed.error().message() << daemon_->log();
    auto twin = Acme().CreateJob(TwinRequest(dataset_));
    ASSERT_TRUE(twin.ok()) << twin.status();
    const v1::Job done = WaitForEnd(twin->id());
    ASSERT_EQ(done.state(), v1::SUCCEEDED);
    const std::vector<float> a = AdapterParams(resumed.adapter_id());
    const std::vector<float> b = AdapterParams(done.adapter_id());
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(a.empty());
    float max_diff = 0.0f;
    for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::abs(a[i] - b[i]));
    EXPECT_LE(max_diff, 1e-6f);
    EXPECT_EQ(resumed.steps_completed(), 60);
    EXPECT_EQ(resumed.tokens_trained(), done.tokens_trained());
  }

  // The first step trained after the job went back to the queue: past the checkpoint when
  // the resume really started from it.
  int64_t FirstStepAfterRequeue(const std::vector<v1::JobEvent>& events) {
    bool requeued = false;
    for (const v1::JobEvent& e : events) {
      requeued |= e.has_state_change() && e.state_change().from() == v1::RUNNING &&
                  e.state_change().to() == v1::QUEUED;
      if (requeued && e.has_progress()) return e.progress().step();
    }
    return -1;
  }

  std::string gguf_, dir_, dataset_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(RecoveryTest, KillNineDuringTrainingResumesToTheSameAdapter) {
  // An adapter finished before the crash must survive it unchanged.
  v1::CreateJobRequest small = TwinRequest(dataset_);
  small.mutable_hyperparameters()->set_max_steps(5);
  auto first = Acme().CreateJob(small);
  ASSERT_TRUE(first.ok());
  const v1::Job first_done = WaitForEnd(first->id());
  ASSERT_EQ(first_done.state(), v1::SUCCEEDED);
  const std::vector<float> first_params = AdapterParams(first_done.adapter_id());

  const std::string id = StartAndReachCheckpoint();
  EXPECT_EQ(daemon_->Stop(SIGKILL), 128 + SIGKILL);
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  const v1::Job resumed = WaitForEnd(id);
  ExpectSameAdapterAsTwin(resumed);

  // The history tells what happened: RUNNING -> QUEUED on restart, then RUNNING again from the
  // checkpoint.
  auto events = Acme().Watch(id);
  ASSERT_TRUE(events.ok());
  bool requeued = false, resumed_from_checkpoint = false;
  for (const v1::JobEvent& e : *events) {
    if (!e.has_state_change()) continue;
    const auto& sc = e.state_change();
    requeued |= sc.from() == v1::RUNNING && sc.to() == v1::QUEUED &&
                sc.reason().find("restarted") != std::string::npos;
    resumed_from_checkpoint |= sc.to() == v1::RUNNING &&
                               sc.reason().find("resumed from the checkpoint") != std::string::npos;
  }
  EXPECT_TRUE(requeued);
  EXPECT_TRUE(resumed_from_checkpoint);
  EXPECT_GT(FirstStepAfterRequeue(*events), 10);
  EXPECT_EQ(AdapterParams(first_done.adapter_id()), first_params);
  auto datasets = Acme().ListDatasets();
  ASSERT_TRUE(datasets.ok());
  EXPECT_EQ(datasets->size(), 1u);
}

TEST_F(RecoveryTest, SigtermCheckpointsRunningJobsAndTheyResume) {
  const std::string id = StartAndReachCheckpoint();
  // A watch open across the stop is told why it ends and how to go on, not "cancelled".
  std::promise<void> replaying;  // the watch is open on the daemon once an event came back
  auto watch = std::async(std::launch::async, [&] {
    bool first = true;
    return Acme().Watch(id, [&](const v1::JobEvent&) {
      if (first) replaying.set_value();
      first = false;
      return false;  // keep watching
    });
  });
  ASSERT_EQ(replaying.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->log();
  const absl::StatusOr<std::vector<v1::JobEvent>> watched = watch.get();
  EXPECT_EQ(watched.status().code(), absl::StatusCode::kUnavailable) << watched.status();
  EXPECT_NE(watched.status().message().find("shutting down"), std::string::npos)
      << watched.status();
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  const v1::Job resumed = WaitForEnd(id);
  ExpectSameAdapterAsTwin(resumed);
  auto events = Acme().Watch(id);
  ASSERT_TRUE(events.ok());
  bool shutdown_requeue = false;
  for (const v1::JobEvent& e : *events) {
    shutdown_requeue |= e.has_state_change() && e.state_change().to() == v1::QUEUED &&
                        e.state_change().reason().find("shutting down") != std::string::npos;
  }
  EXPECT_TRUE(shutdown_requeue);
  EXPECT_GT(FirstStepAfterRequeue(*events), 10);
}

absl::StatusOr<v1::BackupDatabaseResponse> Backup(const std::string& address,
                                                  const std::string& key, const std::string& path) {
  client::ConnectionOptions o;
  o.server = address;
  o.token = key;
  auto channel = client::CreateChannel(o);
  auto context = client::MakeClientContext(o, absl::Seconds(120));
  v1::BackupDatabaseRequest req;
  req.set_path(path);
  v1::BackupDatabaseResponse out;
  absl::Status s = client::ToAbslStatus(
      v1::AdminService::NewStub(*channel)->BackupDatabase(context.get(), req, &out));
  if (!s.ok()) return s;
  return out;
}

TEST_F(RecoveryTest, ABackupTakenWhileServingRestoresIntoANewDaemon) {
  v1::CreateJobRequest small = TwinRequest(dataset_);
  small.mutable_hyperparameters()->set_max_steps(5);
  auto job = Acme().CreateJob(small);
  ASSERT_TRUE(job.ok());
  const v1::Job done = WaitForEnd(job->id());
  ASSERT_EQ(done.state(), v1::SUCCEEDED);
  const std::vector<float> params = AdapterParams(done.adapter_id());

  // In a folder that does not exist yet (the docs' /var/lib/qlorad/backups/DATE on a new node).
  const std::string backup = dir_ + "/backups/1";
  EXPECT_EQ(Backup(daemon_->address(), kAcmeKey, backup).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Backup(daemon_->address(), kOpsKey, "relative/dir").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto taken = Backup(daemon_->address(), kOpsKey, backup);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_GT(taken->bytes(), 0);
  EXPECT_EQ(Backup(daemon_->address(), kOpsKey, backup).status().code(),
            absl::StatusCode::kAlreadyExists);
  // A trailing slash names the same kind of folder (RocksDB refused it once its parent was made).
  auto slashed = Backup(daemon_->address(), kOpsKey, dir_ + "/backups/2/");
  ASSERT_TRUE(slashed.ok()) << slashed.status();
  EXPECT_GT(slashed->bytes(), 0);

  // Restore: the backup folder becomes the database of a fresh daemon.
  const std::string restored_dir = dir_ + "-restored";
  std::filesystem::remove_all(restored_dir);
  std::filesystem::create_directories(restored_dir + "/data");
  std::filesystem::rename(backup, restored_dir + "/data/db");
  DaemonProcess restored(restored_dir, {"--devices=cpu:0", "--threads-per-device=1"});
  ASSERT_TRUE(restored.Start()) << restored.log();
  RpcClient acme(restored.address(), kAcmeKey);
  auto again = acme.GetJob(job->id());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->state(), v1::SUCCEEDED);
  EXPECT_EQ(again->adapter_id(), done.adapter_id());
  const std::string dl = restored_dir + "/adapter";
  ASSERT_TRUE(acme.Download(done.adapter_id(), dl).ok());
  auto source = OpenModelSource(gguf_);
  auto peft = LoadPeftAdapter(dl, source->weights.config);
  ASSERT_TRUE(peft.ok()) << peft.status();
  EXPECT_EQ(peft->params, params);
  auto datasets = acme.ListDatasets();
  ASSERT_TRUE(datasets.ok());
  EXPECT_EQ(datasets->size(), 1u);
  EXPECT_EQ(restored.Stop(SIGTERM), 0);
  std::filesystem::remove_all(restored_dir);
}

// With --job-retention-days, a finished job is deleted once it ended that long ago: at the start
// for one that ended before, and by the periodic sweep for one that ends while the daemon runs.
// Their adapters stay.
TEST_F(RecoveryTest, FinishedJobsPastTheRetentionAreDeletedAndTheirAdaptersKept) {
  v1::CreateJobRequest small = TwinRequest(dataset_);
  small.mutable_hyperparameters()->set_max_steps(3);
  auto before = Acme().CreateJob(small);
  ASSERT_TRUE(before.ok()) << before.status();
  const v1::Job ended = WaitForEnd(before->id());
  ASSERT_EQ(ended.state(), v1::SUCCEEDED);
  ASSERT_EQ(daemon_->Stop(SIGTERM), 0);
  absl::SleepFor(absl::Seconds(4.5));

  // 0.00005 days is 4.32 s, swept every second: time enough to read the second job's end below
  // before it goes, on a loaded machine too.
  daemon_ = std::make_unique<DaemonProcess>(
      dir_, std::vector<std::string>{"--devices=cpu:0", "--threads-per-device=1",
                                     "--job-retention-days=0.00005"});
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  auto gone = [&](const std::string& id) {
    for (int i = 0; i < 200; ++i) {
      if (absl::IsNotFound(Acme().GetJob(id).status())) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  };
  EXPECT_TRUE(gone(ended.id())) << daemon_->log();
  // A job that ends now is kept for the retention, then swept.
  auto after = Acme().CreateJob(small);
  ASSERT_TRUE(after.ok()) << after.status();
  const v1::Job done = WaitForEnd(after->id());
  ASSERT_EQ(done.state(), v1::SUCCEEDED);
  EXPECT_TRUE(gone(done.id())) << daemon_->log();
  // Once at the start, once by a later sweep.
  const std::string log = daemon_->log();
  const std::string line = "qlorad: deleted 1 jobs that ended over";
  const size_t first = log.find(line);
  ASSERT_NE(first, std::string::npos) << log;
  EXPECT_NE(log.find(line, first + 1), std::string::npos) << log;
  for (const std::string& adapter : {ended.adapter_id(), done.adapter_id()}) {
    EXPECT_FALSE(AdapterParams(adapter).empty()) << adapter;
  }
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0);
}

TEST_F(RecoveryTest, CancelStopsARunningJobWithinAStep) {
  v1::CreateJobRequest req = TwinRequest(dataset_);
  req.mutable_hyperparameters()->set_max_steps(100000);
  auto job = Acme().CreateJob(req);
  ASSERT_TRUE(job.ok());
  auto seen = Acme().Watch(job->id(), [](const v1::JobEvent& e) {
    return e.has_progress() && e.progress().step() >= 3;
  });
  ASSERT_TRUE(seen.ok());
  auto cancelled = Acme().CancelJob(job->id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_LT(cancelled->steps_completed(), 100000);
  // Cancelling again is idempotent; the job keeps no adapter.
  auto again = Acme().CancelJob(job->id());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->state(), v1::CANCELLED);
  EXPECT_TRUE(again->adapter_id().empty());
}

}  // namespace
}  // namespace qlorad::testing
