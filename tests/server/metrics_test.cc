#include <fcntl.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "server/metrics/http_exposer.h"
#include "server/metrics/names.h"
#include "server/metrics/registry.h"
#include "tests/http_get.h"

namespace qlorad::metrics {
namespace {

TEST(MetricsRegistryTest, TextExpositionOfEveryType) {
  Registry r;
  r.Declare("jobs_total", Registry::Type::kCounter, "Jobs that\nended.", {"result"});
  r.Declare("queue_depth", Registry::Type::kGauge, "Queued jobs.", {});
  r.Declare("step_seconds", Registry::Type::kHistogram, "Step time.", {"device"}, {0.1, 1});
  r.Add("jobs_total", {"ok"}, 2);
  r.Add("jobs_total", {"ok"}, 1);
  r.Add("jobs_total", {"a\"b\\c"}, 1);
  r.Add("jobs_total", {"ok"}, -5);  // counters never go down
  r.Set("queue_depth", {}, 4);
  r.Observe("step_seconds", {"cpu:0"}, 0.05);
  r.Observe("step_seconds", {"cpu:0"}, 0.5);
  r.Observe("step_seconds", {"cpu:0"}, 3);
  EXPECT_EQ(r.Serialize(),
            "# HELP jobs_total Jobs that\\nended.\n"
            "# TYPE jobs_total counter\n"
            "jobs_total{result=\"a\\\"b\\\\c\"} 1\n"
            "jobs_total{result=\"ok\"} 3\n"
            "# HELP queue_depth Queued jobs.\n"
            "# TYPE queue_depth gauge\n"
            "queue_depth 4\n"
            "# HELP step_seconds Step time.\n"
            "# TYPE step_seconds histogram\n"
            "step_seconds_bucket{device=\"cpu:0\",le=\"0.1\"} 1\n"
            "step_seconds_bucket{device=\"cpu:0\",le=\"1\"} 2\n"
            "step_seconds_bucket{device=\"cpu:0\",le=\"+Inf\"} 3\n"
            "step_seconds_sum{device=\"cpu:0\"} 3.55\n"
            "step_seconds_count{device=\"cpu:0\"} 3\n");
}

TEST(MetricsRegistryTest, SeriesGoAwayAndCollectorsRunAtEachScrape) {
  Registry r;
  r.Declare("job_loss", Registry::Type::kGauge, "Loss.", {"job_id"});
  r.Set("job_loss", {"j1"}, 1.5);
  r.Set("job_loss", {"j2"}, 2.5);
  r.Remove("job_loss", {"j1"});
  int scrapes = 0;
  r.AddCollector([&](Registry& reg) { reg.Set("job_loss", {"j3"}, ++scrapes); });
  std::string text = r.Serialize();
  EXPECT_EQ(text.find("j1"), std::string::npos);
  EXPECT_NE(text.find("job_loss{job_id=\"j2\"} 2.5"), std::string::npos);
  EXPECT_NE(text.find("job_loss{job_id=\"j3\"} 1"), std::string::npos);
  text = r.Serialize();
  EXPECT_NE(text.find("job_loss{job_id=\"j3\"} 2"), std::string::npos);
}

using ::qlorad::testing::HttpGet;
using ::qlorad::testing::Sample;

// A registry with one gauge, up_gauge 1.
void DeclareUp(Registry& r) {
  r.Declare("up_gauge", Registry::Type::kGauge, "Up.", {});
  r.Set("up_gauge", {}, 1);
}

TEST(HttpExposerTest, ServesMetricsOnItsOwnPort) {
  Registry r;
  DeclareUp(r);
  auto e = HttpExposer::Start("127.0.0.1:0", &r);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_GT((*e)->port(), 0);
  const std::string ok = HttpGet((*e)->port(), "/metrics");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(ok.find("\r\n\r\n# HELP up_gauge Up.\n# TYPE up_gauge gauge\nup_gauge 1\n"),
            std::string::npos);
  EXPECT_EQ(HttpGet((*e)->port(), "/other").rfind("HTTP/1.1 404", 0), 0u);
  // A scrape config's params arrive as a query string (they were answered 404).
  EXPECT_EQ(HttpGet((*e)->port(), "/metrics?module=qlorad").rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  EXPECT_EQ(HttpGet((*e)->port(), "/metricsx").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_FALSE(HttpExposer::Start("127.0.0.1:notaport", &r).ok());
  // The port is taken: a clear error, no crash.
  EXPECT_EQ(HttpExposer::Start("127.0.0.1:" + std::to_string((*e)->port()), &r).status().code(),
            absl::StatusCode::kUnavailable);
}

// process_open_fds counts the process's descriptors, not the scrape's own (the stat file and the
// listing were counted, 2 too many); process_start_time_seconds stays put from one scrape to the
// next (it jittered by up to a second, which restart detection reads as a restart).
TEST(ProcessMetricsTest, OpenFdsAreExactAndTheStartTimeStaysPut) {
  Registry r;
  DeclareDaemonMetrics(r);
  int open_fds = 0;  // probed without opening anything
  for (int fd = 0; fd < 65536; ++fd) open_fds += fcntl(fd, F_GETFD) != -1;
  EXPECT_EQ(Sample(r.Serialize(), "process_open_fds"), open_fds);
  const double start = Sample(r.Serialize(), "process_start_time_seconds");
  EXPECT_GT(start, 1.6e9);
  // The boot time is in whole seconds, so a process that just started may read up to 1 s ahead.
  EXPECT_LE(start, static_cast<double>(time(nullptr)) + 1.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1050));
  EXPECT_EQ(Sample(r.Serialize(), "process_start_time_seconds"), start);
}

// A client that trickles its request head (a byte every 200 ms, for 12 s) holds one answering
// thread for at most 5 s, and no scrape behind it: it used to hold the only one, and each byte
// restarted the 5 s.
TEST(HttpExposerTest, ATricklingClientHoldsNoScrapeBack) {
  Registry r;
  DeclareUp(r);
  auto e = HttpExposer::Start("127.0.0.1:0", &r);
  ASSERT_TRUE(e.ok()) << e.status();
  const int fd = ::qlorad::testing::ConnectLoopback((*e)->port());
  ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (int i = 0; i < 60 && !stop; ++i) {
      send(fd, "G", 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the trickler is being served
  const auto start = std::chrono::steady_clock::now();
  const std::string scraped = HttpGet((*e)->port(), "/metrics");
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop = true;
  trickle.join();
  close(fd);
  EXPECT_EQ(scraped.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << scraped;
  EXPECT_LT(waited, 2.0);  // was 4.7 s (the trickler's 5 s left), before that 12 s
}

// A client that asks for a large answer and never reads it: its answer stops after 5 s, scrapes
// are answered meanwhile, and the exposer (the daemon's exit) does not wait for it. A blocking
// send used to hold the only thread, every scrape and the exit for as long as the client lived.
TEST(HttpExposerTest, AClientThatDoesNotReadHoldsNeitherScrapesNorTheExit) {
  Registry r;
  r.Declare("wide", Registry::Type::kGauge, "Many series.", {"name"});
  const std::string padding(200, 'x');
  for (int i = 0; i < 50000; ++i) r.Set("wide", {padding + std::to_string(i)}, i);  // ~12 MB
  auto e = HttpExposer::Start("127.0.0.1:0", &r);
  ASSERT_TRUE(e.ok()) << e.status();
  // A small receive buffer, so that the answer cannot fit the socket buffers whatever the host's
  // defaults: the answering thread must wait on the send.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>((*e)->port()));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // its answer fills the buffers
  auto start = std::chrono::steady_clock::now();
  const std::string scraped = HttpGet((*e)->port(), "/metrics");
  EXPECT_EQ(scraped.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << scraped.substr(0, 100);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 4.0);
  start = std::chrono::steady_clock::now();
  e->reset();  // the client is still connected, reading nothing
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 2.0);
  close(fd);
}

}  // namespace
}  // namespace qlorad::metrics
