#include "tests/integration/daemon_process.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "server/core/tenants.h"
#include "tests/common/stories260k.h"
#include "tests/http_get.h"

namespace qlorad::testing {
namespace fs = std::filesystem;

DaemonProcess::DaemonProcess(std::string dir, std::vector<std::string> extra_flags,
                             std::string binary, Environment env)
    : dir_(std::move(dir)),
      flags_(std::move(extra_flags)),
      binary_(binary.empty() ? QLORAD_DAEMON_BINARY : std::move(binary)),
      env_(std::move(env)) {
  fs::create_directories(dir_);
  std::ofstream t(fs::path(dir_) / "tenants.json");
  t << "{\"tenants\": ["
    << "{\"name\": \"ops\", \"key_sha256\": \"" << core::Sha256Hex(kOpsKey)
    << "\", \"admin\": true},"
    << "{\"name\": \"acme\", \"key_sha256\": \"" << core::Sha256Hex(kAcmeKey)
    << "\", \"limits\": {\"max_concurrent_jobs\": 3, \"max_dataset_bytes\": 65536, "
       "\"max_adapters\": 10}},"
    << "{\"name\": \"globex\", \"key_sha256\": \"" << core::Sha256Hex(kGlobexKey) << "\"}]}\n";
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop(SIGKILL, 10);
}

bool DaemonProcess::Start(bool same_address) {
  const std::string port_file = (fs::path(dir_) / "port").string();
  fs::remove(port_file);
  std::vector<std::string> args = {
      binary_,
      "--listen=127.0.0.1:" + std::to_string(same_address ? port_ : 0),
      "--port-file=" + port_file,
      "--data-dir=" + (fs::path(dir_) / "data").string(),
      "--tenants=" + (fs::path(dir_) / "tenants.json").string(),
      "--metrics-listen=127.0.0.1:0",
      "--metrics-port-file=" + (fs::path(dir_) / "metrics_port").string()};
  args.insert(args.end(), flags_.begin(), flags_.end());
  const std::string log_path = (fs::path(dir_) / "qlorad.log").string();
  // The environment is made before fork (the child only execs): this process's, with env_ over
  // it. The CUDA stand-in's settings come from env_ alone: one left in the shell that runs the
  // tests (a fault file, more cards) must not reach a daemon that did not ask for it.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    bool replaced = var.rfind("QLORAD_CUDA_ON_CPU_", 0) == 0;
    for (const auto& [name, value] : env_) replaced = replaced || var.rfind(name + "=", 0) == 0;
    if (!replaced) env.push_back(var);
  }
  for (const auto& [name, value] : env_) env.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_ = fork();
  if (pid_ == 0) {
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  for (int i = 0; i < 300; ++i) {
    std::ifstream in(port_file);
    if (in >> port_ && port_ > 0) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

int DaemonProcess::Stop(int sig, int timeout_s) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
  return -1;
}

std::string DaemonProcess::log() const {
  std::ifstream in(fs::path(dir_) / "qlorad.log");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string ScrapeMetrics(const DaemonProcess& daemon) {
  std::ifstream in(fs::path(daemon.dir()) / "metrics_port");
  int port = 0;
  in >> port;
  const std::string response = HttpGet(port, "/metrics");
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::string ReadTestData(const std::string& name) {
  std::ifstream in(fs::path(QLORAD_TEST_DATA_DIR) / name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Stories260kGguf() {
  const fs::path p = fs::path(ModelsDir()) / "stories260K" / "stories260K.gguf";
  return fs::exists(p) ? p.string() : "";
}

}  // namespace qlorad::testing
