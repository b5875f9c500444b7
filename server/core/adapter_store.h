// Tenants' adapters, each a separate module under its own key range of the adapters column
// family: "<tenant>/meta/<id>" (a qlorad.v1.Adapter, apart from the files: record_layout.h) and
// "<tenant>/<id>/file/<name>" for the PEFT files (adapter_config.json,
// adapter_model.safetensors). Stored and deleted in one write.
// Thread-safe (quota checks and writes are serialized).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "qlorad/v1/adapters.pb.h"
#include "storage/kv_store.h"

namespace qlorad::core {

class AdapterStore {
 public:
  explicit AdapterStore(storage::KvStore* db) : db_(db) {}

  // Stores the PEFT files of `peft_dir` with `meta` (its id is assigned here). RESOURCE_EXHAUSTED
  // when the tenant already holds `max_adapters` (IsQuotaError tells it from a full disk's).
  absl::StatusOr<v1::Adapter> Create(const std::string& tenant, v1::Adapter meta,
                                     const std::string& peft_dir, int64_t max_adapters)
      ABSL_LOCKS_EXCLUDED(mu_);
  static bool IsQuotaError(const absl::Status& s);
  absl::StatusOr<v1::Adapter> Get(const std::string& tenant, const std::string& id) const;
  absl::StatusOr<std::vector<v1::Adapter>> List(const std::string& tenant) const;
  // File name -> bytes, in name order.
  absl::StatusOr<std::map<std::string, std::string>> Files(const std::string& tenant,
                                                           const std::string& id) const;
  // Writes the files into `dir` (created), e.g. to load the adapter into the engine.
  absl::Status ExportToDir(const std::string& tenant, const std::string& id,
                           const std::string& dir) const;
  absl::Status Delete(const std::string& tenant, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  storage::KvStore* db_;
  absl::Mutex mu_;
};

}  // namespace qlorad::core
