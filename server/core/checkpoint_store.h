// Training checkpoints in the node's KvStore (checkpoints column family): the files of a
// trainer checkpoint folder under "<tenant>/<job>/<file name>". Saving replaces the previous
// checkpoint in one write, so a crash leaves the old checkpoint or the new one, never a mix.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/kv_store.h"

namespace qlorad::core {

class CheckpointStore {
 public:
  explicit CheckpointStore(storage::KvStore* db) : db_(db) {}

  // Stores every regular file of `dir`.
  absl::Status Save(const std::string& tenant, const std::string& job, const std::string& dir);
  // Writes the stored files into `dir` (created); false when the job has no checkpoint.
  absl::StatusOr<bool> Restore(const std::string& tenant, const std::string& job,
                               const std::string& dir) const;
  absl::Status Delete(const std::string& tenant, const std::string& job);
  // (tenant, job) of every stored checkpoint.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> List() const;

 private:
  storage::KvStore* db_;
};

}  // namespace qlorad::core
