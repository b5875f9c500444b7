// The daemon's metric families (docs/operations.md lists them with their labels). One place, so
// that the dashboard test can check every query against what the daemon declares.
#pragma once

#include "server/metrics/registry.h"

namespace qlorad::metrics {

inline constexpr char kDeviceMemory[] = "qlorad_device_memory_bytes";           // device, state
inline constexpr char kEngineMemory[] = "qlorad_engine_memory_bytes";           // device, category
inline constexpr char kBaseModelsLoaded[] = "qlorad_base_models_loaded";        // device
inline constexpr char kDeviceUp[] = "qlorad_device_up";                         // device
inline constexpr char kDeviceAdmission[] = "qlorad_device_admission_bytes";     // device, state
inline constexpr char kInferenceMemory[] = "qlorad_inference_memory_bytes";     // device, category
inline constexpr char kEngineMemoryPeak[] = "qlorad_engine_memory_peak_bytes";  // device
inline constexpr char kInferenceMemoryPeak[] = "qlorad_inference_memory_peak_bytes";  // device
inline constexpr char kInferenceModelsLoaded[] = "qlorad_inference_models_loaded";    // device
inline constexpr char kJobs[] = "qlorad_jobs";                                        // state
inline constexpr char kQueueDepth[] = "qlorad_queue_depth";
inline constexpr char kJobsFinished[] = "qlorad_jobs_finished_total";            // result
inline constexpr char kTrainedTokens[] = "qlorad_trained_tokens_total";          // device
inline constexpr char kStepDuration[] = "qlorad_step_duration_seconds";          // device
inline constexpr char kJobLoss[] = "qlorad_job_loss";                            // job_id
inline constexpr char kJobProgress[] = "qlorad_job_progress_ratio";              // job_id
inline constexpr char kGrpcRequests[] = "qlorad_grpc_requests_total";            // method, code
inline constexpr char kGrpcDuration[] = "qlorad_grpc_request_duration_seconds";  // method
inline constexpr char kRocksdbSize[] = "qlorad_rocksdb_size_bytes";
inline constexpr char kRocksdbWriteStopped[] = "qlorad_rocksdb_write_stopped";
inline constexpr char kRocksdbDelayedRate[] = "qlorad_rocksdb_delayed_write_rate_bytes";
inline constexpr char kStoreWriteFailures[] = "qlorad_store_write_failures_total";

// Declares every family above and the process_* ones (with their collector) in `r`.
void DeclareDaemonMetrics(Registry& r);

}  // namespace qlorad::metrics
