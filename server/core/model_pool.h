// The base models loaded on one device, each loaded and NF4-quantized once and shared by every
// job on that device (the base weights are frozen, so sharing is read-only). A model stays
// loaded while any job holds it; unused models are evicted when memory is needed. Not
// thread-safe: one device worker owns it. Stats are readable from other threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/tokenizer.h"
#include "qlorad/v1/models.pb.h"

namespace qlorad::core {

struct PooledModel {
  std::string name;
  // ModelPool::Key of the registration it was loaded from: a model deleted and registered
  // again under the same name (perhaps another checkpoint) is loaded anew, not served from the
  // old weights.
  std::string registration;
  int64_t bytes = 0;  // the registry's loaded-size estimate (counted once per device)
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<LlamaModel> model;
};

class ModelPool {
 public:
  explicit ModelPool(Device* device) : device_(device) {}

  // What names one loaded copy: the registration record (name, path, time, shape) it comes
  // from. A copy of an earlier registration of the name is another copy: never taken for the
  // current one, and evictable as any other.
  static std::string Key(const v1::Model& model) { return model.SerializeAsString(); }

  // The loaded model, loading it from its registered path on first use (and again when the
  // name was registered anew since).
  absl::StatusOr<std::shared_ptr<PooledModel>> Acquire(const v1::Model& model)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether the copy named `key` (Key) is loaded.
  bool IsLoaded(const std::string& key) const ABSL_LOCKS_EXCLUDED(mu_);
  // Bytes of every loaded model (a replaced one too while a job holds it), and of those no job
  // holds.
  int64_t ResidentBytes() const ABSL_LOCKS_EXCLUDED(mu_);
  // `except`: keys of copies not to count (those EvictUnused would keep).
  int64_t UnusedBytes(const std::set<std::string>& except = {}) const ABSL_LOCKS_EXCLUDED(mu_);
  int LoadedCount() const ABSL_LOCKS_EXCLUDED(mu_);
  // Drops models no job holds, except the copies keyed in `keep` (admitted, not yet held);
  // returns the bytes freed. With `evicted`, the models are moved there for the caller to release
  // where it holds no lock: freeing a GPU's weights waits for the card.
  int64_t EvictUnused(const std::set<std::string>& keep = {},
                      std::vector<std::shared_ptr<PooledModel>>* evicted = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Device* device_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<PooledModel>> models_ ABSL_GUARDED_BY(mu_);
  // Models replaced by a new registration under their name while jobs still held them: their
  // weights stay on the device until the last job lets go, so admission still counts them.
  mutable std::vector<std::weak_ptr<PooledModel>> retired_ ABSL_GUARDED_BY(mu_);
  // The retired models still alive (the expired ones forgotten).
  std::vector<std::shared_ptr<PooledModel>> RetiredAlive() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace qlorad::core
