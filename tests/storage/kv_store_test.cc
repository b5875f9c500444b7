#include "storage/kv_store.h"

#include <rocksdb/file_system.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/storage/blob_read_counting_disk.h"

namespace qlorad::storage {
namespace {
namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("qlorad_kv_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  return dir.string();
}

// The keys of `f` under `prefix`, in order.
std::vector<std::string> Keys(const KvStore& db, Family f, std::string_view prefix) {
  std::vector<std::string> keys;
  const absl::Status s = db.Scan(f, prefix, [&](std::string_view k, std::string_view) {
    keys.emplace_back(k);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s;
  return keys;
}

TEST(KvStore, ValuesSurviveReopenAndFamiliesAreSeparate) {
  const std::string dir = FreshDir("reopen");
  {
    auto db = KvStore::Open(dir);
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->Put(Family::kJobs, "acme/job-1", "running").ok());
    ASSERT_TRUE((*db)->Put(Family::kAdapters, "acme/job-1", "other family").ok());
    // A large value goes to a blob file and reads back whole.
    ASSERT_TRUE((*db)->Put(Family::kDatasets, "acme/ds-1", std::string(300000, 'x')).ok());
  }
  auto db = KvStore::Open(dir);
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_EQ(*(*db)->Get(Family::kJobs, "acme/job-1"), "running");
  EXPECT_EQ(*(*db)->Get(Family::kAdapters, "acme/job-1"), "other family");
  EXPECT_EQ((*db)->Get(Family::kDatasets, "acme/ds-1")->size(), 300000u);
  EXPECT_EQ((*db)->Get(Family::kModels, "acme/job-1").status().code(), absl::StatusCode::kNotFound);
}

TEST(KvStore, WriteSetIsAtomicAndDeletePrefixRemovesOneRangeOnly) {
  auto db = KvStore::Open(FreshDir("batch"));
  ASSERT_TRUE(db.ok());
  WriteSet w;
  for (const char* k :
       {"t1/a1/meta", "t1/a1/file/adapter_config.json", "t1/a10/meta", "t2/a1/meta"}) {
    w.Put(Family::kAdapters, k, k);
  }
  w.Put(Family::kJobs, "t1/j1", "SUCCEEDED");
  ASSERT_TRUE((*db)->Write(w).ok());
  WriteSet del;
  del.DeletePrefix(Family::kAdapters, "t1/a1/");
  del.Put(Family::kJobs, "t1/j1", "adapter deleted");
  ASSERT_TRUE((*db)->Write(del).ok());
  EXPECT_EQ(Keys(**db, Family::kAdapters, ""),
            (std::vector<std::string>{"t1/a10/meta", "t2/a1/meta"}));
  EXPECT_EQ(*(*db)->Get(Family::kJobs, "t1/j1"), "adapter deleted");
}

TEST(KvStore, ScanIsOrderedPrefixBoundAndResumable) {
  auto db = KvStore::Open(FreshDir("scan"));
  ASSERT_TRUE(db.ok());
  for (int i = 0; i < 15; ++i) {
    ASSERT_TRUE(
        (*db)
            ->Put(Family::kEvents, *StoreKey({"t", "j", SequenceKeyPart(i)}), std::to_string(i))
            .ok());
  }
  ASSERT_TRUE((*db)->Put(Family::kEvents, "t/j2/x", "other job").ok());
  std::vector<std::string> seen;
  auto collect = [&](std::string_view, std::string_view v) {
    seen.emplace_back(v);
    return seen.size() < 5;
  };
  ASSERT_TRUE((*db)->Scan(Family::kEvents, "t/j/", collect).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
  seen.clear();
  ASSERT_TRUE((*db)
                  ->Scan(
                      Family::kEvents, "t/j/",
                      [&](std::string_view, std::string_view v) {
                        seen.emplace_back(v);
                        return true;
                      },
                      *StoreKey({"t", "j", SequenceKeyPart(12)}))
                  .ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"13", "14"}));  // numeric order, other job excluded
}

// A write the fault refuses stores nothing of its set and is counted, as one RocksDB refuses.
TEST(KvStore, AFailedWriteStoresNothingAndIsCounted) {
  KvStoreOptions o;
  o.write_fault = [](const WriteSet& w) {
    bool refused = false;
    w.ForEach([&](Family, std::string_view key, std::string_view) { refused |= key == "bad"; });
    return refused ? absl::UnavailableError("injected: no space left") : absl::OkStatus();
  };
  auto db = KvStore::Open(FreshDir("fault"), o);
  ASSERT_TRUE(db.ok()) << db.status();
  WriteSet w;
  w.Put(Family::kJobs, "good", "1");
  w.Put(Family::kJobs, "bad", "2");
  EXPECT_EQ((*db)->Write(w).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*db)->Get(Family::kJobs, "good").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*db)->failed_writes(), 1);
  ASSERT_TRUE((*db)->Put(Family::kJobs, "good", "1").ok());
  EXPECT_EQ(*(*db)->Get(Family::kJobs, "good"), "1");
  EXPECT_EQ((*db)->failed_writes(), 1);
}

// A disk that can be made full: every append and sync to a file opened through it fails with
// ENOSPC while `full` is set, as the real disk's would.
class FillableDisk : public rocksdb::FileSystemWrapper {
 public:
  FillableDisk() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "FillableDisk"; }
  std::atomic<bool> full{false};

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* file,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, file, dbg);
    if (s.ok()) *file = std::make_unique<File>(std::move(*file), this);
    return s;
  }

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> file, const FillableDisk* disk)
        : FSWritableFileOwnerWrapper(std::move(file)), disk_(disk) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      if (disk_->full) return rocksdb::IOStatus::NoSpace("the test's disk is full");
      return FSWritableFileOwnerWrapper::Append(data, o, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& info,
                             rocksdb::IODebugContext* dbg) override {
      if (disk_->full) return rocksdb::IOStatus::NoSpace("the test's disk is full");
      return FSWritableFileOwnerWrapper::Append(data, o, info, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      if (disk_->full) return rocksdb::IOStatus::NoSpace("the test's disk is full");
      return FSWritableFileOwnerWrapper::Sync(o, dbg);
    }

   private:
    const FillableDisk* disk_;
  };
};

// A disk that fills up stops writes with RESOURCE_EXHAUSTED; once it has room again the store
// takes writes by itself (RocksDB recovers from the failed WAL write), with no reopen: qlorad
// needs no restart after an operator frees space. What was refused is not stored.
TEST(KvStore, WritesResumeOnceAFullDiskHasRoomAgain) {
  const std::string dir = FreshDir("full-disk");
  auto disk = std::make_shared<FillableDisk>();
  KvStoreOptions o;
  o.file_system = disk;
  auto db = KvStore::Open(dir, o);
  ASSERT_TRUE(db.ok()) << db.status();
  ASSERT_TRUE((*db)->Put(Family::kJobs, "before", "1").ok());
  disk->full = true;
  const absl::Status refused = (*db)->Put(Family::kJobs, "while-full", "2");
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_EQ((*db)->failed_writes(), 1);
  disk->full = false;
  // RocksDB recovers in a background thread: writes fail until it has (well under 100 ms here).
  const auto start = std::chrono::steady_clock::now();
  absl::Status after;
  do {
    after = (*db)->Put(Family::kJobs, "after", "3");
    if (!after.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (!after.ok() && std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  ASSERT_TRUE(after.ok()) << after;
  EXPECT_EQ(*(*db)->Get(Family::kJobs, "before"), "1");
  EXPECT_EQ((*db)->Get(Family::kJobs, "while-full").status().code(), absl::StatusCode::kNotFound);
  db->reset();
  auto reopened = KvStore::Open(dir);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(*(*reopened)->Get(Family::kJobs, "after"), "3");
  EXPECT_EQ((*reopened)->Get(Family::kJobs, "while-full").status().code(),
            absl::StatusCode::kNotFound);
}

// Listing one tenant's records must not read the next tenant's dataset (the key after the
// listed range), and deleting a dataset must not read it: both used to read the whole value.
TEST(KvStore, ScansAndDeletesReadNoLargeValueOutsideWhatTheyReturn) {
  const std::string dir = FreshDir("blob-reads");
  auto disk = std::make_shared<BlobReadCountingDisk>();
  KvStoreOptions o;
  o.file_system = disk;
  constexpr int64_t kBlob = 4 << 20;
  {
    auto db = KvStore::Open(dir, o);
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->Put(Family::kDatasets, "t/meta/ds-1", "small record").ok());
    ASSERT_TRUE((*db)->Put(Family::kDatasets, "u/ds-2/data", std::string(kBlob, 'u')).ok());
    ASSERT_TRUE((*db)->Put(Family::kDatasets, "u/ds-3/data", std::string(kBlob, 'v')).ok());
  }
  auto db = KvStore::Open(dir, o);  // reopening flushed the values into blob files
  ASSERT_TRUE(db.ok()) << db.status();
  disk->blob_bytes_read = 0;
  EXPECT_EQ(Keys(**db, Family::kDatasets, "t/meta/"), std::vector<std::string>{"t/meta/ds-1"});
  EXPECT_LT(disk->blob_bytes_read, kBlob / 16);
  disk->blob_bytes_read = 0;
  WriteSet del;
  del.DeletePrefix(Family::kDatasets, "u/ds-2/");
  ASSERT_TRUE((*db)->Write(del).ok());
  EXPECT_LT(disk->blob_bytes_read, kBlob / 16);
  EXPECT_EQ((*db)->Get(Family::kDatasets, "u/ds-2/data").status().code(),
            absl::StatusCode::kNotFound);
  // The counting sees reads: the kept value reads whole.
  disk->blob_bytes_read = 0;
  EXPECT_EQ((*db)->Get(Family::kDatasets, "u/ds-3/data")->size(), static_cast<size_t>(kBlob));
  EXPECT_GE(disk->blob_bytes_read, kBlob);
}

TEST(KvStore, KeysRejectSlashesAndEmptyParts) {
  EXPECT_EQ(*StoreKey({"acme", "job-1"}), "acme/job-1");
  EXPECT_FALSE(StoreKey({"acme/evil", "x"}).ok());
  EXPECT_FALSE(StoreKey({"", "x"}).ok());
  EXPECT_LT(SequenceKeyPart(9), SequenceKeyPart(10));
}

// A synced write survives the process being killed right after it returns.
TEST(KvStore, SyncedWritesSurviveKill9) {
  const std::string dir = FreshDir("kill");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto db = KvStore::Open(dir);
    if (!db.ok()) _exit(3);
    WriteSet w;
    w.Put(Family::kJobs, "t/j", "RUNNING");
    w.Put(Family::kEvents, "t/j/00000000000000000001", "state change");
    if (!(*db)->Write(w).ok()) _exit(4);
    ::kill(::getpid(), SIGKILL);  // no destructor, no flush
    _exit(5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  auto db = KvStore::Open(dir);
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_EQ(*(*db)->Get(Family::kJobs, "t/j"), "RUNNING");
  EXPECT_EQ(*(*db)->Get(Family::kEvents, "t/j/00000000000000000001"), "state change");
}

TEST(KvStore, CheckpointIsAConsistentCopy) {
  auto db = KvStore::Open(FreshDir("src"));
  ASSERT_TRUE(db.ok());
  ASSERT_TRUE((*db)->Put(Family::kModels, "stories", "registered").ok());
  const std::string copy = FreshDir("copy");
  ASSERT_TRUE((*db)->Checkpoint(copy).ok());
  auto opened = KvStore::Open(copy);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*(*opened)->Get(Family::kModels, "stories"), "registered");
}

}  // namespace
}  // namespace qlorad::storage
