// Tenants' datasets in the node's KvStore: "<tenant>/meta/<id>" (a qlorad.v1.Dataset) and
// "<tenant>/<id>/data" (the JSONL bytes, in a blob file), written together (record_layout.h). An
// upload is validated line by line before anything is stored. Thread-safe (quota checks and writes
// are serialized).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "qlorad/v1/datasets.pb.h"
#include "server/core/tenants.h"
#include "storage/kv_store.h"

namespace qlorad::core {

class DatasetStore {
 public:
  explicit DatasetStore(storage::KvStore* db) : db_(db) {}

  // An upload in progress: its bytes count against the tenant's quota as they arrive, beside
  // those of the tenant's other uploads in progress, so that uploads in parallel never hold
  // more than the quota between them. The bytes are given back when it goes.
  class Upload {
   public:
    ~Upload();
    Upload(const Upload&) = delete;
    Upload& operator=(const Upload&) = delete;
    // Takes `bytes` more; RESOURCE_EXHAUSTED (nothing taken) past the upload's room.
    absl::Status Grow(int64_t bytes) ABSL_LOCKS_EXCLUDED(store_->upload_mu_);

   private:
    friend class DatasetStore;
    Upload(DatasetStore* store, std::string tenant, int64_t used, int64_t max_total_bytes,
           int64_t max_upload_bytes)
        : store_(store),
          tenant_(std::move(tenant)),
          used_(used),
          max_total_bytes_(max_total_bytes),
          max_upload_bytes_(max_upload_bytes) {}
    DatasetStore* store_;
    std::string tenant_;
    int64_t used_, max_total_bytes_, max_upload_bytes_;
    int64_t taken_ = 0;
  };
  // `max_total_bytes`: the tenant's quota; `max_upload_bytes`: one upload's limit;
  // `max_datasets`: RESOURCE_EXHAUSTED before any byte is sent where the tenant holds as many.
  absl::StatusOr<std::unique_ptr<Upload>> StartUpload(
      const std::string& tenant, int64_t max_total_bytes, int64_t max_upload_bytes,
      int64_t max_datasets = TenantLimits{}.max_datasets);

  // INVALID_ARGUMENT "line N: ..." naming the first ten bad lines (BadLines) or for an empty
  // upload, "name: ..." for a name longer than 256 bytes or holding control characters (it may be
  // empty); RESOURCE_EXHAUSTED when the tenant's datasets would exceed `max_total_bytes`, or number
  // more than `max_datasets`.
  absl::StatusOr<v1::Dataset> Create(const std::string& tenant, const std::string& name,
                                     const std::string& content, int64_t max_total_bytes,
                                     int64_t max_datasets = TenantLimits{}.max_datasets)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::Dataset> Get(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::string> Content(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::vector<v1::Dataset>> List(const std::string& tenant) const;
  absl::Status Delete(const std::string& tenant, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  // What the tenant's datasets take: their number and bytes (the two limits).
  struct Usage {
    int64_t datasets = 0;
    int64_t bytes = 0;
  };
  absl::StatusOr<Usage> UsageOf(const std::string& tenant) const;

 private:
  storage::KvStore* db_;
  absl::Mutex mu_;
  absl::Mutex upload_mu_;
  std::map<std::string, int64_t> in_flight_ ABSL_GUARDED_BY(upload_mu_);  // by tenant
};

}  // namespace qlorad::core
