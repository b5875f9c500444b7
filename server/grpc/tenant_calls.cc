#include "server/grpc/tenant_calls.h"

#include "absl/strings/str_cat.h"

namespace qlorad::server {

absl::Status TenantCalls::Begin(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  int& n = in_progress_[tenant];
  if (max_per_tenant_ > 0 && n >= max_per_tenant_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant '", tenant, "' has ", n, " calls in progress, the most one tenant may hold (",
        "--max-calls-per-tenant); end a watch or an upload, or retry"));
  }
  ++n;
  return absl::OkStatus();
}

void TenantCalls::End(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = in_progress_.find(tenant);
  if (it != in_progress_.end() && --it->second <= 0) in_progress_.erase(it);
}

}  // namespace qlorad::server
