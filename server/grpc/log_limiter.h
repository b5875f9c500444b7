// Per-key token buckets for the daemon's per-call log lines: a key (a tenant, or "-" for calls
// with no known key) writes at most `rate` lines a second on average, in bursts of `burst`, so
// that one client's flood of calls (a tight polling loop, a script with a wrong key) cannot flood
// the log and make journald drop everyone's lines, real errors included. Lines past it are
// counted, and the count is said with the key's next line. Thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace qlorad::server {

class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  LogLimiter(double rate = 20.0, double burst = 200.0) : rate_(rate), burst_(burst) {}

  // True when a line for `key` may be written at `now`; then `*dropped` is the number of its
  // lines dropped since its last written one (0 mostly).
  bool Allow(const std::string& key, Clock::time_point now, int64_t* dropped)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto [it, fresh] = buckets_.try_emplace(key, Bucket{burst_, now, 0});
    Bucket& b = it->second;
    if (!fresh) {
      const double seconds = std::chrono::duration<double>(now - b.last).count();
      b.tokens = std::min(burst_, b.tokens + std::max(0.0, seconds) * rate_);
      b.last = now;
    }
    if (b.tokens < 1.0) {
      ++b.dropped;
      return false;
    }
    b.tokens -= 1.0;
    *dropped = b.dropped;
    b.dropped = 0;
    return true;
  }

 private:
  struct Bucket {
    double tokens;
    Clock::time_point last;
    int64_t dropped;
  };
  const double rate_, burst_;
  absl::Mutex mu_;
  // One per tenant and one for calls without a known key: bounded by the tenants file.
  std::map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qlorad::server
