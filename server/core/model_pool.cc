#include "server/core/model_pool.h"

#include "absl/strings/str_cat.h"
#include "engine/model_source.h"
#include "engine/status_macros.h"

namespace qlorad::core {

absl::StatusOr<std::shared_ptr<PooledModel>> ModelPool::Acquire(const v1::Model& model) {
  {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(model.name());
    if (it != models_.end() && it->second->registration == Key(model)) {
      return it->second;
    }
  }
  // Loading takes a while and only this device's worker loads, so no lock is held meanwhile.
  ASSIGN_OR_RETURN(ModelSource source, OpenModelSource(model.source_path()));
  if (!source.tokenizer) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", model.name(), "' lost its tokenizer at ", model.source_path()));
  }
  auto pooled = std::make_shared<PooledModel>();
  pooled->name = model.name();
  pooled->registration = Key(model);
  pooled->bytes = model.quantized_bytes();
  pooled->tokenizer = std::move(source.tokenizer);
  ModelOptions options;
  options.quantize = true;
  ASSIGN_OR_RETURN(pooled->model, LlamaModel::Create(std::move(source.weights), device_, options,
                                                     std::move(source.prequantized)));
  absl::MutexLock lock(&mu_);
  std::shared_ptr<PooledModel>& slot = models_[model.name()];
  if (slot != nullptr && slot.use_count() > 1) retired_.push_back(slot);  // jobs still hold it
  slot = pooled;
  return pooled;
}

std::vector<std::shared_ptr<PooledModel>> ModelPool::RetiredAlive() const {
  std::vector<std::shared_ptr<PooledModel>> alive;
  std::erase_if(retired_, [&](const std::weak_ptr<PooledModel>& w) {
    std::shared_ptr<PooledModel> m = w.lock();
    if (m == nullptr) return true;
    alive.push_back(std::move(m));
    return false;
  });
  return alive;
}

bool ModelPool::IsLoaded(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [name, m] : models_) {
    if (m->registration == key) return true;
  }
  return false;
}

int64_t ModelPool::ResidentBytes() const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& [name, m] : models_) total += m->bytes;
  for (const auto& m : RetiredAlive()) total += m->bytes;
  return total;
}

int64_t ModelPool::UnusedBytes(const std::set<std::string>& except) const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& [name, m] : models_) {
    if (m.use_count() == 1 && except.count(m->registration) == 0) total += m->bytes;
  }
  return total;
}

int ModelPool::LoadedCount() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(models_.size() + RetiredAlive().size());
}

int64_t ModelPool::EvictUnused(const std::set<std::string>& keep,
                               std::vector<std::shared_ptr<PooledModel>>* evicted) {
  absl::MutexLock lock(&mu_);
  int64_t freed = 0;
  for (auto it = models_.begin(); it != models_.end();) {
    if (it->second.use_count() == 1 && keep.count(it->second->registration) == 0) {
      freed += it->second->bytes;
      if (evicted != nullptr) evicted->push_back(std::move(it->second));
      it = models_.erase(it);
    } else {
      ++it;
    }
  }
  return freed;
}

}  // namespace qlorad::core
