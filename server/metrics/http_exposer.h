// The pull endpoint Prometheus scrapes: a small HTTP/1.1 server on its own port answering
// GET /metrics with the registry's text exposition (and 404 elsewhere), each connection closed
// after its answer. A few threads answer, and each connection has 5 s in all to send its request
// and take the answer: a client that trickles its request or never reads holds one thread for
// 5 s at most, never the scrapes behind it nor the daemon's exit. RAII: the listening socket
// and the threads end with it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
  void Accept();
  void Serve();  // one answering thread: takes accepted connections until stop_
  void Answer(int client);

  int fd_;
  int port_;
  Registry* registry_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<int> accepted_;  // connections waiting for an answering thread (guarded by mu_)
  std::thread acceptor_;
  std::vector<std::thread> answerers_;
};

}  // namespace qlorad::metrics
