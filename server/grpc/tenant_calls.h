// Calls in progress per tenant, bounded: each open call holds one of the server's threads
// (--max-rpc-threads), so without a bound one tenant's watches or idle uploads could take them
// all and every other tenant's calls would be refused.
#pragma once

#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace qlorad::server {

class TenantCalls {
 public:
  // `max_per_tenant` 0: no bound.
  explicit TenantCalls(int max_per_tenant) : max_per_tenant_(max_per_tenant) {}

  // Counts a call of `tenant`; RESOURCE_EXHAUSTED naming the limit when it has
  // max_per_tenant in progress already. Each OK is matched by one End.
  absl::Status Begin(const std::string& tenant) ABSL_LOCKS_EXCLUDED(mu_);
  void End(const std::string& tenant) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const int max_per_tenant_;
  absl::Mutex mu_;
  std::map<std::string, int> in_progress_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qlorad::server
