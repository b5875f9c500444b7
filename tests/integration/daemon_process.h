// The real qlorad binary in a child process for integration tests: a fresh data directory, a
// tenants file with known keys, a loopback port picked by the daemon (--listen port 0,
// --port-file), and its log kept for failure messages.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "tests/http_get.h"

namespace qlorad::testing {

// Keys of the tenants every integration test has: "ops" (admin), "acme" and "globex".
inline constexpr char kOpsKey[] = "ops-secret-key";
inline constexpr char kAcmeKey[] = "acme-secret-key";
inline constexpr char kGlobexKey[] = "globex-secret-key";

class DaemonProcess {
 public:
  // `dir`: the test's folder (data, tenants file and log live there; kept across restarts).
  // `binary`: the daemon to run; empty for qlorad (QLORAD_DAEMON_BINARY). `env`: variables set
  // for the daemon (over this process's), at every start.
  using Environment = std::vector<std::pair<std::string, std::string>>;
  explicit DaemonProcess(std::string dir, std::vector<std::string> extra_flags = {},
                         std::string binary = "", Environment env = {});
  ~DaemonProcess();  // SIGKILL if still running

  // Starts the daemon and waits (up to 30 s) for its port; false with the log on failure.
  // `same_address`: listens on the port of the last start, as a restarted node does (clients
  // reconnect to it); otherwise on a free port the daemon picks.
  bool Start(bool same_address = false);
  // Sends `sig` and waits up to `timeout_s` for the exit; returns the exit status (-1: timeout,
  // 128 + n for a signal).
  int Stop(int sig = SIGTERM, int timeout_s = 30);
  bool running() const { return pid_ > 0; }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string log() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::string> flags_;
  std::string binary_;
  Environment env_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// A file of tests/data (QLORAD_TEST_DATA_DIR), whole.
std::string ReadTestData(const std::string& name);

// Where the shared stories260K GGUF file is ("" when absent).
std::string Stories260kGguf();

// The body of the daemon's Prometheus page ("" when it does not answer); Sample (http_get.h)
// reads one series' value in it.
std::string ScrapeMetrics(const DaemonProcess& daemon);

}  // namespace qlorad::testing
