// Tenants' adapters, each a separate module under its own key range of the adapters column
// family: "<tenant>/meta/<id>" (a qlorad.v1.Adapter, apart from the files: record_layout.h) and
// "<tenant>/<id>/file/<name>/<part>" for the PEFT files (adapter_config.json,
// adapter_model.safetensors) in parts of kAdapterPartBytes, so that a download or an export
// holds one part at a time, not the whole file (a 7B adapter at r = 256 is 2.5 GB). Adapters
// stored before parts keep one value per file ("<tenant>/<id>/file/<name>"), read as one part.
// Stored and deleted in one write. Thread-safe (quota checks and writes are serialized).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "qlorad/v1/adapters.pb.h"
#include "storage/kv_store.h"

namespace qlorad::core {

inline constexpr size_t kAdapterPartBytes = size_t{8} << 20;

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
  // Visits the adapter's files in name order (adapter_config.json first), each in its stored
  // parts, in order; `last` marks a file's last part. Stops at the first error `visit` returns.
  // NOT_FOUND for no such adapter (deleted meanwhile too); DATA_LOSS for a file or part missing,
  // found before the part before the gap is visited, or for a file's last parts, before the
  // adapter's last part is (a download may have sent the parts before).
  using PartVisitor =
      std::function<absl::Status(const std::string& name, std::string_view data, bool last)>;
  absl::Status VisitFiles(const std::string& tenant, const std::string& id,
                          const PartVisitor& visit) const;
  // File name -> bytes, in name order: the whole adapter in memory (tests, small uses).
  absl::StatusOr<std::map<std::string, std::string>> Files(const std::string& tenant,
                                                           const std::string& id) const;
  // Writes the files into `dir` (created), e.g. to load the adapter into the engine. On an error
  // the files written and the folder, if made here, are removed.
  absl::Status ExportToDir(const std::string& tenant, const std::string& id,
                           const std::string& dir) const;
  absl::Status Delete(const std::string& tenant, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  storage::KvStore* db_;
  absl::Mutex mu_;
};

}  // namespace qlorad::core
