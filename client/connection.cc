#include "client/connection.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace qlorad::client {
namespace {

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::string(value) : fallback;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open TLS root file '", path, "'"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read '", path, "'"));
  return contents.str();
}

}  // namespace

int PodForTenant(const std::string& tenant, int replicas) {
  int best = 0;
  uint64_t best_score = 0;
  for (int i = 0; i < replicas; ++i) {
    const std::string key = tenant + "/" + std::to_string(i);
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
    for (unsigned char c : key) h = (h ^ c) * 0x100000001b3ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;  // splitmix64 finalizer
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    if (i == 0 || h > best_score) {
      best = i;
      best_score = h;
    }
  }
  return best;
}

std::string StatefulSetPodAddress(const std::string& statefulset, int ordinal,
                                  const std::string& service, const std::string& ns, int port) {
  return absl::StrCat(statefulset, "-", ordinal, ".", service, ".", ns,
                      ".svc.cluster.local:", port);
}

ConnectionOptions ConnectionOptionsFromEnvironment() {
  ConnectionOptions options;
  options.server = EnvOr("QLORAD_SERVER", options.server);
  options.token = EnvOr("QLORAD_TOKEN", options.token);
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ConnectionOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    absl::StatusOr<std::string> roots = ReadFile(options.tls_ca_file);
    if (!roots.ok()) return roots.status();
    if (roots->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS root file '", options.tls_ca_file, "' is empty"));
    }
    ssl.pem_root_certs = *std::move(roots);
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(options.max_message_bytes);
  // A daemon that vanished (a node lost, a link black-holed) sends no FIN: without pings a
  // watch or download would wait on it forever. A ping every 30 s during a call (the daemon
  // accepts them from 20 s apart), unanswered for 20 s, ends the call with UNAVAILABLE.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30 * 1000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A restarted daemon is found again within 10 s (gRPC's default backoff grows to 2 minutes).
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 10 * 1000);
  return grpc::CreateCustomChannel(options.server, credentials, arguments);
}

std::unique_ptr<grpc::ClientContext> MakeClientContext(const ConnectionOptions& options,
                                                       std::optional<absl::Duration> timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options.token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options.token));
  }
  if (timeout.has_value()) context->set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
  return context;
}

absl::Status ToAbslStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace qlorad::client
