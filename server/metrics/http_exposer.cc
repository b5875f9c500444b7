#include "server/metrics/http_exposer.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qlorad::metrics {
namespace {

constexpr int kAnsweringThreads = 4;
constexpr size_t kMaxWaiting = 64;  // accepted connections waiting for a thread
constexpr int kSliceMs = 200;       // how often a waiting thread looks at stop_

}  // namespace

absl::StatusOr<std::unique_ptr<HttpExposer>> HttpExposer::Start(const std::string& address,
                                                                Registry* registry) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen: '", address, "' is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  const std::string port_text = std::to_string(port);
  if (const int rc =
          getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen: ", address, ": ", gai_strerror(rc)));
  }
  const int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 16) != 0) {
    const std::string why = std::strerror(errno);
    freeaddrinfo(res);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("--metrics-listen ", address, ": ", why));
  }
  freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int bound_port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  auto e = std::unique_ptr<HttpExposer>(new HttpExposer(fd, bound_port, registry));
  for (int i = 0; i < kAnsweringThreads; ++i) {
    e->answerers_.emplace_back([raw = e.get()] { raw->Serve(); });
  }
  e->acceptor_ = std::thread([raw = e.get()] { raw->Accept(); });
  return e;
}

HttpExposer::~HttpExposer() {
  {
    // Under the lock: a thread between its look at stop_ and its wait would miss the notify.
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  shutdown(fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ready_.notify_all();
  for (std::thread& t : answerers_) t.join();  // each notices stop_ within a poll slice
  for (const int client : accepted_) close(client);
  close(fd_);
}

void HttpExposer::Accept() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, kSliceMs) <= 0) continue;  // wake up now and then to notice stop_
    const int client = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (accepted_.size() >= kMaxWaiting) {
      close(client);  // every thread held and a queue behind them: this one is refused
      continue;
    }
    accepted_.push_back(client);
    ready_.notify_one();
  }
}

void HttpExposer::Serve() {
  while (true) {
    int client;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ready_.wait(lock, [this] { return stop_ || !accepted_.empty(); });
      if (stop_) return;
      client = accepted_.front();
      accepted_.pop_front();
    }
    Answer(client);
    close(client);
  }
}

namespace {

// Waits until `client` can be read (POLLIN) or written (POLLOUT), in slices so that a stop is
// noticed; false once `deadline` passed, the exposer stops, or the connection failed.
bool WaitFor(int client, short events, std::chrono::steady_clock::time_point deadline,
             const std::atomic<bool>& stop) {
  while (!stop) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{client, events, 0};
    const int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), kSliceMs)));
    if (n < 0 && errno != EINTR) return false;
    if (n > 0) return (p.revents & events) != 0;
  }
  return false;
}

}  // namespace

void HttpExposer::Answer(int client) {
  // The request head (up to 8 KiB; only its first line matters) and the answer, within 5 s in
  // all: a client trickling bytes, or not reading, holds this thread no longer.
  std::string head;
  char buf[1024];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 8192) {
    if (!WaitFor(client, POLLIN, deadline, stop_)) return;
    const ssize_t n = recv(client, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return;
    head.append(buf, static_cast<size_t>(n));
  }
  const std::string line = head.substr(0, head.find("\r\n"));
  // "GET <path>[?<query>] HTTP/1.x": a scrape config's params arrive as a query, ignored here.
  std::string path;
  if (line.rfind("GET ", 0) == 0) {
    path = line.substr(4, line.find(' ', 4) - 4);
    path.resize(std::min(path.size(), path.find('?')));
  }
  std::string status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8", body;
  if (path == "/metrics") {
    body = registry_->Serialize();
  } else if (line.rfind("GET ", 0) == 0) {
    status = "404 Not Found";
    type = "text/plain";
    body = "qlorad serves metrics at /metrics\n";
  } else {
    status = "405 Method Not Allowed";
    type = "text/plain";
    body = "GET only\n";
  }
  const std::string response =
      absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
  size_t sent = 0;
  while (sent < response.size()) {
    if (!WaitFor(client, POLLOUT, deadline, stop_)) return;
    const ssize_t n = send(client, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace qlorad::metrics
