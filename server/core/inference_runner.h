// Generation and evaluation with a tenant's adapter applied unmerged on a base model, on a
// device of its own (a CPU device, or a CUDA device object of its own on a GPU; never a training
// worker's, whose engine only that worker drives). Base
// models are loaded once into this runner's pool; the most recently used adapters stay placed
// on the device (adapters never change once stored, and each use first checks that the
// tenant still has it); requests run one at a time. A request that runs out of device memory
// while other base models or adapters are held has them dropped and runs once more, so a device
// with a memory limit (a share of a training card) serves whatever fits it alone.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/device.h"
#include "engine/device_adapter.h"
#include "qlorad/v1/inference.pb.h"
#include "server/core/adapter_store.h"
#include "server/core/dataset_store.h"
#include "server/core/model_pool.h"
#include "server/core/model_store.h"
#include "server/metrics/registry.h"

namespace qlorad::core {

class InferenceRunner {
 public:
  // Keeps up to `cached_adapters` adapters placed on the device between requests, and the
  // `cached_models` (at least 1) base models most recently served: a node asked about many
  // models holds a bounded number, not every one it ever served. The first form runs on a CPU
  // device of `threads` threads (0: all).
  InferenceRunner(ModelStore* models, DatasetStore* datasets, AdapterStore* adapters,
                  std::string scratch_dir, int threads, int cached_adapters = 4,
                  int cached_models = 2);
  InferenceRunner(ModelStore* models, DatasetStore* datasets, AdapterStore* adapters,
                  std::string scratch_dir, std::unique_ptr<Device> device, int cached_adapters,
                  int cached_models = 2);

  // Requests run one at a time. `client_left` (optional) is asked while a request waits for its
  // turn and, in Evaluate, before each example: once it says so the request ends CANCELLED.
  //
  // Calls `on_text` with the text new tokens complete (UTF-8 characters whole) and the number
  // of tokens generated so far; `on_text` returning false (the client left) stops generation.
  struct Generated {
    std::string finish_reason;  // "eos" or "max_tokens"
    int64_t tokens = 0;         // generated (EOS excluded)
    uint64_t seed = 0;          // sampled with: the request's, or one drawn for it
  };
  absl::StatusOr<Generated> Generate(
      const std::string& tenant, const v1::GenerateRequest& req,
      const std::function<bool(const std::string& text, int64_t tokens)>& on_text,
      const std::function<bool()>& client_left = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // Evaluate holds the device for every other tenant: a dataset past `kMaxEvaluateBytes`
  // (refused before its turn) or `kMaxEvaluateTokens` (once tokenized) is INVALID_ARGUMENT on
  // dataset_id. A larger one is a job's validation set.
  absl::StatusOr<v1::EvaluateResponse> Evaluate(const std::string& tenant,
                                                const v1::EvaluateRequest& req,
                                                const std::function<bool()>& client_left = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Requests one tenant may have waiting for the device (each holds a server thread meanwhile).
  static constexpr int kMaxWaitingPerTenant = 8;
  // Requests waiting for the device now.
  int waiting_requests() const ABSL_LOCKS_EXCLUDED(turn_mu_);
  static constexpr int64_t kMaxEvaluateBytes = int64_t{64} << 20;
  static constexpr int64_t kMaxEvaluateTokens = int64_t{1} << 23;
  // Other bounds than those (tests).
  void set_evaluate_limits(int64_t max_bytes, int64_t max_tokens) {
    max_evaluate_bytes_ = max_bytes;
    max_evaluate_tokens_ = max_tokens;
  }

  // Adapters read from the store and placed on the device so far (cache misses).
  int64_t adapter_loads() const ABSL_LOCKS_EXCLUDED(mu_);
  // Base models loaded so far (misses), and loaded now.
  int64_t model_loads() const ABSL_LOCKS_EXCLUDED(mu_);
  int models_loaded() const ABSL_LOCKS_EXCLUDED(mu_);
  // The device's description (Device::name), fixed at construction.
  const std::string& device_name() const { return device_name_; }

  // What the device holds, as of the end of the last request: a request in progress (which
  // holds mu_ while it generates) is never waited for, so a metrics scrape never stalls.
  struct Usage {
    DeviceMemoryUsage memory;
    int models_loaded = 0;
  };
  Usage usage() const ABSL_LOCKS_EXCLUDED(usage_mu_);
  // usage() as qlorad_inference_* gauges, labelled with the device's short name (cpu:0, cuda:1).
  void CollectMetrics(metrics::Registry& r) const ABSL_LOCKS_EXCLUDED(usage_mu_);

 private:
  // The base model from the pool and the tenant's adapter on this runner's device (none for
  // an empty id).
  struct Loaded {
    std::shared_ptr<PooledModel> model;
    std::shared_ptr<const DeviceAdapter> adapter;
  };
  absl::StatusOr<Loaded> Load(const std::string& tenant, const v1::Model& model,
                              const std::string& adapter_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishUsage() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `attempt` (a request's work on the device with base model `model`, a ModelPool::Key,
  // and the tenant's
  // adapter `adapter_key`, "tenant/id" or empty; it holds nothing once it returns). Where it ran
  // out of memory and dropping every other base model and cached adapter, and the device's grown
  // scratch, freed some: once more, unless `answered` (part of the answer is with the client).
  absl::Status WithRoom(const std::string& model, const std::string& adapter_key,
                        const std::function<absl::Status()>& attempt, const bool& answered)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // "tenant/id", the adapter cache's key; empty for no adapter.
  static std::string AdapterKey(const std::string& tenant, const std::string& id);
  // Publishes when a request's scope ends, whichever way it returns (declared after its lock,
  // so it runs while mu_ is still held, once the request's own buffers are gone).
  struct PublishOnExit {
    InferenceRunner* runner;
    ~PublishOnExit() ABSL_NO_THREAD_SAFETY_ANALYSIS { runner->PublishUsage(); }
  };
  // The tenant's adapter for the pooled `model`, from the cache or the store (then cached); Load
  // has checked that it exists and fits the model.
  absl::StatusOr<std::shared_ptr<const DeviceAdapter>> Adapter(
      const std::string& tenant, const std::string& id, const std::shared_ptr<PooledModel>& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ModelStore* models_;
  DatasetStore* datasets_;
  AdapterStore* adapters_;
  std::string scratch_dir_;
  std::string device_name_;
  // The device's turn: held by one request at a time, waited for by the others, which give up
  // when their client leaves (mu_ itself is held through a whole request). Tenants take turns:
  // the next is the oldest request of the first tenant after the one served last (in name
  // order, round), so a tenant with many requests waiting gets no more turns than one with one.
  class Turn {
   public:
    Turn(InferenceRunner* runner, std::string tenant)
        : runner_(runner), tenant_(std::move(tenant)) {}
    ~Turn();
    // RESOURCE_EXHAUSTED where the tenant has kMaxWaitingPerTenant requests waiting already.
    absl::Status Wait(const std::function<bool()>& client_left);

   private:
    InferenceRunner* runner_;
    const std::string tenant_;
    bool held_ = false;
  };
  // The ticket whose turn is next (0: none waits).
  uint64_t NextTicket() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(turn_mu_);
  void Forget(const std::string& tenant, uint64_t ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(turn_mu_);
  mutable absl::Mutex turn_mu_;
  bool turn_taken_ ABSL_GUARDED_BY(turn_mu_) = false;
  std::map<std::string, std::deque<uint64_t>> waiting_ ABSL_GUARDED_BY(turn_mu_);
  std::string last_served_ ABSL_GUARDED_BY(turn_mu_);
  uint64_t last_ticket_ ABSL_GUARDED_BY(turn_mu_) = 0;
  mutable absl::Mutex mu_;
  std::unique_ptr<Device> device_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ModelPool> pool_ ABSL_GUARDED_BY(mu_);
  struct CachedAdapter {
    std::string key;                   // tenant / adapter id
    std::weak_ptr<PooledModel> model;  // placed for this base model (the pool's current one)
    std::shared_ptr<const DeviceAdapter> adapter;
  };
  const int cached_adapters_;
  std::list<CachedAdapter> cache_ ABSL_GUARDED_BY(mu_);  // most recently used first
  int64_t adapter_loads_ ABSL_GUARDED_BY(mu_) = 0;
  const int cached_models_;
  // ModelPool::Key of the base models served, most recently used first.
  std::list<std::string> recent_models_ ABSL_GUARDED_BY(mu_);
  int64_t model_loads_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t max_evaluate_bytes_ = kMaxEvaluateBytes;
  int64_t max_evaluate_tokens_ = kMaxEvaluateTokens;
  mutable absl::Mutex usage_mu_;
  Usage usage_ ABSL_GUARDED_BY(usage_mu_);
};

}  // namespace qlorad::core
