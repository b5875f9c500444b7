// Prometheus metrics without a client library (prometheus-cpp is not packaged for Debian 12):
// counters, gauges and histograms with labels, serialized in the text exposition format 0.0.4
// that Prometheus scrapes. Thread-safe. Series can be removed (per-job series end with the job).
// Names follow the Prometheus conventions: base units, `_total` for counters.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace qlorad::metrics {

class Registry {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  // Declares a family (idempotent for the same name, type and labels). Histogram buckets are
  // upper bounds in increasing order (+Inf is implied).
  void Declare(const std::string& name, Type type, const std::string& help,
               std::vector<std::string> label_names, std::vector<double> buckets = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  void Add(const std::string& name, const std::vector<std::string>& label_values, double delta)
      ABSL_LOCKS_EXCLUDED(mu_);  // counters (delta >= 0) and gauges
  void Set(const std::string& name, const std::vector<std::string>& label_values, double value)
      ABSL_LOCKS_EXCLUDED(mu_);  // gauges, and counters kept elsewhere (process CPU time)
  void Observe(const std::string& name, const std::vector<std::string>& label_values,
               double value) ABSL_LOCKS_EXCLUDED(mu_);  // histograms
  void Remove(const std::string& name, const std::vector<std::string>& label_values)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs before each serialization, outside the lock: sets gauges read from elsewhere
  // (device memory, queue depth).
  void AddCollector(std::function<void(Registry&)> collector) ABSL_LOCKS_EXCLUDED(mu_);

  // The text exposition of every family, in name order.
  std::string Serialize() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Series {
    double value = 0.0;             // counter or gauge
    std::vector<uint64_t> buckets;  // histogram: cumulative counts per bound
    uint64_t count = 0;
    double sum = 0.0;
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<std::string> label_names;
    std::vector<double> bounds;
    std::map<std::vector<std::string>, Series> series;
  };
  Family* Find(const std::string& name, const std::vector<std::string>& label_values)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(Registry&)>> collectors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qlorad::metrics
