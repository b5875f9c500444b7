// The node's registry of base models (admin-managed), in the models column family keyed by
// name. Registration opens and validates the model fully (config, every tensor, tokenizer)
// before anything is stored. Thread-safe (registrations are serialized).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/model_config.h"
#include "qlorad/v1/models.pb.h"
#include "storage/kv_store.h"

namespace qlorad::core {

// Bytes of a model once loaded with NF4 + double-quantized linear weights (blocks of 64,
// nested blocks of 256) and float32 embeddings, norms and head.
int64_t LoadedModelBytes(const LlamaConfig& config);

class ModelStore {
 public:
  explicit ModelStore(storage::KvStore* db) : db_(db) {}

  // Name: [a-zA-Z0-9._-]{1,64}. The same name and path again returns the stored model; the
  // same name with another path is ALREADY_EXISTS. A model the engine cannot load, or one
  // without a tokenizer, is INVALID_ARGUMENT with the loader's message.
  absl::StatusOr<v1::Model> Register(const std::string& name, const std::string& path)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::Model> Get(const std::string& name) const;
  absl::StatusOr<std::vector<v1::Model>> List() const;
  absl::Status Delete(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  storage::KvStore* db_;
  absl::Mutex mu_;
};

}  // namespace qlorad::core
