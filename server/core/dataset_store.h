// Tenants' datasets in the node's KvStore: "<tenant>/meta/<id>" (a qlorad.v1.Dataset) and
// "<tenant>/<id>/data" (the JSONL bytes, in a blob file), written together (record_layout.h). An upload is
// validated line by line before anything is stored. Thread-safe (quota checks and writes are
// serialized).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "qlorad/v1/datasets.pb.h"
#include "storage/kv_store.h"

namespace qlorad::core {

class DatasetStore {
 public:
  explicit DatasetStore(storage::KvStore* db) : db_(db) {}

  // INVALID_ARGUMENT "line N: ..." for the first bad line (or an empty upload);
  // RESOURCE_EXHAUSTED when the tenant's datasets would exceed `max_total_bytes`.
  absl::StatusOr<v1::Dataset> Create(const std::string& tenant, const std::string& name,
                                     const std::string& content, int64_t max_total_bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::Dataset> Get(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::string> Content(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::vector<v1::Dataset>> List(const std::string& tenant) const;
  absl::Status Delete(const std::string& tenant, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<int64_t> BytesUsed(const std::string& tenant) const;

 private:
  storage::KvStore* db_;
  absl::Mutex mu_;
};

}  // namespace qlorad::core
