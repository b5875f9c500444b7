// The pull endpoint Prometheus scrapes: a small HTTP/1.1 server on its own port answering
// GET /metrics with the registry's text exposition (and 404 elsewhere), one connection at a
// time, each closed after its answer. RAII: the listening socket and the thread end with it.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/metrics/registry.h"

namespace qlorad::metrics {

class HttpExposer {
 public:
  // `address`: "host:port" (port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<HttpExposer>> Start(const std::string& address,
                                                            Registry* registry);
  ~HttpExposer();
  HttpExposer(const HttpExposer&) = delete;
  HttpExposer& operator=(const HttpExposer&) = delete;

  int port() const { return port_; }

 private:
  HttpExposer(int fd, int port, Registry* registry) : fd_(fd), port_(port), registry_(registry) {}
  void Serve();
  void Answer(int client);

  int fd_;
  int port_;
  Registry* registry_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace qlorad::metrics
