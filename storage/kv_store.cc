#include "storage/kv_store.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace qlorad::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(context), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsIOError() && s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

rocksdb::Slice ToSlice(std::string_view v) { return rocksdb::Slice(v.data(), v.size()); }

// The least key above every key that starts with `prefix`, or "" when there is none (an empty
// prefix, or one of 0xFF bytes only). A scan bounded by it stops without positioning on the key
// past its range: a RocksDB 7.8 iterator reads the value of every key it lands on, and the key
// after a tenant's metadata may be another tenant's dataset in a blob file.
std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<uint8_t>(end.back()) == 0xFF) end.pop_back();
  if (!end.empty()) end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
  return end;
}

}  // namespace

const char* FamilyName(Family f) {
  static const char* kNames[kNumFamilies] = {"models",      "datasets", "jobs", "events",
                                             "checkpoints", "adapters", "meta"};
  return kNames[static_cast<int>(f)];
}

WriteSet::WriteSet() = default;
WriteSet::~WriteSet() = default;

void WriteSet::Put(Family f, std::string_view key, std::string_view value) {
  ops_.push_back({Op::kPut, f, std::string(key), std::string(value)});
}
void WriteSet::Delete(Family f, std::string_view key) {
  ops_.push_back({Op::kDelete, f, std::string(key), {}});
}
void WriteSet::DeletePrefix(Family f, std::string_view prefix) {
  ops_.push_back({Op::kDeletePrefix, f, std::string(prefix), {}});
}

absl::StatusOr<std::unique_ptr<KvStore>> KvStore::Open(const std::string& dir,
                                                       const KvStoreOptions& options) {
  auto store = std::unique_ptr<KvStore>(new KvStore());
  rocksdb::Options db_options;
  if (options.file_system) {
    store->env_ = rocksdb::NewCompositeEnv(options.file_system);
    db_options.env = store->env_.get();
  }
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kNumFamilies; ++i) {
    rocksdb::ColumnFamilyOptions cf;
    const Family f = static_cast<Family>(i);
    if (f == Family::kDatasets || f == Family::kCheckpoints || f == Family::kAdapters) {
      cf.enable_blob_files = true;
      cf.min_blob_size = options.min_blob_size;
    }
    families.emplace_back(FamilyName(f), cf);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s = rocksdb::DB::Open(db_options, dir, families, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("cannot open database ", dir));
  store->db_.reset(raw);
  store->handles_ = std::move(handles);
  store->options_ = options;
  return store;
}

KvStore::~KvStore() {
  if (!db_) return;
  for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
}

rocksdb::ColumnFamilyHandle* KvStore::Handle(Family f) const {
  return handles_[static_cast<int>(f) + 1];
}

absl::StatusOr<std::string> KvStore::Get(Family f, std::string_view key) const {
  std::string value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Handle(f), ToSlice(key), &value);
  if (s.IsNotFound())
    return absl::NotFoundError(absl::StrCat(FamilyName(f), " has no key ", std::string(key)));
  if (auto st = FromRocks(s, "read"); !st.ok()) return st;
  return value;
}

void WriteSet::ForEach(
    const std::function<void(Family, std::string_view, std::string_view)>& visit) const {
  for (const Op& op : ops_) visit(op.family, op.key, op.value);
}

absl::Status KvStore::Write(const WriteSet& writes) {
  if (options_.write_fault) {
    if (absl::Status fault = options_.write_fault(writes); !fault.ok()) {
      ++failed_writes_;
      return fault;
    }
  }
  rocksdb::WriteBatch batch;
  for (const WriteSet::Op& op : writes.ops_) {
    rocksdb::Status s;
    switch (op.kind) {
      case WriteSet::Op::kPut:
        s = batch.Put(Handle(op.family), ToSlice(op.key), ToSlice(op.value));
        break;
      case WriteSet::Op::kDelete:
        s = batch.Delete(Handle(op.family), ToSlice(op.key));
        break;
      case WriteSet::Op::kDeletePrefix: {
        // One range tombstone: it reads nothing (listing the keys would read each value, a whole
        // dataset to delete it) and also covers keys written since.
        const std::string end = PrefixEnd(op.key);
        if (op.key.empty() || end.empty()) {
          return absl::InvalidArgumentError("a deleted prefix must be a bounded key range");
        }
        s = batch.DeleteRange(Handle(op.family), ToSlice(op.key), ToSlice(end));
        break;
      }
    }
    if (!s.ok()) return FromRocks(s, "batch");
  }
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  absl::Status written = FromRocks(db_->Write(wo, &batch), "write");
  if (!written.ok()) ++failed_writes_;
  return written;
}

absl::Status KvStore::Put(Family f, std::string_view key, std::string_view value) {
  WriteSet w;
  w.Put(f, key, value);
  return Write(w);
}

absl::Status KvStore::Scan(Family f, std::string_view prefix,
                           const std::function<bool(std::string_view, std::string_view)>& visit,
                           std::string_view start_after) const {
  rocksdb::ReadOptions ro;
  const std::string end = PrefixEnd(prefix);
  const rocksdb::Slice upper_bound = ToSlice(end);  // read by the iterator: outlives it
  if (!end.empty()) ro.iterate_upper_bound = &upper_bound;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, Handle(f)));
  if (start_after.empty()) {
    it->Seek(ToSlice(prefix));
  } else {
    it->Seek(ToSlice(start_after));
    if (it->Valid() && it->key().ToStringView() == start_after) it->Next();
  }
  for (; it->Valid(); it->Next()) {
    const std::string_view key = it->key().ToStringView();
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!visit(key, it->value().ToStringView())) break;
  }
  return FromRocks(it->status(), "scan");
}

int64_t KvStore::ApproximateSize() const {
  uint64_t total = 0, v = 0;
  for (int i = 0; i < kNumFamilies; ++i) {
    if (db_->GetIntProperty(Handle(static_cast<Family>(i)), "rocksdb.total-sst-files-size", &v))
      total += v;
    if (db_->GetIntProperty(Handle(static_cast<Family>(i)), "rocksdb.total-blob-file-size", &v))
      total += v;
  }
  return static_cast<int64_t>(total);
}

int64_t KvStore::IntProperty(const std::string& property) const {
  uint64_t v = 0;
  return db_->GetIntProperty(property, &v) ? static_cast<int64_t>(v) : 0;
}

absl::Status KvStore::Checkpoint(const std::string& dir) const {
  rocksdb::Checkpoint* raw = nullptr;
  if (auto s = FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw), "checkpoint"); !s.ok())
    return s;
  std::unique_ptr<rocksdb::Checkpoint> cp(raw);
  return FromRocks(cp->CreateCheckpoint(dir), absl::StrCat("checkpoint to ", dir));
}

absl::StatusOr<std::string> StoreKey(std::initializer_list<std::string_view> parts) {
  std::string key;
  for (std::string_view p : parts) {
    if (p.empty() || p.find('/') != std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad key part '", std::string(p), "': empty or containing '/'"));
    }
    if (!key.empty()) key.push_back('/');
    key.append(p);
  }
  return key;
}

std::string SequenceKeyPart(int64_t sequence) { return absl::StrFormat("%020d", sequence); }

}  // namespace qlorad::storage
