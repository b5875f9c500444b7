// qlorad: the fine-tuning daemon. Flags (dashes or underscores), an optional --config file of
// "name = value" lines (the command line wins), and embedded defaults that run on one host as
// is: listen on 127.0.0.1:50051, keep data in ./qlorad-data, and on first start create a
// tenants file there with one admin tenant whose key is written to <data-dir>/admin.key.
// SIGTERM or SIGINT: stop taking calls, checkpoint running jobs (they resume on the next
// start), exit 0.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/device_select.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"
#include "server/core/record_layout.h"
#include "server/grpc/device_health.h"
#include "server/grpc/node.h"
#include "server/grpc/services.h"
#include "server/metrics/http_exposer.h"
#include "server/metrics/names.h"

ABSL_FLAG(std::string, config, "", "A file of 'name = value' lines, one flag each; # comments");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here once serving");
ABSL_FLAG(std::string, data_dir, "qlorad-data", "RocksDB and scratch files");
ABSL_FLAG(std::string, tenants, "",
          "Tenants JSON (keys hashed); default <data-dir>/tenants.json, created on first start "
          "with an admin tenant");
ABSL_FLAG(std::string, devices, "auto",
          "auto (every GPU, else cpu:0), or a list of cuda:N and cpu:N");
ABSL_FLAG(int32_t, threads_per_device, 0, "Compute threads per CPU device; 0: cores / devices");
ABSL_FLAG(int64_t, device_memory_bytes, 0,
          "Memory budget of each training device; 0: a CPU device RAM/2 / devices, a GPU 90% of "
          "the card (at most what is free); never more than a card has");
ABSL_FLAG(int32_t, max_jobs_per_device, 4, "Jobs resident on one device, taking turns");
ABSL_FLAG(int64_t, checkpoint_every, 50, "Checkpoint running jobs every N steps (0: at exit)");
ABSL_FLAG(double, progress_interval, 1.0, "Seconds between stored progress events of a job");
ABSL_FLAG(double, job_retention_days, 0,
          "Delete finished jobs (record and events; adapters stay) this many days after they "
          "ended; 0: keep them until deleted");
ABSL_FLAG(int64_t, max_rank, 256, "Largest LoRA rank accepted");
ABSL_FLAG(int64_t, max_seq_len, 4096, "Longest training sequence accepted");
ABSL_FLAG(int64_t, max_batch_size, 256, "Largest micro-batch accepted");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest gRPC message in either direction");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{1} << 30, "Largest dataset upload");
ABSL_FLAG(int32_t, max_rpc_threads, 512,
          "Threads serving calls at once (each open call holds one); past it a call is refused "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_calls_per_tenant, 64,
          "Calls one tenant may have in progress at once (0: no bound); past it its calls are "
          "refused RESOURCE_EXHAUSTED, so that one tenant cannot hold every server thread");
ABSL_FLAG(std::string, inference_device, "cpu",
          "Device of Generate/Evaluate: cpu, cuda:N (a device object of its own on that GPU), or "
          "auto (the first GPU of --devices that opens, else the CPU)");
ABSL_FLAG(int64_t, inference_memory_bytes, 0,
          "Memory Generate/Evaluate may hold on their GPU. On a card that also trains it comes out "
          "of that card's training budget; 0: a quarter of it there, the whole card elsewhere");
ABSL_FLAG(int32_t, inference_threads, 0, "Threads of the CPU generation/evaluation device; 0: all");
ABSL_FLAG(int32_t, inference_cached_adapters, 4,
          "Adapters kept placed on the generation/evaluation device between requests");
ABSL_FLAG(int32_t, inference_cached_models, 2,
          "Base models kept loaded on the generation/evaluation device, the most recently used");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9477",
          "Prometheus pull endpoint (GET /metrics), its own port; empty: off; port 0: any");
ABSL_FLAG(std::string, metrics_port_file, "", "Write the metrics port here once serving");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (TLS when given with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");

namespace qlorad {
namespace {
namespace fs = std::filesystem;

void Log(const std::string& level, const std::string& msg) {
  std::fprintf(stderr, "ts=%s level=%s msg=\"%s\"\n",
               absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()).c_str(),
               level.c_str(), msg.c_str());
}

// "--data-dir" -> "--data_dir" (absl flag names are identifiers).
std::string NormalizeFlag(const std::string& arg) {
  if (arg.rfind("--", 0) != 0 || arg == "--") return arg;
  const size_t eq = arg.find('=');
  std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
  for (char& ch : name) ch = ch == '-' ? '_' : ch;
  return "--" + name + (eq == std::string::npos ? "" : arg.substr(eq));
}

absl::StatusOr<std::vector<std::string>> ConfigArgs(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  std::vector<std::string> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    // A comment starts with '#' at the start of the line or after a space: a '#' inside a value
    // (a path, a key file) is the value's.
    for (size_t hash = line.find('#'); hash != absl::string_view::npos;
         hash = line.find('#', hash + 1)) {
      if (hash == 0 || line[hash - 1] == ' ' || line[hash - 1] == '\t') {
        line = line.substr(0, hash);
        break;
      }
    }
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": expected 'name = value'"));
    }
    absl::string_view name = absl::StripAsciiWhitespace(line.substr(0, eq));
    absl::ConsumePrefix(&name, "--");
    out.push_back(
        NormalizeFlag(absl::StrCat("--", std::string(name), "=",
                                   std::string(absl::StripAsciiWhitespace(line.substr(eq + 1))))));
  }
  return out;
}

// Like the engine's WriteStringToFile, but a secret's file is made owner-only before the
// secret is written into it (which that function cannot do: it creates its own file).
absl::Status WriteFileAtomically(const std::string& path, const std::string& data, bool secret) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    if (secret) ::chmod(tmp.c_str(), 0600);
    out << data;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", ec.message()));
  return absl::OkStatus();
}

// On first start without --tenants: one admin tenant with a fresh random key.
absl::StatusOr<std::string> DefaultTenantsFile(const std::string& data_dir) {
  const std::string path = (fs::path(data_dir) / "tenants.json").string();
  if (fs::exists(path)) return path;
  std::random_device rd;
  std::string key = "qlorad_";
  static const char* kHex = "0123456789abcdef";
  for (int i = 0; i < 40; ++i) key.push_back(kHex[rd() & 15]);
  const std::string key_file = (fs::path(data_dir) / "admin.key").string();
  RETURN_IF_ERROR(WriteFileAtomically(key_file, key + "\n", true));
  RETURN_IF_ERROR(WriteFileAtomically(
      path,
      absl::StrCat("{\"tenants\": [{\"name\": \"admin\", \"key_sha256\": \"", core::Sha256Hex(key),
                   "\", \"admin\": true,\n  \"limits\": {\"max_concurrent_jobs\": 8, "
                   "\"max_dataset_bytes\": 1073741824, \"max_adapters\": 1000}}]}\n"),
      false));
  Log("info", absl::StrCat("created ", path, " with tenant 'admin'; its key is in ", key_file));
  return path;
}

// What generation and evaluation may hold of `card`. On a card that also trains, their share
// (--inference-memory-bytes, else a quarter of its budget) comes out of training's budget
// (JobManager::ShareWithInference, which refuses a share that leaves training nothing), so that
// the engine's buffers for an evaluation never take what an admitted job counted on; on a card
// of their own, the flag (0: the whole card).
int64_t InferenceShare(const std::string& card, const core::JobManager& manager) {
  const int64_t asked = absl::GetFlag(FLAGS_inference_memory_bytes);
  for (const core::DeviceInfo& d : manager.Devices()) {
    if (d.name == card) return asked > 0 ? asked : d.memory_budget / 4;
  }
  return asked;
}

// The device of generation and evaluation: --inference-device cpu, cuda:N, or auto (the first
// GPU that trains here and opens a second time, never a card --devices leaves out nor one that
// failed; else the CPU, saying which and why). On a training card it takes its share of that
// card's budget (InferenceShare).
absl::StatusOr<std::unique_ptr<Device>> OpenInferenceDevice(const std::string& spec, int threads,
                                                            core::JobManager& manager) {
  std::vector<std::string> gpus;  // the cards it may open
  if (spec == "auto") {
    for (const core::DeviceInfo& d : manager.Devices()) {
      if (d.name.rfind("cuda:", 0) == 0) gpus.push_back(d.name);
    }
  } else if (CudaOrdinal(spec) >= 0) {
    gpus.push_back(absl::StrCat("cuda:", CudaOrdinal(spec)));
  }
  std::map<int, int64_t> shares;  // by ordinal
  for (const std::string& card : gpus) shares[CudaOrdinal(card)] = InferenceShare(card, manager);
  const CudaOptionsFor options_for = [&](int ordinal) {
    CudaDeviceOptions o;
    o.memory_limit_bytes = shares[ordinal];
    return o;
  };
  std::unique_ptr<Device> device;
  if (spec == "auto") {
    std::vector<std::string> skipped;
    device = OpenFirstUsableGpu(gpus, threads, &skipped, options_for);
    for (const std::string& s : skipped) Log("info", "--inference-device auto: skipped " + s);
    Log("info", absl::StrCat("--inference-device auto: generation and evaluation on ",
                             device->name(), gpus.empty() ? " (no GPU among --devices)" : ""));
  } else {
    auto opened = OpenDevice(spec, threads, options_for);
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          absl::StrCat("--inference-device: ", opened.status().message()));
    }
    device = std::move(*opened);
  }
  if (device->name().rfind("cuda:", 0) != 0 && absl::GetFlag(FLAGS_inference_memory_bytes) > 0) {
    Log("warn", "--inference-memory-bytes applies to a GPU; generation and evaluation run on " +
                    device->name());
  }
  for (const core::DeviceInfo& d : manager.Devices()) {
    if (d.name.rfind("cuda:", 0) != 0 || device->name().rfind(d.name + " ", 0) != 0) continue;
    const int64_t share = shares[CudaOrdinal(d.name)];
    if (absl::Status s = manager.ShareWithInference(d.name, share); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("--inference-memory-bytes: ", s.message(),
                                                 "; ask for less, or use --inference-device cpu"));
    }
    Log("info", absl::StrCat("generation and evaluation share ", d.name, " with training: ", share,
                             " bytes for them (--inference-memory-bytes), ",
                             d.memory_budget - share, " for training jobs"));
  }
  return device;
}

// The numeric flags' bounds, checked before anything starts. Out of range, most were clamped or
// read as "off" without a word (a negative --checkpoint-every: no checkpoints; --max-rank 0: every
// job refused while the node looked healthy; --max-message-bytes 0: every request refused).
absl::Status CheckNumericFlags() {
  struct Bound {
    const char* flag;
    double value, lo, hi;
    const char* why;  // what the low end protects, where it is not obvious
  };
  constexpr double kInt = std::numeric_limits<int32_t>::max();
  constexpr double kBig = 9.2e18;  // int64's range
  const Bound bounds[] = {
      {"threads-per-device", double(absl::GetFlag(FLAGS_threads_per_device)), 0, 4096, ""},
      {"device-memory-bytes", double(absl::GetFlag(FLAGS_device_memory_bytes)), 0, kBig, ""},
      {"max-jobs-per-device", double(absl::GetFlag(FLAGS_max_jobs_per_device)), 1, 1024, ""},
      {"checkpoint-every", double(absl::GetFlag(FLAGS_checkpoint_every)), 0, kBig,
       " (0: only at exit)"},
      {"progress-interval", absl::GetFlag(FLAGS_progress_interval), 0, 3600,
       " (0: an event every step)"},
      {"job-retention-days", absl::GetFlag(FLAGS_job_retention_days), 0, 36500,
       " (0: keep finished jobs)"},
      {"max-rank", double(absl::GetFlag(FLAGS_max_rank)), 1, 65536, ""},
      {"max-seq-len", double(absl::GetFlag(FLAGS_max_seq_len)), 2, 1 << 24, ""},
      {"max-batch-size", double(absl::GetFlag(FLAGS_max_batch_size)), 1, 65536, ""},
      // Downloads and the Python client's uploads send 1 MiB chunks.
      {"max-message-bytes", double(absl::GetFlag(FLAGS_max_message_bytes)), 2 << 20, kInt,
       " (adapter downloads and uploads send 1 MiB chunks)"},
      // A dataset is one RocksDB value, and a write batch holds values below 4 GiB: a larger
      // upload would be refused only once all of it had come.
      {"max-upload-bytes", double(absl::GetFlag(FLAGS_max_upload_bytes)), 1, 3.0 * (1 << 30),
       " (a dataset is one RocksDB value)"},
      {"inference-memory-bytes", double(absl::GetFlag(FLAGS_inference_memory_bytes)), 0, kBig, ""},
      {"max-rpc-threads", double(absl::GetFlag(FLAGS_max_rpc_threads)), 8, 65536, ""},
      {"max-calls-per-tenant", double(absl::GetFlag(FLAGS_max_calls_per_tenant)), 0, kInt,
       " (0: no bound)"},
      {"inference-threads", double(absl::GetFlag(FLAGS_inference_threads)), 0, 4096, " (0: all)"},
      {"inference-cached-adapters", double(absl::GetFlag(FLAGS_inference_cached_adapters)), 0, 4096,
       ""},
      {"inference-cached-models", double(absl::GetFlag(FLAGS_inference_cached_models)), 1, 64, ""},
  };
  // Whole numbers in full (StrCat's 6 digits made 2097151 read as 2.09715e+06), where int64
  // holds them: INT64_MAX is 2^63 as a double, and casting that is undefined.
  auto text = [](double v) {
    return v == std::floor(v) && std::fabs(v) < 0x1p63 ? absl::StrCat(static_cast<int64_t>(v))
                                                       : absl::StrCat(v);
  };
  for (const Bound& b : bounds) {
    if (!(b.value >= b.lo && b.value <= b.hi)) {  // NaN too
      return absl::InvalidArgumentError(absl::StrCat("--", b.flag, " must be in [", text(b.lo),
                                                     ", ", text(b.hi), "]", b.why, ", got ",
                                                     text(b.value)));
    }
  }
  return absl::OkStatus();
}

absl::Status Run() {
  RETURN_IF_ERROR(CheckNumericFlags());
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("--data-dir ", data_dir, ": ", ec.message()));
  std::string tenants_path = absl::GetFlag(FLAGS_tenants);
  if (tenants_path.empty()) {
    ASSIGN_OR_RETURN(tenants_path, DefaultTenantsFile(data_dir));
  }

  server::Node node;
  node.metrics = std::make_unique<metrics::Registry>();
  metrics::DeclareDaemonMetrics(*node.metrics);
  ASSIGN_OR_RETURN(node.tenants, core::TenantRegistry::FromFile(tenants_path));
  ASSIGN_OR_RETURN(node.db, storage::KvStore::Open((fs::path(data_dir) / "db").string()));
  node.metrics->AddCollector([db = node.db.get()](metrics::Registry& r) {
    r.Set(metrics::kRocksdbSize, {}, static_cast<double>(db->ApproximateSize()));
    r.Set(metrics::kRocksdbWriteStopped, {},
          static_cast<double>(db->IntProperty("rocksdb.is-write-stopped")));
    r.Set(metrics::kRocksdbDelayedRate, {},
          static_cast<double>(db->IntProperty("rocksdb.actual-delayed-write-rate")));
    r.Set(metrics::kStoreWriteFailures, {}, static_cast<double>(db->failed_writes()));
  });
  // Databases written before the metadata had its own key range move once, at start.
  for (const storage::Family f : {storage::Family::kDatasets, storage::Family::kAdapters}) {
    ASSIGN_OR_RETURN(const int64_t moved, core::MigrateRecordLayout(node.db.get(), f));
    if (moved > 0) {
      Log("info", absl::StrCat("moved ", moved, " ", storage::FamilyName(f),
                               " records to the current key layout"));
    }
  }
  node.jobs = std::make_unique<core::JobStore>(node.db.get());
  node.models = std::make_unique<core::ModelStore>(node.db.get());
  node.datasets = std::make_unique<core::DatasetStore>(node.db.get());
  node.adapters = std::make_unique<core::AdapterStore>(node.db.get());
  node.checkpoints = std::make_unique<core::CheckpointStore>(node.db.get());
  node.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  node.calls = std::make_unique<server::TenantCalls>(absl::GetFlag(FLAGS_max_calls_per_tenant));
  node.log_limiter = std::make_unique<server::LogLimiter>();
  const std::string scratch = (fs::path(data_dir) / "scratch").string();
  fs::remove_all(scratch, ec);  // leftovers of a previous run

  core::JobManagerOptions mo;
  mo.devices = absl::GetFlag(FLAGS_devices);
  mo.threads_per_device = absl::GetFlag(FLAGS_threads_per_device);
  mo.device_memory_bytes = absl::GetFlag(FLAGS_device_memory_bytes);
  mo.max_jobs_per_device = absl::GetFlag(FLAGS_max_jobs_per_device);
  mo.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  mo.progress_interval_seconds = absl::GetFlag(FLAGS_progress_interval);
  mo.finished_job_retention = absl::Hours(24 * absl::GetFlag(FLAGS_job_retention_days));
  // Hourly, or more often for a retention under ten hours (a test's).
  mo.retention_sweep_interval =
      std::clamp(mo.finished_job_retention / 10, absl::Seconds(1), absl::Hours(1));
  mo.limits.max_rank = absl::GetFlag(FLAGS_max_rank);
  mo.limits.max_seq_len = absl::GetFlag(FLAGS_max_seq_len);
  mo.limits.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  mo.scratch_dir = scratch;
  ASSIGN_OR_RETURN(node.manager, core::JobManager::Create(
                                     {node.jobs.get(), node.models.get(), node.datasets.get(),
                                      node.adapters.get(), node.checkpoints.get(),
                                      node.tenants.get(), node.metrics.get()},
                                     mo));
  // Generation and evaluation run on a device of their own: the CPU, or a CUDA device object of
  // their own, which keeps to its share of a card that also trains.
  ASSIGN_OR_RETURN(std::unique_ptr<Device> inference_dev,
                   OpenInferenceDevice(absl::GetFlag(FLAGS_inference_device),
                                       absl::GetFlag(FLAGS_inference_threads), *node.manager));
  node.inference = std::make_unique<core::InferenceRunner>(
      node.models.get(), node.datasets.get(), node.adapters.get(), scratch,
      std::move(inference_dev), absl::GetFlag(FLAGS_inference_cached_adapters),
      absl::GetFlag(FLAGS_inference_cached_models));
  node.metrics->AddCollector(
      [runner = node.inference.get()](metrics::Registry& r) { runner->CollectMetrics(r); });
  RETURN_IF_ERROR(node.manager->Start());
  std::unique_ptr<metrics::HttpExposer> exposer;
  if (const std::string m = absl::GetFlag(FLAGS_metrics_listen); !m.empty()) {
    auto started = metrics::HttpExposer::Start(m, node.metrics.get());
    if (!started.ok()) {
      node.manager->Shutdown();
      return started.status();
    }
    exposer = std::move(*started);
    if (!absl::GetFlag(FLAGS_metrics_port_file).empty()) {
      RETURN_IF_ERROR(WriteFileAtomically(absl::GetFlag(FLAGS_metrics_port_file),
                                          absl::StrCat(exposer->port(), "\n"), false));
    }
  }

  server::ModelServiceImpl models(&node);
  server::DatasetServiceImpl datasets(&node);
  server::JobServiceImpl jobs(&node);
  server::AdapterServiceImpl adapters(&node);
  server::InferenceServiceImpl inference(&node);
  server::LimitsServiceImpl limits(&node);
  server::DeviceServiceImpl devices_service(&node);
  server::AdminServiceImpl admin(&node);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  if (!cert.empty() || !key.empty()) {
    if (cert.empty() || key.empty())
      return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
    grpc::SslServerCredentialsOptions ssl;
    ASSIGN_OR_RETURN(std::string cert_pem, ReadFileToString(cert));
    ASSIGN_OR_RETURN(std::string key_pem, ReadFileToString(key));
    ssl.pem_key_cert_pairs.push_back({key_pem, cert_pem});
    creds = grpc::SslServerCredentials(ssl);
  }
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, creds, &port);
  const int max_message = static_cast<int>(absl::GetFlag(FLAGS_max_message_bytes));  // checked
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // A client that vanished (a closed laptop, a dropped link) is found within minutes rather than
  // gRPC's default two hours, so that its open watch stops holding a thread: a ping every
  // minute on an idle connection, even in a call that sends nothing for a while.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients ping too (qloractl and the Python client every 30 s during a call), to find a
  // daemon that vanished; gRPC's default would answer pings closer than 5 minutes with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 20 * 1000);
  // Each call in progress holds a thread of the synchronous server: bounded, so that a flood
  // of calls is refused rather than taking every thread the process can make.
  grpc::ResourceQuota quota("qlorad-rpc");
  quota.SetMaxThreads(absl::GetFlag(FLAGS_max_rpc_threads));
  builder.SetResourceQuota(quota);
  for (grpc::Service* s : std::initializer_list<grpc::Service*>{
           &models, &datasets, &jobs, &adapters, &inference, &limits, &devices_service, &admin}) {
    builder.RegisterService(s);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    node.manager->Shutdown();
    return absl::UnavailableError(absl::StrCat("--listen ", listen, ": cannot listen there"));
  }
  // Ended before the server (declared after it): it sets the server's health.
  std::optional<server::DeviceHealth> device_health;
  if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
    device_health.emplace(node.manager.get(), health);
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    RETURN_IF_ERROR(
        WriteFileAtomically(absl::GetFlag(FLAGS_port_file), absl::StrCat(port, "\n"), false));
  }
  std::string devices;
  for (const core::DeviceInfo& d : node.manager->Devices()) {
    absl::StrAppend(&devices, devices.empty() ? "" : ",", d.name, "(", d.memory_budget >> 20,
                    " MiB)");
  }
  Log("info",
      absl::StrCat("serving on port ", port, " (", listen, ", ", cert.empty() ? "plaintext" : "TLS",
                   "), data ", data_dir, ", ", node.tenants->size(), " tenants, devices ", devices,
                   exposer ? absl::StrCat(", metrics on port ", exposer->port()) : ""));

  // Signals were blocked in every thread (see Main), so this thread alone receives them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  sigwait(&set, &sig);
  Log("info", absl::StrCat("received ", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                           "; stopping: no new calls, running jobs checkpointed"));
  node.draining = true;
  // The running jobs' checkpoints start now, beside the calls' end rather than after it: the
  // server's Shutdown waits for every handler to return (a backup copying files to another disk
  // can take minutes), and a stop that outlasts the grace period (then SIGKILL) would lose what
  // the jobs trained since their last checkpoint.
  std::thread checkpoints([&node] { node.manager->Shutdown(); });
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  checkpoints.join();
  server->Wait();
  Log("info", "stopped");
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  // Block the stop signals before any thread starts; Run() waits for them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  absl::SetProgramUsageMessage(
      "qlorad --listen HOST:PORT --data-dir DIR --tenants FILE --devices cpu:0 [--config FILE]");
  std::vector<std::string> args = {argv[0]};
  std::string config;
  for (int i = 1; i < argc; ++i) {
    std::string a = NormalizeFlag(argv[i]);
    if (a == "--config" && i + 1 < argc) a = "--config=" + std::string(argv[++i]);
    if (a.rfind("--config=", 0) == 0) config = a.substr(9);
    args.push_back(a);
  }
  if (!config.empty()) {
    auto extra = ConfigArgs(config);
    if (!extra.ok()) {
      Log("error", std::string(extra.status().message()));
      return 2;
    }
    // The config file's flags go first, so the command line overrides them.
    args.insert(args.begin() + 1, extra->begin(), extra->end());
  }
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(cargs.size()), cargs.data());
  absl::Status s = Run();
  if (!s.ok()) {
    Log("error", std::string(s.message()));
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace qlorad

int main(int argc, char** argv) { return qlorad::Main(argc, argv); }
