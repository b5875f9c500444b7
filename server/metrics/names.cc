#include "server/metrics/names.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace qlorad::metrics {
namespace {

using Type = Registry::Type;

// When the machine booted, in seconds since the epoch (/proc/stat's btime): a fixed point, so
// that the process's start time is the same at every scrape.
double BootTime() {
  std::ifstream stat("/proc/stat");
  for (std::string key; stat >> key;) {
    if (key == "btime") {
      double btime = 0;
      stat >> btime;
      return btime;
    }
    stat.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

// process_* from /proc/self, as the Prometheus client libraries export them.
void CollectProcess(Registry& r) {
  {
    std::ifstream stat("/proc/self/stat");  // closed before the fds are counted
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const size_t close_paren = content.rfind(')');
    if (close_paren != std::string::npos) {
      std::istringstream fields(content.substr(close_paren + 2));
      std::vector<std::string> f;
      for (std::string x; fields >> x;) f.push_back(x);
      // Fields from 3 (state) on: utime is 14, stime 15, starttime 22, rss 24 (1-based).
      const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
      if (f.size() > 21) {
        r.Set("process_cpu_seconds_total", {}, (std::stod(f[11]) + std::stod(f[12])) / tick);
        static const double boot_time = BootTime();
        r.Set("process_start_time_seconds", {}, boot_time + std::stod(f[19]) / tick);
        r.Set("process_resident_memory_bytes", {},
              std::stod(f[21]) * static_cast<double>(sysconf(_SC_PAGESIZE)));
        r.Set("process_virtual_memory_bytes", {}, std::stod(f[20]));
      }
    }
  }
  int fds = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    const std::string own = std::to_string(dirfd(d));  // the listing's own, not the process's
    while (const dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      fds += name != "." && name != ".." && name != own;
    }
    closedir(d);
  }
  r.Set("process_open_fds", {}, fds);
}

}  // namespace

void DeclareDaemonMetrics(Registry& r) {
  r.Declare(kDeviceMemory, Type::kGauge,
            "Device memory: the card's total/used/free on a GPU (cudaMemGetInfo), the daemon's "
            "budget and its engine's use on a CPU device.",
            {"device", "state"});
  r.Declare(kEngineMemory, Type::kGauge,
            "Memory the engine holds on a device by category; base weights are counted once "
            "per device however many jobs share them.",
            {"device", "category"});
  r.Declare(kEngineMemoryPeak, Type::kGauge,
            "The most the engine has held on a GPU at once since the daemon started (weights, "
            "adapters, optimizer state, activations, scratch).",
            {"device"});
  r.Declare(kBaseModelsLoaded, Type::kGauge, "Base models loaded on a device.", {"device"});
  r.Declare(kDeviceAdmission, Type::kGauge,
            "What admission lets jobs and base models reserve on a device (state=budget) and "
            "what loaded base models and admitted jobs' estimates reserve now (state=reserved): "
            "jobs wait in the queue while the next one does not fit between them. Where "
            "Generate/Evaluate share the card, their limit (state=inference), outside the budget.",
            {"device", "state"});
  r.Declare(kDeviceUp, Type::kGauge,
            "1 while a device trains; 0 once it failed for good (a GPU fault) until a restart.",
            {"device"});
  r.Declare(kInferenceMemory, Type::kGauge,
            "Memory the Generate/Evaluate device holds by category (base models, cached adapters, "
            "activations, workspace), as of the end of the last request. On a card that also "
            "trains, it keeps to its share (qlorad_device_admission_bytes{state=\"inference\"}).",
            {"device", "category"});
  r.Declare(kInferenceMemoryPeak, Type::kGauge,
            "The most the Generate/Evaluate GPU device has held at once since the daemon "
            "started: what --inference-memory-bytes must allow for the requests served so far.",
            {"device"});
  r.Declare(kInferenceModelsLoaded, Type::kGauge,
            "Base models loaded on the Generate/Evaluate device (--inference-cached-models).",
            {"device"});
  r.Declare(kJobs, Type::kGauge, "Jobs by state.", {"state"});
  r.Declare(kQueueDepth, Type::kGauge, "Jobs waiting in the queue.", {});
  r.Declare(kJobsFinished, Type::kCounter, "Jobs that ended, by result.", {"result"});
  r.Declare(kTrainedTokens, Type::kCounter, "Tokens trained (padding excluded).", {"device"});
  r.Declare(kStepDuration, Type::kHistogram, "Duration of one optimizer step.", {"device"},
            {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  r.Declare(kJobLoss, Type::kGauge, "Training loss of a running job's last step.", {"job_id"});
  r.Declare(kJobProgress, Type::kGauge, "Steps completed over total steps of a running job.",
            {"job_id"});
  r.Declare(kGrpcRequests, Type::kCounter, "gRPC calls by method and status code.",
            {"method", "code"});
  r.Declare(kGrpcDuration, Type::kHistogram, "gRPC call duration by method.", {"method"},
            {0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300});
  r.Declare(kRocksdbSize, Type::kGauge, "Bytes of the RocksDB database on disk (SST + blobs).", {});
  r.Declare(kRocksdbWriteStopped, Type::kGauge, "1 while RocksDB stops writes (a write stall).",
            {});
  r.Declare(kRocksdbDelayedRate, Type::kGauge,
            "RocksDB's delayed write rate in bytes/s while it slows writes (0 otherwise).", {});
  r.Declare(kStoreWriteFailures, Type::kCounter,
            "Writes to the node's RocksDB that failed (a full disk, an I/O error): progress, "
            "checkpoints or results not stored.",
            {});
  r.Declare("process_cpu_seconds_total", Type::kCounter, "User and system CPU time.", {});
  r.Declare("process_start_time_seconds", Type::kGauge, "Start time since the Unix epoch.", {});
  r.Declare("process_resident_memory_bytes", Type::kGauge, "Resident memory size.", {});
  r.Declare("process_virtual_memory_bytes", Type::kGauge, "Virtual memory size.", {});
  r.Declare("process_open_fds", Type::kGauge, "Open file descriptors.", {});
  r.AddCollector(CollectProcess);
}

}  // namespace qlorad::metrics
