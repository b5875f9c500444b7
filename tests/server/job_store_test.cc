#include "server/core/job_store.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/server/test_dirs.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qlorad::testing::FreshTestDir("jobstore");
    Reopen();
  }
  void Reopen(const storage::KvStoreOptions& options = {}) {
    store_.reset();
    db_.reset();
    auto db = storage::KvStore::Open(dir_, options);
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = std::move(*db);
    store_ = std::make_unique<JobStore>(db_.get());
  }
  static v1::Job NewJob(const std::string& tenant, const std::string& id) {
    v1::Job j;
    j.set_tenant(tenant);
    j.set_id(id);
    j.set_model("stories260K");
    return j;
  }
  std::string dir_;
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, LifecycleWritesOneEventPerChangeAndSurvivesReopen) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "job-1"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "job-1", JobState::kQueued, "validated").ok());
  ASSERT_TRUE(store_
                  ->Transition("acme", "job-1", JobState::kRunning, "placed on cpu:0",
                               [](v1::Job& j) { j.set_device("cpu:0"); })
                  .ok());
  v1::JobEvent progress;
  progress.mutable_progress()->set_step(5);
  progress.mutable_progress()->set_loss(1.25);
  ASSERT_TRUE(store_
                  ->Record(
                      "acme", "job-1", [](v1::Job& j) { j.set_steps_completed(5); }, progress)
                  .ok());
  Reopen();
  auto job = store_->Get("acme", "job-1");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::RUNNING);
  EXPECT_EQ(job->device(), "cpu:0");
  EXPECT_EQ(job->steps_completed(), 5);
  EXPECT_TRUE(job->has_start_time());
  auto events = store_->Events("acme", "job-1", 0, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 4u);
  EXPECT_EQ((*events)[0].state_change().to(), v1::VALIDATING);
  EXPECT_EQ((*events)[2].state_change().from(), v1::QUEUED);
  EXPECT_EQ((*events)[2].state_change().to(), v1::RUNNING);
  EXPECT_EQ((*events)[3].progress().step(), 5);
  for (size_t i = 0; i < events->size(); ++i)
    EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
  auto after = store_->Events("acme", "job-1", 2, 1);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ((*after)[0].sequence(), 3);
}

// TransitionAlong takes a job along several edges in one write, one event an edge, from where
// its state lies on the path (from the start where it does not); an illegal edge or a refused
// write leaves the job and its events as they were.
TEST_F(JobStoreTest, TransitionAlongTakesEveryEdgeInOneWriteOrNone) {
  // Refused: a write that records a job SUCCEEDED. Edge by edge, the first two would land.
  auto refuse = std::make_shared<std::atomic<bool>>(false);
  storage::KvStoreOptions options;
  options.write_fault = [refuse](const storage::WriteSet& w) {
    bool succeeds = false;
    w.ForEach([&](storage::Family f, std::string_view, std::string_view value) {
      v1::Job j;
      succeeds |= f == storage::Family::kJobs &&
                  j.ParseFromArray(value.data(), static_cast<int>(value.size())) &&
                  j.state() == v1::SUCCEEDED;
    });
    return refuse->load() && succeeds ? absl::ResourceExhaustedError("injected: no space left")
                                      : absl::OkStatus();
  };
  Reopen(options);
  const std::vector<JobState> to_success = {JobState::kQueued, JobState::kRunning,
                                            JobState::kSucceeded};
  auto adapter = [](v1::Job& j) { j.set_adapter_id("ad-1"); };
  // A paused job: through all three.
  ASSERT_TRUE(store_->Create(NewJob("acme", "paused"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "paused", JobState::kQueued, "validated").ok());
  ASSERT_TRUE(store_->Transition("acme", "paused", JobState::kPaused, "paused").ok());
  refuse->store(true);
  const auto refused = store_->TransitionAlong("acme", "paused", to_success, "late", adapter);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_EQ(store_->Get("acme", "paused")->state(), v1::PAUSED);
  EXPECT_EQ(store_->Events("acme", "paused", 0, 0)->size(), 3u);
  refuse->store(false);
  auto done = store_->TransitionAlong("acme", "paused", to_success, "late", adapter);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::SUCCEEDED);
  EXPECT_EQ(done->adapter_id(), "ad-1");
  EXPECT_TRUE(done->has_start_time());
  EXPECT_TRUE(done->has_end_time());
  auto events = store_->Events("acme", "paused", 0, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 6u);
  const v1::JobState want[3][2] = {
      {v1::PAUSED, v1::QUEUED}, {v1::QUEUED, v1::RUNNING}, {v1::RUNNING, v1::SUCCEEDED}};
  for (int i = 0; i < 3; ++i) {
    const v1::JobEvent& e = (*events)[3 + i];
    EXPECT_EQ(e.sequence(), 4 + i);
    EXPECT_EQ(e.state_change().from(), want[i][0]);
    EXPECT_EQ(e.state_change().to(), want[i][1]);
    EXPECT_EQ(e.state_change().reason(), "late");
  }
  // A running job: the last edge only. One at the path's end, or past it: refused.
  ASSERT_TRUE(store_->Create(NewJob("acme", "running"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "running", JobState::kQueued, "validated").ok());
  ASSERT_TRUE(store_->Transition("acme", "running", JobState::kRunning, "placed").ok());
  ASSERT_TRUE(store_->TransitionAlong("acme", "running", to_success, "late").ok());
  EXPECT_EQ(store_->Events("acme", "running", 0, 0)->size(), 4u);
  EXPECT_EQ(store_->TransitionAlong("acme", "running", to_success, "again").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // An illegal edge (QUEUED to SUCCEEDED) changes nothing.
  ASSERT_TRUE(store_->Create(NewJob("acme", "queued"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "queued", JobState::kQueued, "validated").ok());
  EXPECT_EQ(
      store_->TransitionAlong("acme", "queued", {JobState::kSucceeded}, "skip").status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Get("acme", "queued")->state(), v1::QUEUED);
  EXPECT_EQ(store_->Events("acme", "queued", 0, 0)->size(), 2u);
}

TEST_F(JobStoreTest, IllegalTransitionsAreRefusedAndChangeNothing) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "j"), "", "").ok());
  auto bad = store_->Transition("acme", "j", JobState::kSucceeded, "skipping ahead");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->Transition("acme", "j", JobState::kCancelled, "user").ok());
  EXPECT_EQ(store_->Transition("acme", "j", JobState::kQueued, "again").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Get("acme", "j")->state(), v1::CANCELLED);
  EXPECT_TRUE(store_->Get("acme", "j")->has_end_time());
  EXPECT_EQ(store_->Events("acme", "j", 0, 0)->size(), 2u);
  // Record may not sneak in a state change.
  EXPECT_FALSE(
      store_->Record("acme", "j", [](v1::Job& job) { job.set_state(v1::RUNNING); }, {}).ok());
}

TEST_F(JobStoreTest, TenantsAreIsolated) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "j1"), "", "").ok());
  ASSERT_TRUE(store_->Create(NewJob("acme2", "j2"), "", "").ok());
  EXPECT_EQ(store_->Get("acme2", "j1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Events("acme2", "j1", 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Transition("acme2", "j1", JobState::kQueued, "").status().code(),
            absl::StatusCode::kNotFound);
  auto listed = store_->List("acme", {}, 0, "");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);  // "acme/" does not prefix "acme2/"
  EXPECT_EQ((*listed)[0].id(), "j1");
  EXPECT_EQ(store_->Get("acme", "../acme2/j2").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, IdempotencyKeyReturnsTheSameJobOrRefusesAnotherRequest) {
  auto first = store_->Create(NewJob("acme", "j1"), "key-1", "request-A");
  ASSERT_TRUE(first.ok());
  auto again = store_->Create(NewJob("acme", "j2"), "key-1", "request-A");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id(), "j1");
  EXPECT_EQ(store_->Get("acme", "j2").status().code(), absl::StatusCode::kNotFound);
  auto other = store_->Create(NewJob("acme", "j3"), "key-1", "request-B");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  // Keys are per tenant.
  EXPECT_TRUE(store_->Create(NewJob("beta", "j4"), "key-1", "request-B").ok());
}

// A finished job's record, events, event counter and idempotency key all go; another tenant's
// delete and one of an unfinished job change nothing.
TEST_F(JobStoreTest, DeleteRemovesAFinishedJobAndFreesItsKey) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "j1"), "key-1", "request-A").ok());
  ASSERT_TRUE(store_->Create(NewJob("acme", "j2"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "j1", JobState::kQueued, "validated").ok());
  const absl::Status unfinished = store_->Delete("acme", "j1");
  EXPECT_EQ(unfinished.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unfinished.message().find("job j1 is QUEUED"), absl::string_view::npos) << unfinished;
  ASSERT_TRUE(store_->Transition("acme", "j1", JobState::kCancelled, "cancelled").ok());
  EXPECT_EQ(store_->Delete("beta", "j1").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(*store_->IdempotencyKeyUsed("acme", "key-1"));
  ASSERT_EQ(store_->Events("acme", "j1", 0, 0)->size(), 3u);

  ASSERT_TRUE(store_->Delete("acme", "j1").ok());
  EXPECT_EQ(store_->Get("acme", "j1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Events("acme", "j1", 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("acme", "j1").code(), absl::StatusCode::kNotFound);
  int left = 0;  // nothing of j1 is left in any family
  for (storage::Family f :
       {storage::Family::kJobs, storage::Family::kEvents, storage::Family::kMeta}) {
    ASSERT_TRUE(db_->Scan(f, "",
                          [&](std::string_view key, std::string_view value) {
                            left += key.find("j1") != std::string_view::npos ||
                                    value.find("j1") != std::string_view::npos;
                            return true;
                          })
                    .ok());
  }
  EXPECT_EQ(left, 0);
  EXPECT_TRUE(store_->Get("acme", "j2").ok());
  // The key is free: a create with it, even for another request, makes a new job.
  EXPECT_FALSE(*store_->IdempotencyKeyUsed("acme", "key-1"));
  auto again = store_->Create(NewJob("acme", "j3"), "key-1", "request-B");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), "j3");
}

// A key stored before deletes freed keys (no reverse record) still frees once its job is gone.
TEST_F(JobStoreTest, AKeyWhoseJobIsGoneIsFree) {
  ASSERT_TRUE(db_->Put(storage::Family::kMeta, "idem/acme/old-key", "j-gone\nrequest-A").ok());
  EXPECT_FALSE(*store_->IdempotencyKeyUsed("acme", "old-key"));
  auto created = store_->Create(NewJob("acme", "j1"), "old-key", "request-B");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->id(), "j1");
  EXPECT_EQ(store_->Create(NewJob("acme", "j2"), "old-key", "request-B")->id(), "j1");
}

// Retention finds the finished jobs that ended before the cutoff, of every tenant, up to a limit.
TEST_F(JobStoreTest, FinishedBeforeFindsOnlyJobsThatEndedBeforeTheCutoff) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "old"), "", "").ok());
  ASSERT_TRUE(store_->Create(NewJob("beta", "old2"), "", "").ok());
  ASSERT_TRUE(store_->Create(NewJob("acme", "running"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "old", JobState::kFailed, "").ok());
  ASSERT_TRUE(store_->Transition("beta", "old2", JobState::kCancelled, "").ok());
  ASSERT_TRUE(store_->Transition("acme", "running", JobState::kQueued, "").ok());
  absl::SleepFor(absl::Milliseconds(20));
  const absl::Time cutoff = absl::Now();
  absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(store_->Create(NewJob("acme", "new"), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "new", JobState::kFailed, "").ok());
  auto found = store_->FinishedBefore(cutoff, 100);
  ASSERT_TRUE(found.ok()) << found.status();
  using Ids = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(*found, (Ids{{"acme", "old"}, {"beta", "old2"}}));
  EXPECT_EQ(*store_->FinishedBefore(cutoff, 1), (Ids{{"acme", "old"}}));
  // In batches: each goes on where the last one stopped, and the last comes back short.
  std::string cursor;
  EXPECT_EQ(*store_->FinishedBefore(cutoff, 1, &cursor), (Ids{{"acme", "old"}}));
  EXPECT_EQ(*store_->FinishedBefore(cutoff, 1, &cursor), (Ids{{"beta", "old2"}}));
  EXPECT_TRUE(store_->FinishedBefore(cutoff, 1, &cursor)->empty());
  EXPECT_EQ(store_->FinishedBefore(absl::Now(), 100)->size(), 3u);
}

TEST_F(JobStoreTest, ListFiltersPagesAndFindsUnfinishedJobs) {
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(store_->Create(NewJob("acme", "j" + std::to_string(i)), "", "").ok());
  ASSERT_TRUE(store_->Transition("acme", "j1", JobState::kQueued, "").ok());
  ASSERT_TRUE(store_->Transition("acme", "j2", JobState::kFailed, "").ok());
  auto queued = store_->List("acme", {v1::QUEUED}, 0, "");
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->size(), 1u);
  auto page1 = store_->List("acme", {}, 2, "");
  auto page2 = store_->List("acme", {}, 2, (*page1)[1].id());
  ASSERT_TRUE(page1.ok() && page2.ok());
  EXPECT_EQ((*page1)[0].id(), "j0");
  EXPECT_EQ((*page2)[0].id(), "j2");
  auto bad = store_->List("acme", {}, 2, "../beta");  // never a token a listing gives
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("page_token"), absl::string_view::npos) << bad.status();
  auto unfinished = store_->Unfinished();
  ASSERT_TRUE(unfinished.ok());
  EXPECT_EQ(unfinished->size(), 4u);  // all but the failed one
}

// One damaged record is left out, not every job: it used to end Unfinished with DATA_LOSS, so
// the daemon did not start and no tenant could delete a dataset. A tenant's jobs are its own.
TEST_F(JobStoreTest, UnfinishedSkipsADamagedRecordAndFiltersByTenant) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "j1"), "", "").ok());
  ASSERT_TRUE(store_->Create(NewJob("acme2", "j2"), "", "").ok());
  ASSERT_TRUE(store_->Create(NewJob("beta", "j3"), "", "").ok());
  ASSERT_TRUE(db_->Put(storage::Family::kJobs, "beta/j4", "\xff\xff not a job").ok());
  auto all = store_->Unfinished();
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> ids;
  for (const v1::Job& j : *all) ids.push_back(j.id());
  EXPECT_EQ(ids, (std::vector<std::string>{"j1", "j2", "j3"}));
  auto acme = store_->Unfinished("acme");
  ASSERT_TRUE(acme.ok()) << acme.status();
  ASSERT_EQ(acme->size(), 1u);  // not acme2's
  EXPECT_EQ((*acme)[0].id(), "j1");
}

// The counts a scrape reads are counted once, then kept by the store's writes: after jobs are
// created, moved through states, refused an illegal move and recorded, they equal a fresh count
// of the stored records (a store reopened on the same database).
TEST_F(JobStoreTest, CountsByStateStayEqualToTheStoredRecords) {
  ASSERT_TRUE(store_->Create(NewJob("acme", "job-0"), "", "").ok());
  auto before = store_->CountByState();  // counted now, kept from here on
  ASSERT_TRUE(before.ok());
  EXPECT_EQ((*before)[v1::VALIDATING], 1);
  for (int i = 1; i <= 4; ++i) {
    ASSERT_TRUE(store_->Create(NewJob("acme", "job-" + std::to_string(i)), "", "").ok());
  }
  ASSERT_TRUE(store_->Create(NewJob("globex", "job-9"), "k", "fp").ok());
  ASSERT_TRUE(store_->Create(NewJob("globex", "job-10"), "k", "fp").ok());  // the same job back
  for (const char* id : {"job-1", "job-2", "job-3"}) {
    ASSERT_TRUE(store_->Transition("acme", id, JobState::kQueued, "validated").ok());
  }
  ASSERT_TRUE(store_->Transition("acme", "job-2", JobState::kRunning, "placed").ok());
  ASSERT_TRUE(store_->Transition("acme", "job-3", JobState::kCancelled, "cancelled").ok());
  EXPECT_FALSE(store_->Transition("acme", "job-3", JobState::kRunning, "illegal").ok());
  v1::JobEvent progress;
  progress.mutable_progress()->set_step(1);
  ASSERT_TRUE(store_
                  ->Record(
                      "acme", "job-2", [](v1::Job&) {}, progress)
                  .ok());
  ASSERT_TRUE(store_->Transition("acme", "job-4", JobState::kFailed, "bad data").ok());
  ASSERT_TRUE(store_->Delete("acme", "job-4").ok());   // FAILED: none left
  EXPECT_FALSE(store_->Delete("acme", "job-2").ok());  // RUNNING: refused, still counted
  const auto kept = store_->CountByState();
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->at(v1::VALIDATING), 2);  // job-0, job-9
  EXPECT_EQ(kept->at(v1::QUEUED), 1);
  EXPECT_EQ(kept->at(v1::RUNNING), 1);
  EXPECT_EQ(kept->at(v1::CANCELLED), 1);
  EXPECT_EQ(kept->count(v1::FAILED), 0u);
  Reopen();
  EXPECT_EQ(*store_->CountByState(), *kept);
  // Made by the daemon's start-up scan of every record (Unfinished), the same; a tenant's
  // scan makes none (then the first count scans).
  Reopen();
  ASSERT_EQ(store_->Unfinished("acme")->size(), 3u);  // job-0, job-1, job-2
  ASSERT_EQ(store_->Unfinished()->size(), 4u);        // and globex's job-9
  ASSERT_TRUE(store_->Create(NewJob("globex", "job-11"), "", "").ok());
  auto after_start = *kept;
  ++after_start[v1::VALIDATING];
  EXPECT_EQ(*store_->CountByState(), after_start);
}

// A write that RocksDB holds up (a write stall) holds the store's writers; the counts a scrape
// reads do not wait behind it. They used to share the writers' lock, so /metrics hung for the
// whole stall and Prometheus read the daemon as down.
TEST_F(JobStoreTest, CountsAreReadWhileAWriteIsHeldUp) {
  store_.reset();
  db_.reset();
  auto release = std::make_shared<absl::Notification>();
  auto held = std::make_shared<absl::Notification>();
  storage::KvStoreOptions o;
  o.write_fault = [release, held](const storage::WriteSet& w) {
    bool progress = false;
    w.ForEach([&](storage::Family f, std::string_view, std::string_view value) {
      v1::JobEvent e;
      progress |= f == storage::Family::kEvents &&
                  e.ParseFromArray(value.data(), static_cast<int>(value.size())) &&
                  e.has_progress();
    });
    if (progress && !release->HasBeenNotified()) {
      held->Notify();
      release->WaitForNotificationWithTimeout(absl::Seconds(30));
    }
    return absl::OkStatus();
  };
  auto db = storage::KvStore::Open(dir_, o);
  ASSERT_TRUE(db.ok()) << db.status();
  db_ = std::move(*db);
  store_ = std::make_unique<JobStore>(db_.get());
  ASSERT_TRUE(store_->Create(NewJob("acme", "job-0"), "", "").ok());
  ASSERT_TRUE(store_->CountByState().ok());  // the first count
  std::thread writer([&] {
    v1::JobEvent progress;
    progress.mutable_progress()->set_step(1);
    (void)store_->Record(
        "acme", "job-0", [](v1::Job&) {}, progress);
  });
  ASSERT_TRUE(held->WaitForNotificationWithTimeout(absl::Seconds(10)));
  const absl::Time start = absl::Now();
  auto counts = store_->CountByState();
  const absl::Duration waited = absl::Now() - start;
  release->Notify();
  writer.join();
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->at(v1::VALIDATING), 1);
  EXPECT_LT(waited, absl::Seconds(1));
}

}  // namespace
}  // namespace qlorad::core
