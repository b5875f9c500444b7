// The order in which queued jobs start: higher priority first; among equal priorities, fair
// share across tenants (the tenant with the fewest jobs running, counting those placed ahead
// in this order, goes next, so tenants interleave); then first come, first served.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace qlorad::core {

struct QueuedJob {
  std::string tenant;
  std::string id;
  int32_t priority = 0;
  int64_t arrival = 0;  // FIFO order
  std::string model;
  std::string model_key;    // ModelPool::Key: which registration of `model` it trains on
  int64_t job_bytes = 0;    // JobMemoryBytes
  int64_t model_bytes = 0;  // the base model's loaded size, counted once per device
  // A start the store could not answer (a full disk, an I/O error) is tried again from then.
  absl::Time not_before = absl::InfinitePast();
  int start_failures = 0;     // in a row; the pause before the next try doubles with each
  int internal_failures = 0;  // of those, INTERNAL ones (tried a few times only)
};

// Indices into `queue` in start order. `running`: jobs running now, by tenant.
std::vector<size_t> QueueOrder(const std::vector<QueuedJob>& queue,
                               const std::map<std::string, int>& running);

}  // namespace qlorad::core
