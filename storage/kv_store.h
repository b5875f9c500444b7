// The embedded RocksDB database of one qlorad node, behind a small interface: one column family
// per kind of record (DESIGN.md), tenant-prefixed keys built by StoreKey, atomic multi-key
// updates (WriteBatch), prefix scans. Large values (datasets, checkpoints, adapter tensors) go
// to RocksDB blob files.
//
// Crash semantics: with `sync_writes` (the default) a successful Write has reached the disk
// (WAL fsync) and survives a power loss or `kill -9`; a Write is all-or-nothing. Thread-safe
// (RocksDB's own guarantees); handles are owned here and released in the destructor.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class Env;
class FileSystem;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace qlorad::storage {

enum class Family { kModels = 0, kDatasets, kJobs, kEvents, kCheckpoints, kAdapters, kMeta };
inline constexpr int kNumFamilies = 7;
const char* FamilyName(Family f);

class WriteSet;

struct KvStoreOptions {
  // fsync the WAL on every write. Default: true (job state must survive kill -9).
  bool sync_writes = true;
  // Values at least this large go to blob files. Default: 64 KiB.
  uint64_t min_blob_size = 64 * 1024;
  // Create the database when the directory holds none. Default: true.
  bool create_if_missing = true;
  // Tests only: asked before each write; a non-OK answer fails that write with it and stores
  // nothing, as a full or failing disk does, so that how the daemon copes can be tested.
  std::function<absl::Status(const WriteSet&)> write_fault;
  // Tests only: the file system RocksDB writes through (null: the real one), so that a disk
  // that fills up and then has room again can be played under RocksDB itself.
  std::shared_ptr<rocksdb::FileSystem> file_system;
};

// A set of puts and deletes applied atomically by KvStore::Write.
class WriteSet {
 public:
  WriteSet();
  ~WriteSet();
  void Put(Family f, std::string_view key, std::string_view value);
  void Delete(Family f, std::string_view key);
  // Deletes every key of `f` that starts with `prefix` (at Write time).
  void DeletePrefix(Family f, std::string_view prefix);
  int size() const { return static_cast<int>(ops_.size()); }
  // Each op's family, key and value (empty for deletes): what a write_fault looks at.
  void ForEach(
      const std::function<void(Family, std::string_view key, std::string_view value)>& visit) const;

 private:
  friend class KvStore;
  struct Op {
    enum Kind { kPut, kDelete, kDeletePrefix } kind;
    Family family;
    std::string key, value;
  };
  std::vector<Op> ops_;
};

class KvStore {
 public:
  static absl::StatusOr<std::unique_ptr<KvStore>> Open(const std::string& dir,
                                                       const KvStoreOptions& options = {});
  ~KvStore();
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  // NOT_FOUND when the key is absent.
  absl::StatusOr<std::string> Get(Family f, std::string_view key) const;
  absl::Status Write(const WriteSet& writes);
  absl::Status Put(Family f, std::string_view key, std::string_view value);
  // Visits keys with `prefix` in order, from `start_after` (exclusive) when not empty; the
  // visitor returns false to stop.
  absl::Status Scan(Family f, std::string_view prefix,
                    const std::function<bool(std::string_view key, std::string_view value)>& visit,
                    std::string_view start_after = {}) const;
  // Approximate bytes on disk (SST + blob files) of the whole database.
  int64_t ApproximateSize() const;
  // A database-wide RocksDB integer property (e.g. "rocksdb.actual-delayed-write-rate",
  // "rocksdb.is-write-stopped"); 0 when unknown.
  int64_t IntProperty(const std::string& property) const;
  // A consistent copy of the database in `dir` (RocksDB checkpoint: hard links where possible).
  absl::Status Checkpoint(const std::string& dir) const;
  // Writes that failed since the store was opened (a full disk, an I/O error).
  int64_t failed_writes() const { return failed_writes_.load(); }

 private:
  KvStore() = default;
  rocksdb::ColumnFamilyHandle* Handle(Family f) const;
  std::unique_ptr<rocksdb::Env> env_;  // options.file_system's; outlives db_
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned: destroyed before db_
  KvStoreOptions options_;
  std::atomic<int64_t> failed_writes_{0};
};

// Keys: components joined by '/', each checked to be non-empty and slash-free, so that one
// tenant's prefix can never match another's ("a/" does not prefix "ab/...").
absl::StatusOr<std::string> StoreKey(std::initializer_list<std::string_view> parts);
// A fixed-width, order-preserving encoding of a sequence number for keys.
std::string SequenceKeyPart(int64_t sequence);

}  // namespace qlorad::storage
