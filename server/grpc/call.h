// One RPC's bookkeeping: authenticates the caller from its "authorization" metadata, converts
// absl::Status to grpc::Status, writes one structured log line when the call ends (time,
// method, tenant, peer, code, duration) and counts it in the node's metrics. Every handler
// starts with a Call.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/core/tenants.h"
#include "server/grpc/node.h"

namespace qlorad::server {

// A status message, as sent and logged, is at most this long (it starts with the field it is
// about): past it the rest is cut, so that a rejected value a client sent whole (a long name)
// never pushes the answer past gRPC's metadata limit, nor floods the log.
inline constexpr size_t kMaxStatusMessageBytes = 1024;
std::string ShortenedMessage(absl::string_view message);
grpc::Status ToGrpc(const absl::Status& s);

class Call {
 public:
  Call(grpc::ServerContext* context, const char* method, const Node& node);
  ~Call();

  // UNAUTHENTICATED unless a known key came with the call; RESOURCE_EXHAUSTED when its tenant
  // has as many calls in progress as it may (the call counts until it ends).
  absl::Status Authenticate();
  // Authenticate, then PERMISSION_DENIED unless the key is an admin's.
  absl::Status AuthenticateAdmin();
  const core::Tenant& tenant() const { return *tenant_; }
  // Records the outcome for the log line and converts it.
  grpc::Status Finish(const absl::Status& s);

 private:
  grpc::ServerContext* context_;
  const char* method_;
  const core::TenantRegistry& tenants_;
  metrics::Registry* metrics_;
  TenantCalls* calls_;
  LogLimiter* log_limiter_;
  const core::Tenant* tenant_ = nullptr;
  bool counted_ = false;  // in calls_, until the destructor
  absl::Status result_ = absl::UnknownError("the handler did not finish");
  std::chrono::steady_clock::time_point start_;
};

}  // namespace qlorad::server
