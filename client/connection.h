// qlorad_client: how a C++ client reaches the daemon. One channel per process, one ClientContext
// per call (carrying the API key and the deadline), and gRPC statuses turned into absl ones.
// Thread-safe: all functions are pure; the channel they return is itself thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace qlorad::client {

inline constexpr char kDefaultServer[] = "127.0.0.1:50051";

struct ConnectionOptions {
  // host:port of the daemon. Default: $QLORAD_SERVER when set, else 127.0.0.1:50051.
  std::string server = kDefaultServer;
  // The tenant's (or an admin's) API key, sent as "authorization: Bearer <token>" on every call;
  // empty: no authorization header. Default: $QLORAD_TOKEN.
  std::string token;
  // PEM file of the root certificates to trust. Set: TLS with these roots. Empty (default): a
  // plaintext channel.
  std::string tls_ca_file;
  // Largest message sent or received (adapter chunks, dataset chunks). Default: 64 MiB.
  int max_message_bytes = 64 << 20;
};

// The defaults above, with $QLORAD_SERVER and $QLORAD_TOKEN applied when set and non-empty.
ConnectionOptions ConnectionOptionsFromEnvironment();

// A channel to options.server with the message size limits set. Connects lazily: a daemon that
// is down shows up as UNAVAILABLE on the first call. Errors: an unreadable tls_ca_file
// (NOT_FOUND or INVALID_ARGUMENT).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ConnectionOptions& options);

// A context for one call: the authorization metadata and, when given, a deadline `timeout` from
// now. ClientContext can be neither copied nor moved, hence the pointer.
std::unique_ptr<grpc::ClientContext> MakeClientContext(
    const ConnectionOptions& options, std::optional<absl::Duration> timeout = std::nullopt);

// Routing a tenant to its pod of a qlorad StatefulSet, with no cluster manager: rendezvous
// (highest-random-weight) hashing over the pod ordinals, so that every client computes the same
// pod and growing the set from N to N+1 pods moves only the tenants the new pod wins (about
// 1/(N+1) of them). The score of (tenant, ordinal) is the splitmix64 finalizer of the 64-bit
// FNV-1a hash of "<tenant>/<ordinal>"; clients in other languages reproduce it from this.
int PodForTenant(const std::string& tenant, int replicas);
// "<statefulset>-<ordinal>.<service>.<namespace>.svc.cluster.local:<port>".
std::string StatefulSetPodAddress(const std::string& statefulset, int ordinal,
                                  const std::string& service, const std::string& ns, int port);

// The same code and message as an absl::Status (the two code sets are numerically equal).
absl::Status ToAbslStatus(const grpc::Status& status);

}  // namespace qlorad::client
