// Everything the gRPC services share: the stores over one RocksDB, the tenants, the job
// manager and the inference runner. Owned by the daemon's main; services hold a pointer.
#pragma once

#include <atomic>
#include <memory>

#include "server/core/adapter_store.h"
#include "server/core/checkpoint_store.h"
#include "server/core/dataset_store.h"
#include "server/core/inference_runner.h"
#include "server/core/job_manager.h"
#include "server/core/job_store.h"
#include "server/core/model_store.h"
#include "server/core/tenants.h"
#include "server/grpc/log_limiter.h"
#include "server/grpc/tenant_calls.h"
#include "server/metrics/registry.h"
#include "storage/kv_store.h"

namespace qlorad::server {

struct Node {
  std::unique_ptr<metrics::Registry> metrics;  // made first, so that it outlives its users
  std::unique_ptr<storage::KvStore> db;
  std::unique_ptr<core::TenantRegistry> tenants;
  std::unique_ptr<core::JobStore> jobs;
  std::unique_ptr<core::ModelStore> models;
  std::unique_ptr<core::DatasetStore> datasets;
  std::unique_ptr<core::AdapterStore> adapters;
  std::unique_ptr<core::CheckpointStore> checkpoints;
  std::unique_ptr<core::JobManager> manager;
  std::unique_ptr<core::InferenceRunner> inference;
  int64_t max_upload_bytes = int64_t{1} << 30;
  // Calls in progress per tenant (--max-calls-per-tenant); null: no bound (tests).
  std::unique_ptr<TenantCalls> calls;
  // The per-call log lines, per tenant; null: every line (tests).
  std::unique_ptr<LogLimiter> log_limiter;
  // Set when the daemon stops taking calls: long calls (WatchJob) end with a status that says
  // so, before the server cancels them.
  std::atomic<bool> draining{false};
};

}  // namespace qlorad::server
