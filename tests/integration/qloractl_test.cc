// End to end through the qloractl binary against the real daemon: the job lifecycle, the
// adapter download loading back into the engine with the server's results, tenant isolation,
// and every bad input with its status code and message, with nothing lost.
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/dataset.h"
#include "engine/device_adapter.h"
#include "engine/evaluate.h"
#include "engine/generate.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "engine/peft_adapter.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_process.h"
#include "tests/integration/rpc_client.h"
#include "tests/server/test_dirs.h"

namespace qlorad::testing {
namespace {
namespace fs = std::filesystem;

struct CtlResult {
  int code = -1;
  std::string out, err;
  nlohmann::json json() const { return nlohmann::json::parse(out); }
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class QloractlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    gguf_ = new std::string(Stories260kGguf());
    if (gguf_->empty()) return;
    dir_ = new std::string(
        (fs::temp_directory_path() / ("qlorad_ctl_" + std::to_string(getpid()))).string());
    fs::remove_all(*dir_);
    daemon_ = new DaemonProcess(*dir_, {"--devices=cpu:0", "--progress-interval=0"});
    if (!daemon_->Start()) {
      ADD_FAILURE() << daemon_->log();
      return;
    }
    // Shared fixtures: the model and acme's facts dataset.
    Run(kOpsKey, {"models", "register", "stories", *gguf_});
    auto up = Run(kAcmeKey, {"-o", "json", "datasets", "upload", Data("facts_train.jsonl")});
    dataset_ = new std::string(up.json()["id"].get<std::string>());
  }
  static void TearDownTestSuite() {
    if (daemon_) {
      daemon_->Stop(SIGTERM);
      delete daemon_;
      daemon_ = nullptr;
    }
    if (dir_) fs::remove_all(*dir_);
  }
  void SetUp() override {
    if (gguf_->empty()) GTEST_SKIP() << "stories260K.gguf not found (QLORAD_TEST_MODELS)";
    ASSERT_TRUE(daemon_ && daemon_->running());
  }

  static std::string Data(const std::string& name) {
    return std::string(QLORAD_TEST_DATA_DIR) + "/" + name;
  }
  static std::string WriteFile(const std::string& name, const std::string& content) {
    const std::string path = *dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  // Runs qloractl with `token` (empty: none) against the daemon. Its stderr goes to `err_path`
  // (default: a fresh file of the test folder), where a test can follow it while it runs.
  // `stdin_path`: a file for its stdin (empty: this process's).
  static CtlResult Run(const std::string& token, std::vector<std::string> args,
                       std::string err_path = "", const std::string& stdin_path = "") {
    static int n = 0;
    if (err_path.empty()) err_path = *dir_ + "/ctl-stderr-" + std::to_string(++n);
    std::string cmd = std::string(QLORAD_CTL_BINARY) + " --server " + daemon_->address();
    if (!token.empty()) cmd += " --token " + token;
    for (const std::string& a : args) {
      std::string quoted = "'";
      for (char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      cmd += " " + quoted + "'";
    }
    cmd += " 2>" + err_path;
    if (!stdin_path.empty()) cmd += " <" + stdin_path;
    CtlResult r;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, got);
    const int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = Slurp(err_path);
    return r;
  }

  // A finished facts job of acme's: its id and adapter id.
  static std::pair<std::string, std::string> TrainedJob() {
    static std::pair<std::string, std::string>* done = nullptr;
    if (done) return *done;
    auto r =
        Run(kAcmeKey,
            {"jobs",        "create", "--model",      "stories",  "--train",        *dataset_,
             "--rank",      "8",      "--alpha",      "16",       "--dropout",      "0",
             "--lr",        "3e-3",   "--schedule",   "constant", "--warmup-ratio", "0",
             "--max-steps", "60",     "--batch-size", "8",        "--seq-len",      "64",
             "--seed",      "0",      "--suffix",     "facts",    "--label",        "team=search",
             "--watch"});
    EXPECT_EQ(r.code, 0) << r.err << daemon_->log();
    const size_t at = r.out.find("adapter: ");
    EXPECT_NE(at, std::string::npos) << r.out;
    const std::string adapter = r.out.substr(at + 9, r.out.find('\n', at) - at - 9);
    const size_t job_at = r.out.find("job ");
    const std::string job = r.out.substr(job_at + 4, r.out.find(' ', job_at + 4) - job_at - 4);
    done = new std::pair<std::string, std::string>(job, adapter);
    return *done;
  }

  static void ExpectError(const CtlResult& r, const std::string& code, const std::string& text) {
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("qloractl: " + code + ": "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(text), std::string::npos) << r.err;
  }

  static std::string* gguf_;
  static std::string* dir_;
  static std::string* dataset_;
  static DaemonProcess* daemon_;
};

std::string* QloractlTest::gguf_ = nullptr;
std::string* QloractlTest::dir_ = nullptr;
std::string* QloractlTest::dataset_ = nullptr;
DaemonProcess* QloractlTest::daemon_ = nullptr;

// A daemon asked for an inference device it cannot use does not start, and says which flag.
TEST(QloradFlags, AnUnusableInferenceDeviceStopsTheStartNamingTheFlag) {
  const std::string dir = FreshTestDir("flags");
  int run = 0;
  for (const char* flag : {"--inference-device=gpu7", "--inference-device=cuda:64"}) {
    DaemonProcess daemon(dir + "/" + std::to_string(run++), {"--devices=cpu:0", flag});
    EXPECT_FALSE(daemon.Start()) << flag;
    EXPECT_NE(daemon.log().find("--inference-device"), std::string::npos) << daemon.log();
  }
}

// A numeric flag out of range stops the start naming the flag: it used to be clamped or read as
// "off" without a word (a node refusing every job, or every request, while it looked healthy).
TEST(QloradFlags, ANumericFlagOutOfRangeStopsTheStartNamingIt) {
  const std::string dir = FreshTestDir("numeric_flags");
  int run = 0;
  std::string last_log;
  for (const char* flag :
       {"--max-rank=0", "--max-message-bytes=0", "--checkpoint-every=-5", "--progress-interval=nan",
        "--max-calls-per-tenant=-1", "--device-memory-bytes=999999999999999999",
        "--max-upload-bytes=0", "--inference-memory-bytes=-1",
        "--device-memory-bytes=9223372036854775807"}) {
    DaemonProcess daemon(dir + "/" + std::to_string(run++), {"--devices=cpu:0", flag});
    EXPECT_FALSE(daemon.Start()) << flag;
    const std::string name = std::string(flag).substr(0, std::string(flag).find('='));
    EXPECT_NE(daemon.log().find(name), std::string::npos) << flag << ": " << daemon.log();
    last_log = daemon.log();
  }
  // The last, 2^63 (INT64_MAX as a double), is said as a double: its cast to int64 was
  // undefined, and printed -9223372036854775808 on x86.
  EXPECT_NE(last_log.find("got 9.22337e+18"), std::string::npos) << last_log;
}

// What an admin sees of the node's devices: after a job on cpu:0, its base model stays loaded
// there and is counted, and its adapter, optimizer and activations are given back (the worker
// publishes its accounting a round after the job ends: polled); the largest job is that
// device's budget. A tenant sees capacity and state, not when others' jobs run.
TEST_F(QloractlTest, DevicesShowWhatEachDeviceHolds) {
  TrainedJob();
  CtlResult r;
  nlohmann::json j;
  for (int i = 0; i < 50; ++i) {
    r = Run(kOpsKey, {"-o", "json", "devices"});
    ASSERT_EQ(r.code, 0) << r.err;
    j = r.json();
    if (!j["devices"][0]["memory"].contains("adapters")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(j["devices"].size(), 1u) << r.out;
  const nlohmann::json& d = j["devices"][0];
  EXPECT_EQ(d["name"], "cpu:0");
  EXPECT_EQ(d["description"].get<std::string>().rfind("cpu (gemm: ", 0), 0u) << r.out;
  const int64_t budget = std::stoll(d["memoryBudget"].get<std::string>());
  EXPECT_GT(budget, 0);
  EXPECT_EQ(j["maxJobBytes"], d["memoryBudget"]);
  EXPECT_EQ(d["baseModelsLoaded"], 1) << r.out;
  const int64_t weights = std::stoll(d["memory"]["baseWeights"].get<std::string>());
  EXPECT_GT(weights, 0) << r.out;
  // The job's reservation is released: what stays reserved is the loaded base model, which is
  // (at least) stories' loaded size as the model registry gives it.
  EXPECT_EQ(d["memoryReserved"], d["baseModelBytes"]) << r.out;
  auto model = Run(kOpsKey, {"-o", "json", "models", "get", "stories"});
  ASSERT_EQ(model.code, 0) << model.err;
  EXPECT_GE(std::stoll(d["baseModelBytes"].get<std::string>()),
            std::stoll(model.json()["quantizedBytes"].get<std::string>()));
  EXPECT_FALSE(d.contains("lost")) << r.out;
  for (const char* released : {"adapters", "optimizerDevice", "optimizerHost", "activations"}) {
    EXPECT_FALSE(d["memory"].contains(released)) << released << " still held: " << r.out;
  }
  EXPECT_EQ(j["inferenceDevice"].get<std::string>().rfind("cpu (gemm: ", 0), 0u) << r.out;
  EXPECT_EQ(j["activityShown"], true);

  auto tenant = Run(kAcmeKey, {"-o", "json", "devices"});
  ASSERT_EQ(tenant.code, 0) << tenant.err;
  const nlohmann::json t = tenant.json();
  EXPECT_FALSE(t.contains("activityShown")) << tenant.out;
  EXPECT_EQ(t["maxJobBytes"], j["maxJobBytes"]);
  ASSERT_EQ(t["devices"].size(), 1u);
  EXPECT_EQ(t["devices"][0]["memoryBudget"], d["memoryBudget"]);
  for (const char* hidden : {"memoryReserved", "baseModelBytes", "baseModelsLoaded", "memory"}) {
    EXPECT_FALSE(t["devices"][0].contains(hidden)) << hidden << ": " << tenant.out;
  }
  auto tenant_text = Run(kAcmeKey, {"devices"});
  EXPECT_NE(tenant_text.out.find("shown to admin keys"), std::string::npos) << tenant_text.out;

  auto text = Run(kOpsKey, {"devices"});
  ASSERT_EQ(text.code, 0) << text.err;
  for (const char* want : {"DEVICE", "CARD FREE", "cpu:0   up", "largest job (with its base model)",
                           "generation and evaluation: cpu (gemm: "}) {
    EXPECT_NE(text.out.find(want), std::string::npos) << want << "\n" << text.out;
  }
  ExpectError(Run("not-a-key", {"devices"}), "UNAUTHENTICATED", "");
}

TEST_F(QloractlTest, JobLifecycleAndWatch) {
  const auto [job, adapter] = TrainedJob();
  auto got = Run(kAcmeKey, {"-o", "json", "jobs", "get", job});
  ASSERT_EQ(got.code, 0) << got.err;
  const nlohmann::json j = got.json();
  EXPECT_EQ(j["state"], "SUCCEEDED");
  EXPECT_EQ(j["stepsCompleted"], "60");
  EXPECT_EQ(j["totalSteps"], "60");
  EXPECT_EQ(j["adapterId"], adapter);
  EXPECT_EQ(j["resolved"]["rank"], "8");
  EXPECT_EQ(j["resolved"]["targetModules"].size(), 7u);  // the default, recorded
  EXPECT_LT(j["lastLoss"].get<double>(), 1.5);  // from 7.8 at step 1 (REFERENCE: facts set)

  // The watch replays the whole history of a finished job, in order.
  auto watch = Run(kAcmeKey, {"-o", "json", "jobs", "watch", job});
  ASSERT_EQ(watch.code, 0) << watch.err;
  std::istringstream lines(watch.out);
  std::string line;
  int64_t last_seq = 0, last_step = 0, progress = 0;
  std::vector<std::string> states;
  while (std::getline(lines, line)) {
    const nlohmann::json e = nlohmann::json::parse(line);
    if (!e.contains("sequence")) continue;  // the final Job line
    const int64_t seq = std::stoll(e["sequence"].get<std::string>());
    EXPECT_GT(seq, last_seq);
    last_seq = seq;
    if (e.contains("stateChange")) states.push_back(e["stateChange"]["to"]);
    if (e.contains("progress")) {
      const int64_t step = std::stoll(e["progress"]["step"].get<std::string>());
      EXPECT_GT(step, last_step);
      last_step = step;
      ++progress;
    }
  }
  EXPECT_EQ(states, (std::vector<std::string>{"VALIDATING", "QUEUED", "RUNNING", "SUCCEEDED"}));
  EXPECT_EQ(last_step, 60);
  EXPECT_EQ(progress, 60);  // --progress-interval=0: every step

  // Events in pages: a page that holds the rest points to no next one; one short of it does.
  auto all = Run(kAcmeKey, {"-o", "json", "jobs", "events", job, "--page-size", "1000"});
  ASSERT_EQ(all.code, 0) << all.err;
  const nlohmann::json every = all.json()["events"];
  const size_t n = every.size();
  ASSERT_GT(n, 60u);
  EXPECT_FALSE(all.json().contains("nextAfterSequence"));
  auto exact = Run(kAcmeKey, {"jobs", "events", job, "--page-size", std::to_string(n)});
  ASSERT_EQ(exact.code, 0) << exact.err;
  EXPECT_EQ(exact.err.find("more events"), std::string::npos) << exact.err;
  auto short_page =
      Run(kAcmeKey, {"-o", "json", "jobs", "events", job, "--page-size", std::to_string(n - 1)});
  ASSERT_EQ(short_page.code, 0) << short_page.err;
  EXPECT_EQ(short_page.json()["events"].size(), n - 1);
  const std::string after = every[n - 2]["sequence"];
  EXPECT_EQ(short_page.json()["nextAfterSequence"], after);
  auto rest = Run(kAcmeKey, {"-o", "json", "jobs", "events", job, "--after", after});
  ASSERT_EQ(rest.code, 0) << rest.err;
  ASSERT_EQ(rest.json()["events"].size(), 1u);
  EXPECT_EQ(rest.json()["events"][0], every[n - 1]);

  auto listed = Run(
      kAcmeKey, {"-o", "json", "jobs", "list", "--state", "succeeded", "--label", "team=search"});
  ASSERT_EQ(listed.code, 0) << listed.err;
  EXPECT_EQ(listed.json()["jobs"].size(), 1u);
  auto none = Run(kAcmeKey, {"-o", "json", "jobs", "list", "--label", "team=other"});
  EXPECT_FALSE(none.json().contains("jobs"));
  // A key given twice is refused (the last one silently won).
  auto twice = Run(kAcmeKey, {"jobs", "list", "--label", "team=search", "--label", "team=x"});
  EXPECT_EQ(twice.code, 2) << twice.err;
  EXPECT_NE(twice.err.find("--label: key 'team' is given twice"), std::string::npos) << twice.err;
  // Filters are bounded as labels are: each is matched against every job listed.
  std::vector<std::string> many = {"jobs", "list"};
  for (int i = 0; i < 33; ++i) {
    many.push_back("--label");
    many.push_back("k" + std::to_string(i) + "=v");
  }
  ExpectError(Run(kAcmeKey, many), "INVALID_ARGUMENT", "labels: at most 32 label filters");
}

TEST_F(QloractlTest, DownloadedAdapterGivesTheServersResultsInTheEngine) {
  const auto [job, adapter] = TrainedJob();
  const std::string out = *dir_ + "/adapter";
  auto dl = Run(kAcmeKey, {"adapters", "download", adapter, "--out", out});
  ASSERT_EQ(dl.code, 0) << dl.err;
  const nlohmann::json config = nlohmann::json::parse(Slurp(out + "/adapter_config.json"));
  EXPECT_EQ(config["r"], 8);
  EXPECT_EQ(config["peft_type"], "LORA");

  auto eval = Run(kAcmeKey, {"-o", "json", "eval", "--model", "stories", "--adapter", adapter,
                             "--dataset", *dataset_});
  ASSERT_EQ(eval.code, 0) << eval.err;
  const double server_loss = eval.json()["loss"].get<double>();
  const std::string prompt = "The name of the dragon in Pipville is";
  auto gen = Run(kAcmeKey, {"generate", "--model", "stories", "--adapter", adapter, "--prompt",
                            prompt, "--max-tokens", "12", "--temperature", "0"});
  ASSERT_EQ(gen.code, 0) << gen.err;

  // The same computations in this process, on the downloaded PEFT files.
  auto source = OpenModelSource(*gguf_);
  ASSERT_TRUE(source.ok());
  auto device = CreateCpuDevice(1);
  const LlamaConfig cfg = source->weights.config;
  auto model = LlamaModel::Create(std::move(source->weights), device.get(), ModelOptions{},
                                  std::move(source->prequantized));
  ASSERT_TRUE(model.ok());
  auto peft = LoadPeftAdapter(out, cfg);
  ASSERT_TRUE(peft.ok()) << peft.status();
  auto on_device = DeviceAdapter::Create(device.get(), cfg, peft->config, peft->params);
  ASSERT_TRUE(on_device.ok());
  auto examples = TokenizeJsonl(Slurp(Data("facts_train.jsonl")), *source->tokenizer, "facts");
  ASSERT_TRUE(examples.ok());
  auto local =
      EvaluateExamples(**model, *examples, cfg.max_position_embeddings, (*on_device)->weights());
  ASSERT_TRUE(local.ok());
  EXPECT_NEAR(local->loss, server_loss, 1e-5 * server_loss);
  auto base = EvaluateExamples(**model, *examples, cfg.max_position_embeddings);
  EXPECT_LT(local->loss, base->loss - 1.0);  // the adapter learned the facts

  std::vector<int32_t> ids = {source->tokenizer->bos_id()};
  auto p = source->tokenizer->Encode(prompt);
  ids.insert(ids.end(), p->begin(), p->end());
  SamplingOptions so;
  so.max_new_tokens = 12;
  auto greedy = Generate(**model, ids, so, {}, (*on_device)->weights());
  ASSERT_TRUE(greedy.ok());
  std::vector<int32_t> all = ids;
  all.insert(all.end(), greedy->tokens.begin(), greedy->tokens.end());
  auto text = source->tokenizer->Decode(all);
  auto prompt_text = source->tokenizer->Decode(ids);
  EXPECT_EQ(gen.out, text->substr(prompt_text->size()) + "\n");
}

TEST_F(QloractlTest, MetricsDescribeTrainingAndMemory) {
  const auto [job, adapter] = TrainedJob();
  // One generation: the inference device then holds the base model and the adapter.
  ASSERT_EQ(Run(kAcmeKey, {"generate", "--model", "stories", "--adapter", adapter, "--prompt",
                           "Once", "--max-tokens", "2"})
                .code,
            0);
  const std::string text = ScrapeMetrics(*daemon_);
  ASSERT_FALSE(text.empty());
  EXPECT_GE(Sample(text, "qlorad_trained_tokens_total{device=\"cpu:0\"}"), 60 * 8 * 10);
  EXPECT_GE(Sample(text, "qlorad_jobs_finished_total{result=\"succeeded\"}"), 1);
  EXPECT_GE(Sample(text, "qlorad_step_duration_seconds_count{device=\"cpu:0\"}"), 60);
  EXPECT_GT(Sample(text, "qlorad_engine_memory_bytes{device=\"cpu:0\",category=\"base_weights\"}"),
            0);
  EXPECT_GT(Sample(text, "qlorad_device_memory_bytes{device=\"cpu:0\",state=\"total\"}"), 0);
  EXPECT_EQ(Sample(text, "qlorad_base_models_loaded{device=\"cpu:0\"}"), 1);
  EXPECT_EQ(Sample(text, "qlorad_device_up{device=\"cpu:0\"}"), 1);
  EXPECT_EQ(Sample(text, "qlorad_inference_models_loaded{device=\"cpu\"}"), 1);
  EXPECT_GT(Sample(text, "qlorad_inference_memory_bytes{device=\"cpu\",category=\"base_weights\"}"),
            0);
  EXPECT_GT(Sample(text, "qlorad_inference_memory_bytes{device=\"cpu\",category=\"adapters\"}"), 0);
  // The job is done: admission holds at least the loaded base model (its size from the model
  // registry), within the budget.
  auto model = Run(kOpsKey, {"-o", "json", "models", "get", "stories"});
  ASSERT_EQ(model.code, 0) << model.err;
  const double reserved =
      Sample(text, "qlorad_device_admission_bytes{device=\"cpu:0\",state=\"reserved\"}");
  EXPECT_GE(reserved, std::stod(model.json()["quantizedBytes"].get<std::string>()));
  EXPECT_LT(reserved,
            Sample(text, "qlorad_device_admission_bytes{device=\"cpu:0\",state=\"budget\"}"));
  EXPECT_GE(Sample(text, "qlorad_jobs{state=\"SUCCEEDED\"}"), 1);
  EXPECT_GE(Sample(text, "qlorad_grpc_requests_total{method=\"CreateJob\",code=\"OK\"}"), 1);
  // A finished job's own series are gone.
  EXPECT_EQ(text.find("job_id=\"" + job + "\""), std::string::npos);
}

TEST_F(QloractlTest, MetricsPassPromtool) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package prometheus, in scripts/install-deps)";
  }
  TrainedJob();
  const std::string path = WriteFile("metrics.txt", ScrapeMetrics(*daemon_));
  const std::string cmd = "promtool check metrics < " + path + " > " + path + ".out 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << Slurp(path + ".out");
}

// TLS: a daemon started with a certificate answers qloractl --tls-ca and refuses plaintext.
TEST_F(QloractlTest, TlsWithAServerCertificate) {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "openssl not installed (Debian package openssl, in scripts/install-deps)";
  }
  const std::string tls = *dir_ + "/tls";
  fs::create_directories(tls);
  const std::string make_cert =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
      tls + "/key.pem -out " + tls + "/cert.pem >" + tls + "/openssl.log 2>&1";
  ASSERT_EQ(std::system(make_cert.c_str()), 0) << Slurp(tls + "/openssl.log");
  DaemonProcess secure(*dir_ + "/tls-daemon", {"--devices=cpu:0", "--tls-cert=" + tls + "/cert.pem",
                                               "--tls-key=" + tls + "/key.pem"});
  ASSERT_TRUE(secure.Start()) << secure.log();
  auto run = [&](std::vector<std::string> extra) {
    std::string cmd = std::string(QLORAD_CTL_BINARY) + " --server " + secure.address() +
                      " --token " + kAcmeKey + " --timeout 10";
    for (const std::string& e : extra) cmd += " " + e;
    cmd += " limits >/dev/null 2>&1";
    return std::system(cmd.c_str());
  };
  EXPECT_EQ(run({"--tls-ca", tls + "/cert.pem"}), 0) << secure.log();
  EXPECT_NE(run({}), 0);  // plaintext to a TLS port fails
  EXPECT_EQ(secure.Stop(SIGTERM), 0);
}

TEST_F(QloractlTest, TenantsSeeOnlyTheirOwnObjects) {
  const auto [job, adapter] = TrainedJob();
  ExpectError(Run(kGlobexKey, {"jobs", "get", job}), "NOT_FOUND", job);
  ExpectError(Run(kGlobexKey, {"adapters", "get", adapter}), "NOT_FOUND", adapter);
  ExpectError(Run(kGlobexKey, {"datasets", "get", *dataset_}), "NOT_FOUND", *dataset_);
  ExpectError(Run(kGlobexKey, {"jobs", "cancel", job}), "NOT_FOUND", job);
  ExpectError(Run(kGlobexKey, {"adapters", "delete", adapter}), "NOT_FOUND", adapter);
  ExpectError(
      Run(kGlobexKey, {"eval", "--model", "stories", "--adapter", adapter, "--dataset", *dataset_}),
      "NOT_FOUND", "");
  auto list = Run(kGlobexKey, {"-o", "json", "jobs", "list"});
  EXPECT_FALSE(list.json().contains("jobs"));
  // Acme's objects are all still there.
  EXPECT_EQ(Run(kAcmeKey, {"adapters", "get", adapter}).code, 0);
}

TEST_F(QloractlTest, AuthErrors) {
  ExpectError(Run("", {"datasets", "list"}), "UNAUTHENTICATED", "authorization");
  ExpectError(Run("wrong-key", {"datasets", "list"}), "UNAUTHENTICATED", "unknown API key");
  ExpectError(Run(kAcmeKey, {"models", "register", "m2", *gguf_}), "PERMISSION_DENIED", "admin");
  ExpectError(Run(kAcmeKey, {"models", "delete", "stories"}), "PERMISSION_DENIED", "admin");
  auto usage = Run(kAcmeKey, {"jobs", "create", "--model", "stories"});
  EXPECT_EQ(usage.code, 2);
}

// "--out --rslora-as-plain" forgot the folder: taking the next flag as the value would write
// into "./--rslora-as-plain/" without the rewrite asked for, and exit 0.
TEST_F(QloractlTest, AFlagMissingItsValueDoesNotSwallowTheNextFlag) {
  auto swallowed =
      Run(kAcmeKey, {"adapters", "download", "adapter-x", "--out", "--rslora-as-plain"});
  EXPECT_EQ(swallowed.code, 2) << swallowed.out << swallowed.err;
  EXPECT_NE(swallowed.err.find("--out needs a value, got the flag '--rslora-as-plain'"),
            std::string::npos)
      << swallowed.err;
  // With '=' a value may start with a dash; the download then fails on the server's answer.
  ExpectError(Run(kAcmeKey, {"adapters", "download", "adapter-x", "--out=" + *dir_ + "/-odd"}),
              "NOT_FOUND", "adapter-x");
}

// Output that cannot be written (stdout on a full disk) fails the command: a script reading
// `-o json` output must not take a cut file with exit 0.
TEST_F(QloractlTest, OutputThatCannotBeWrittenFailsTheCommand) {
  ASSERT_TRUE(fs::exists("/dev/full"));
  const std::string err_path = *dir_ + "/full-disk.err";
  const std::string cmd = std::string(QLORAD_CTL_BINARY) + " --server " + daemon_->address() +
                          " --token " + kAcmeKey + " -o json datasets list >/dev/full 2>" +
                          err_path;
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << Slurp(err_path);
  EXPECT_NE(Slurp(err_path).find("cannot write the output"), std::string::npos) << Slurp(err_path);
}

// File names and arguments are bytes. A Latin-1 file name names its dataset with U+FFFD for the
// byte (as the Python client does); a Latin-1 prompt or label is refused naming the flag. Both
// failed with an error that named nothing: the daemon could not parse the message.
TEST_F(QloractlTest, TextThatIsNotUtf8IsRepairedOrRefusedByName) {
  const std::string path = WriteFile(
      "donn\xE9"
      "es.jsonl",
      "{\"text\": \"Tom has a red ball.\"}\n");
  auto up = Run(kAcmeKey, {"-o", "json", "datasets", "upload", path});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_EQ(up.json()["name"],
            "donn\xEF\xBF\xBD"
            "es.jsonl");
  EXPECT_EQ(Run(kAcmeKey, {"datasets", "delete", up.json()["id"].get<std::string>()}).code, 0);
  auto prompt = Run(kAcmeKey, {"generate", "--model", "stories", "--prompt", "caf\xE9"});
  EXPECT_EQ(prompt.code, 2) << prompt.err;
  EXPECT_NE(prompt.err.find("--prompt: 'caf\xEF\xBF\xBD' is not UTF-8"), std::string::npos)
      << prompt.err;
  auto label = Run(kAcmeKey, {"jobs", "list", "--label", "team=caf\xE9"});
  EXPECT_EQ(label.code, 2) << label.err;
  EXPECT_NE(label.err.find("--label: "), std::string::npos) << label.err;
  // Arguments too, but for a local file's path.
  auto id = Run(kAcmeKey, {"jobs", "get", "job-caf\xE9"});
  EXPECT_EQ(id.code, 2) << id.err;
  EXPECT_NE(id.err.find("jobs get: ID 'job-caf\xEF\xBF\xBD' is not UTF-8"), std::string::npos)
      << id.err;
}

// A create whose answer is lost cannot tell whether the job was stored: the error gives the
// idempotency key qloractl sent (it sends one always), and the same command with it gets one
// job, never a second.
TEST_F(QloractlTest, ACreateWithoutAnAnswerNamesItsKeyForTheRetry) {
  const std::string err_path = *dir_ + "/lost-answer.err";
  const std::string cmd = std::string(QLORAD_CTL_BINARY) + " --server 127.0.0.1:1 --token " +
                          kAcmeKey + " jobs create --model stories --train " + *dataset_ +
                          " --max-steps 2 2>" + err_path;
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string err = Slurp(err_path);
  const std::string flag = "--idempotency-key '";
  const size_t at = err.find(flag + "qloractl-");
  ASSERT_NE(at, std::string::npos) << err;
  const size_t from = at + flag.size();
  const std::string key = err.substr(from, err.find('\'', from) - from);
  const std::vector<std::string> retry = {
      "-o",      "json",    "jobs",        "create", "--model",           "stories",
      "--train", *dataset_, "--max-steps", "2",      "--idempotency-key", key};
  auto first = Run(kAcmeKey, retry);
  auto again = Run(kAcmeKey, retry);
  ASSERT_EQ(first.code, 0) << first.err;
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(first.json()["id"], again.json()["id"]);
}

// Watching with no daemon at the address (a typo, a daemon not started) fails at once: it
// retried for 10 minutes, which looked like a hang.
TEST_F(QloractlTest, AWatchOfANeverReachedDaemonFailsAtOnce) {
  const std::string err_path = *dir_ + "/unreached-watch.err";
  const std::string cmd = std::string(QLORAD_CTL_BINARY) + " --server 127.0.0.1:1 --token " +
                          kAcmeKey + " jobs watch job-0123456789abcdef 2>" + err_path;
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(Slurp(err_path).find("UNAVAILABLE"), std::string::npos) << Slurp(err_path);
  EXPECT_LT(took, 10.0);
}

TEST_F(QloractlTest, BadJobRequestsGetTheRightCodeAndStoreNothing) {
  const std::string before = Run(kAcmeKey, {"-o", "json", "jobs", "list"}).out;
  auto create = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"jobs",    "create",  "--model",     "stories",
                                     "--train", *dataset_, "--max-steps", "5"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(kAcmeKey, args);
  };
  ExpectError(create({"--rank", "0"}), "INVALID_ARGUMENT", "hyperparameters.rank");
  ExpectError(create({"--rank", "1024"}), "INVALID_ARGUMENT", "hyperparameters.rank");
  ExpectError(create({"--lr", "-0.001"}), "INVALID_ARGUMENT", "hyperparameters.learning_rate");
  ExpectError(create({"--seq-len", "100000"}), "INVALID_ARGUMENT", "hyperparameters.seq_len");
  ExpectError(create({"--targets", "q_proj,bogus"}), "INVALID_ARGUMENT",
              "hyperparameters.target_modules");
  ExpectError(create({"--batch-size", "100000"}), "INVALID_ARGUMENT", "hyperparameters.batch_size");
  ExpectError(Run(kAcmeKey, {"jobs", "create", "--model", "nope", "--train", *dataset_}),
              "NOT_FOUND", "model: no base model named 'nope'");
  ExpectError(Run(kAcmeKey, {"jobs", "create", "--model", "stories", "--train", "ds-nope"}),
              "NOT_FOUND", "training_dataset");
  ExpectError(Run(kAcmeKey, {"jobs", "get", "job-0000"}), "NOT_FOUND", "job-0000");
  ExpectError(Run(kAcmeKey, {"jobs", "cancel", "job-0000"}), "NOT_FOUND", "job-0000");
  EXPECT_EQ(Run(kAcmeKey, {"-o", "json", "jobs", "list"}).out, before);
}

TEST_F(QloractlTest, IdempotencyKeys) {
  auto first = Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train",
                              *dataset_, "--max-steps", "3", "--idempotency-key", "k1"});
  ASSERT_EQ(first.code, 0) << first.err;
  auto again = Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train",
                              *dataset_, "--max-steps", "3", "--idempotency-key", "k1"});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(first.json()["id"], again.json()["id"]);
  ExpectError(Run(kAcmeKey, {"jobs", "create", "--model", "stories", "--train", *dataset_,
                             "--max-steps", "4", "--idempotency-key", "k1"}),
              "ALREADY_EXISTS", "k1");
  const std::string id = first.json()["id"];
  EXPECT_EQ(Run(kAcmeKey, {"jobs", "watch", id}).code, 0);
  // Deleting the finished job frees its key, and keeps its adapter.
  const std::string adapter = Run(kAcmeKey, {"-o", "json", "jobs", "get", id}).json()["adapterId"];
  ExpectError(Run(kGlobexKey, {"jobs", "delete", id}), "NOT_FOUND", id);
  auto deleted = Run(kAcmeKey, {"jobs", "delete", id});
  ASSERT_EQ(deleted.code, 0) << deleted.err;
  EXPECT_EQ(deleted.out, "deleted job " + id + "\n");
  ExpectError(Run(kAcmeKey, {"jobs", "get", id}), "NOT_FOUND", id);
  ExpectError(Run(kAcmeKey, {"jobs", "events", id}), "NOT_FOUND", id);
  EXPECT_EQ(Run(kAcmeKey, {"adapters", "get", adapter}).code, 0);
  auto fresh = Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train",
                              *dataset_, "--max-steps", "4", "--idempotency-key", "k1"});
  ASSERT_EQ(fresh.code, 0) << fresh.err;
  EXPECT_NE(fresh.json()["id"], id);
  EXPECT_EQ(Run(kAcmeKey, {"jobs", "watch", fresh.json()["id"]}).code, 0);
}

// A rejected value sent whole (a 100 KB model name) comes back in an error that still names
// the field and stays short: gRPC's metadata limit would otherwise replace it with its own.
TEST_F(QloractlTest, AnErrorAboutAHugeValueStaysShortAndNamesTheField) {
  RpcClient rpc(daemon_->address(), kAcmeKey);
  v1::CreateJobRequest req;
  req.set_model(std::string(100 * 1024, 'm'));
  req.set_training_dataset(*dataset_);
  auto job = rpc.CreateJob(req);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound)
      << job.status().message().substr(0, 200);
  EXPECT_EQ(job.status().message().rfind("model: no base model named 'mmm", 0), 0u);
  EXPECT_LE(job.status().message().size(), 1100u);
  EXPECT_NE(job.status().message().find("bytes more)"), absl::string_view::npos);
}

// A deploy restarts the daemon under a watch: SIGTERM ends the watch with UNAVAILABLE and
// checkpoints the job, and the new daemon (same address) resumes it. qloractl watches again
// from the last event seen and ends with the job's outcome; it used to exit 1 at the stop.
TEST_F(QloractlTest, AWatchOutlivesARestartOfTheDaemon) {
  auto created =
      Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train", *dataset_,
                     "--rank", "4", "--max-steps", "150", "--batch-size", "8", "--seq-len", "64"});
  ASSERT_EQ(created.code, 0) << created.err;
  const std::string job = created.json()["id"].get<std::string>();
  const std::string err_path = *dir_ + "/watch-across-restart.err";
  auto watch = std::async(std::launch::async, [&] {
    return Run(kAcmeKey, {"jobs", "watch", job}, err_path);
  });
  // The watch prints progress to stderr (one line per event off a terminal): once it has shown
  // step 5 it is open on the daemon, and the job is far from its end.
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (Slurp(err_path).find("step 5/") == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_NE(Slurp(err_path).find("step 5/"), std::string::npos) << Slurp(err_path);
  ASSERT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->log();
  ASSERT_TRUE(daemon_->Start(/*same_address=*/true)) << daemon_->log();
  const CtlResult watched = watch.get();
  EXPECT_EQ(watched.code, 0) << watched.err << daemon_->log();
  EXPECT_NE(watched.out.find("adapter: "), std::string::npos) << watched.out;
  EXPECT_NE(watched.err.find("shutting down"), std::string::npos) << watched.err;
  EXPECT_NE(watched.err.find("watching again"), std::string::npos) << watched.err;
  EXPECT_NE(watched.err.find("step 150/150"), std::string::npos) << watched.err;
  // The job really stopped and resumed (not finished before the stop).
  EXPECT_NE(watched.out.find("resumed from the checkpoint"), std::string::npos) << watched.out;
}

// An upload its client cancels stores nothing, even where what arrived ends on a whole line.
TEST_F(QloractlTest, ACancelledUploadStoresNothing) {
  RpcClient rpc(daemon_->address(), kAcmeKey);
  auto before = rpc.ListDatasets();
  ASSERT_TRUE(before.ok()) << before.status();
  const auto cut =
      rpc.Upload("cut", "{\"text\": \"Tom has a red ball.\"}\n", absl::Milliseconds(500));
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kCancelled) << cut.status();
  absl::SleepFor(absl::Milliseconds(500));  // the daemon's side of the call has ended
  auto after = rpc.ListDatasets();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->size(), before->size());
}

// "-" uploads what comes on stdin (a pipeline's output), under the --name it then needs.
TEST_F(QloractlTest, AnUploadReadsStdinForADash) {
  const std::string piped =
      WriteFile("piped.jsonl", "{\"text\": \"Lily ran.\"}\n{\"text\": \"Tom sat.\"}\n");
  auto up = Run(kAcmeKey, {"-o", "json", "datasets", "upload", "-", "--name", "piped"}, "", piped);
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_EQ(up.json()["name"], "piped");
  EXPECT_EQ(up.json()["examples"], "2");
  EXPECT_EQ(up.json()["bytes"], std::to_string(Slurp(piped).size()));
  auto unnamed = Run(kAcmeKey, {"datasets", "upload", "-"}, "", piped);
  EXPECT_EQ(unnamed.code, 2) << unnamed.err;
  EXPECT_NE(unnamed.err.find("--name: required when the dataset comes from stdin"),
            std::string::npos)
      << unnamed.err;
  EXPECT_EQ(Run(kAcmeKey, {"datasets", "delete", up.json()["id"]}).code, 0);
}

TEST_F(QloractlTest, BadDatasetsAreRefusedWithTheLineAndNothingIsStored) {
  const size_t before = Run(kAcmeKey, {"-o", "json", "datasets", "list"}).json()["datasets"].size();
  ExpectError(Run(kAcmeKey, {"datasets", "upload",
                             WriteFile("bad.jsonl",
                                       "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n"
                                       "{\"text\": 3}\n{\"txt\": \"typo\"}\n")}),
              "INVALID_ARGUMENT",
              "2 bad lines: line 3: field 'text' must be a string; line 4: expected one of");
  ExpectError(Run(kAcmeKey, {"datasets", "upload", WriteFile("empty.jsonl", "")}),
              "INVALID_ARGUMENT", "");
  ExpectError(Run(kAcmeKey, {"datasets", "upload", WriteFile("broken.jsonl", "{\"text\": ")}),
              "INVALID_ARGUMENT", "line 1");
  // acme's quota is 64 KiB in all.
  const std::string big_line = "{\"text\": \"" + std::string(1000, 'a') + "\"}\n";
  std::string big;
  while (big.size() < 70000) big += big_line;
  ExpectError(Run(kAcmeKey, {"datasets", "upload", WriteFile("big.jsonl", big)}),
              "RESOURCE_EXHAUSTED", "acme");
  EXPECT_EQ(Run(kAcmeKey, {"-o", "json", "datasets", "list"}).json()["datasets"].size(), before);
  // A dataset a job still uses cannot be deleted; a model in use neither. Small steps, so that
  // the cancel below returns within one step even on a loaded machine.
  auto running =
      Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train", *dataset_,
                     "--max-steps", "100000", "--batch-size", "1", "--seq-len", "64"});
  ASSERT_EQ(running.code, 0) << running.err;
  ExpectError(Run(kAcmeKey, {"datasets", "delete", *dataset_}), "FAILED_PRECONDITION", "used");
  ExpectError(Run(kOpsKey, {"models", "delete", "stories"}), "FAILED_PRECONDITION", "used");
  const std::string id = running.json()["id"];
  ExpectError(Run(kAcmeKey, {"jobs", "delete", id}), "FAILED_PRECONDITION", "cancel it first");
  // Paused, the job still holds its dataset; a watch ends there with status 5.
  auto paused = Run(kAcmeKey, {"-o", "json", "jobs", "pause", id});
  ASSERT_EQ(paused.code, 0) << paused.err;
  EXPECT_EQ(paused.json()["state"], "PAUSED");
  ExpectError(Run(kAcmeKey, {"datasets", "delete", *dataset_}), "FAILED_PRECONDITION", "used");
  auto watched = Run(kAcmeKey, {"jobs", "watch", id});
  EXPECT_EQ(watched.code, 5) << watched.err;
  EXPECT_NE(watched.err.find("is PAUSED; it goes on after qloractl jobs resume " + id),
            std::string::npos)
      << watched.err;
  auto listed = Run(kAcmeKey, {"-o", "json", "jobs", "list", "--state", "paused"});
  ASSERT_EQ(listed.code, 0) << listed.err;
  ASSERT_EQ(listed.json()["jobs"].size(), 1u);
  EXPECT_EQ(listed.json()["jobs"][0]["id"], id);
  auto resumed = Run(kAcmeKey, {"-o", "json", "jobs", "resume", id});
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.json()["state"], "PAUSED");
  auto cancelled = Run(kAcmeKey, {"-o", "json", "jobs", "cancel", id});
  ASSERT_EQ(cancelled.code, 0) << cancelled.err;
  EXPECT_EQ(cancelled.json()["state"], "CANCELLED");
}

TEST_F(QloractlTest, ConcurrentJobQuota) {
  // acme may hold 3 queued or running jobs.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto r = Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train",
                            *dataset_, "--max-steps", "100000"});
    ASSERT_EQ(r.code, 0) << r.err;
    ids.push_back(r.json()["id"]);
  }
  ExpectError(Run(kAcmeKey, {"jobs", "create", "--model", "stories", "--train", *dataset_}),
              "RESOURCE_EXHAUSTED", "limit");
  auto limits = Run(kAcmeKey, {"-o", "json", "limits"});
  EXPECT_EQ(limits.json()["activeJobs"], "3");
  // A --timeout bounds a watch too; the message says the job goes on, and how to follow it.
  auto bounded = Run(kAcmeKey, {"--timeout", "1", "jobs", "watch", ids[0]});
  ExpectError(bounded, "DEADLINE_EXCEEDED", "stopped watching job " + ids[0]);
  EXPECT_NE(bounded.err.find("the job goes on (qloractl jobs watch " + ids[0]), std::string::npos)
      << bounded.err;
  for (const std::string& id : ids) EXPECT_EQ(Run(kAcmeKey, {"jobs", "cancel", id}).code, 0);
  auto r = Run(kAcmeKey, {"-o", "json", "jobs", "create", "--model", "stories", "--train",
                          *dataset_, "--max-steps", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Run(kAcmeKey, {"jobs", "watch", r.json()["id"]}).code, 0);
}

}  // namespace
}  // namespace qlorad::testing
