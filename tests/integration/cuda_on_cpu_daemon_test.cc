// The daemon's GPU paths end to end, on a machine without a GPU: qlorad-cuda-on-cpu is qlorad
// with its CUDA device built against the CPU stand-in of CUDA (tests/cuda_on_cpu), so that
// --devices auto finds one card, cuda:0 (16 GiB). What runs here is the daemon's own code for a
// card: its budget from cudaMemGetInfo, training and evaluation through the CUDA device, jobs
// taking turns with the waiting one's optimizer paged out, a card lost to a fault (with one card
// and with two), and a card out of memory. The stand-in's settings (more cards, a smaller card,
// a fault) reach each daemon through its environment (DaemonProcess).
// What the stand-in cannot show (speed, the card's own arithmetic) is tests/gpu's, on a GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/rpc_client.h"
#include "tests/server/test_dirs.h"

namespace qlorad::testing {
namespace {
namespace fs = std::filesystem;

// The stand-in's card unless QLORAD_CUDA_ON_CPU_MEMORY_BYTES says otherwise (tests/cuda_on_cpu).
constexpr int64_t kCardBytes = int64_t{16} << 30;

// A short fine-tune (a step costs seconds on the stand-in). No dropout: the CPU twin must see
// the same computation.
v1::CreateJobRequest ShortJob(const std::string& dataset, int seed, int steps) {
  v1::CreateJobRequest req;
  req.set_model("stories");
  req.set_training_dataset(dataset);
  v1::Hyperparameters* h = req.mutable_hyperparameters();
  h->set_rank(4);
  h->set_alpha(8);
  h->set_dropout(0.0f);
  h->set_learning_rate(3e-3);
  h->set_max_steps(steps);
  h->set_batch_size(4);
  h->set_seq_len(64);
  h->set_seed(seed);
  return req;
}

std::vector<double> StepLosses(const std::vector<v1::JobEvent>& events) {
  std::vector<double> losses;
  for (const v1::JobEvent& e : events) {
    if (e.has_progress()) losses.push_back(e.progress().loss());
  }
  return losses;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Polls `done` every 100 ms for up to `seconds` (the worker publishes what a job's end changed a
// moment after the job's record says it ended).
bool Eventually(const std::function<bool()>& done, int seconds = 20) {
  for (int i = 0; i < 10 * seconds; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

// The step the job's last resume started from (its state change says "resumed from the
// checkpoint at step N"), or -1 when it never resumed.
int64_t ResumedFromStep(const std::vector<v1::JobEvent>& events) {
  const std::string said = "resumed from the checkpoint at step ";
  int64_t step = -1;
  for (const v1::JobEvent& e : events) {
    if (!e.has_state_change()) continue;
    const std::string& reason = e.state_change().reason();
    if (const size_t at = reason.find(said); at != std::string::npos) {
      step = std::stoll(reason.substr(at + said.size()));
    }
  }
  return step;
}

class CudaOnCpuDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_ = Stories260kGguf();
    if (gguf_.empty()) GTEST_SKIP() << "stories260K.gguf not found (QLORAD_TEST_MODELS)";
    dir_ = FreshTestDir("cuda_on_cpu_daemon");
  }
  void TearDown() override {
    for (auto* d : {&card_, &cpu_}) {
      if (*d) (*d)->Stop(SIGKILL, 10);
    }
    if (!dir_.empty() && !HasFailure()) fs::remove_all(dir_);
  }

  // The stand-in daemon in dir_/card with `flags` and the stand-in's settings in `env`
  // (tests/cuda_on_cpu/README.md), the model registered and the facts uploaded.
  void StartCard(std::vector<std::string> flags, DaemonProcess::Environment env = {}) {
    flags.push_back("--progress-interval=0");
    card_ = std::make_unique<DaemonProcess>(dir_ + "/card", flags, QLORAD_DAEMON_CUDA_ON_CPU_BINARY,
                                            std::move(env));
    ASSERT_TRUE(card_->Start()) << card_->log();
    ASSERT_TRUE(Ops(*card_).RegisterModel("stories", gguf_).ok());
    auto train = Acme(*card_).Upload("facts", ReadTestData("facts_train.jsonl"));
    ASSERT_TRUE(train.ok()) << train.status();
    train_ = train->id();
  }

  // The stand-in daemon stopped and started again in dir_/card (what it stored stays), now with
  // `flags`; whether it started. `new_log`: what it logged this time.
  bool RestartCard(std::vector<std::string> flags, std::string* new_log = nullptr) {
    card_->Stop();
    const size_t logged = card_->log().size();  // one log file across restarts
    flags.push_back("--progress-interval=0");
    card_ =
        std::make_unique<DaemonProcess>(dir_ + "/card", flags, QLORAD_DAEMON_CUDA_ON_CPU_BINARY);
    const bool started = card_->Start();
    if (new_log != nullptr) *new_log = card_->log().substr(logged);
    return started;
  }

  RpcClient Ops(const DaemonProcess& d) { return RpcClient(d.address(), kOpsKey); }
  RpcClient Acme(const DaemonProcess& d) { return RpcClient(d.address(), kAcmeKey); }

  struct Ended {
    v1::Job job;
    std::vector<double> losses;  // each step's, in order
    std::vector<v1::JobEvent> events;
  };
  // Submits and watches to the end.
  Ended RunJob(const DaemonProcess& d, const v1::CreateJobRequest& req) {
    auto job = Acme(d).CreateJob(req);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return {};
    return WatchToEnd(d, job->id());
  }
  Ended WatchToEnd(const DaemonProcess& d, const std::string& id) {
    auto events = Acme(d).Watch(id);
    EXPECT_TRUE(events.ok()) << events.status();
    auto job = Acme(d).GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!events.ok() || !job.ok()) return {};
    return {*job, StepLosses(*events), *events};
  }

  std::string gguf_, dir_, train_;
  std::unique_ptr<DaemonProcess> card_, cpu_;
};

// --devices auto and --inference-device auto find the card; admission's budget is 90% of it less
// the quarter generation and evaluation take (they share the card), and
// operators see the card's own figures before any job has run. A fine-tune on it gives the losses
// the CPU daemon gives for the same request, within bf16 GEMM rounding (5e-3 relative; 1.0e-3 seen
// at worst), and its adapter evaluates on the card as on the CPU.
TEST_F(CudaOnCpuDaemonTest, AutoFindsTheCardTrainsOnItAndEvaluatesTheAdapterThere) {
  StartCard({"--devices=auto", "--inference-device=auto"});
  auto devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->devices_size(), 1);
  const v1::Device& card = devices->devices(0);
  EXPECT_EQ(card.name(), "cuda:0");
  EXPECT_TRUE(Contains(card.description(), "CUDA stand-in")) << card.description();
  EXPECT_EQ(card.memory().device_total(), kCardBytes);
  // 90% of the card, of which generation and evaluation, sharing it, take a quarter.
  constexpr int64_t kOurs = kCardBytes / 10 * 9;
  EXPECT_EQ(card.inference_memory_bytes(), kOurs / 4);
  EXPECT_EQ(card.memory_budget(), kOurs - kOurs / 4);
  EXPECT_FALSE(card.lost());
  EXPECT_TRUE(Contains(devices->inference_device(), "cuda:0")) << devices->inference_device();
  EXPECT_TRUE(Contains(devices->inference_device(), "limited to")) << devices->inference_device();
  const std::string before = ScrapeMetrics(*card_);
  EXPECT_EQ(Sample(before, "qlorad_device_memory_bytes{device=\"cuda:0\",state=\"total\"}"),
            static_cast<double>(kCardBytes))
      << before;
  EXPECT_EQ(Sample(before, "qlorad_device_up{device=\"cuda:0\"}"), 1);

  auto valid = Acme(*card_).Upload("facts-valid", ReadTestData("facts_valid.jsonl"));
  ASSERT_TRUE(valid.ok()) << valid.status();
  const auto [job, losses, job_events] = RunJob(*card_, ShortJob(train_, 3, 4));
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error().message() << "\n" << card_->log();
  EXPECT_EQ(job.device(), "cuda:0");
  ASSERT_EQ(losses.size(), 4u);

  // The same request on the CPU daemon.
  cpu_ = std::make_unique<DaemonProcess>(
      dir_ + "/cpu", std::vector<std::string>{"--devices=cpu:0", "--progress-interval=0"});
  ASSERT_TRUE(cpu_->Start()) << cpu_->log();
  ASSERT_TRUE(Ops(*cpu_).RegisterModel("stories", gguf_).ok());
  auto cpu_train = Acme(*cpu_).Upload("facts", ReadTestData("facts_train.jsonl"));
  auto cpu_valid = Acme(*cpu_).Upload("facts-valid", ReadTestData("facts_valid.jsonl"));
  ASSERT_TRUE(cpu_train.ok() && cpu_valid.ok());
  const auto [cpu_job, cpu_losses, cpu_job_events] = RunJob(*cpu_, ShortJob(cpu_train->id(), 3, 4));
  ASSERT_EQ(cpu_job.state(), v1::SUCCEEDED) << cpu_job.error().message();
  ASSERT_EQ(cpu_losses.size(), losses.size());
  double worst = 0.0;
  for (size_t i = 0; i < losses.size(); ++i) {
    EXPECT_NEAR(losses[i], cpu_losses[i], 5e-3 * std::abs(cpu_losses[i])) << "step " << i + 1;
    worst = std::max(worst, std::abs(losses[i] / cpu_losses[i] - 1.0));
  }
  std::printf("step losses, card against cpu: worst relative difference %.2e\n", worst);

  // Evaluation on the card (the inference device), base model and adapter, against the CPU's.
  for (const bool with_adapter : {false, true}) {
    auto on_card =
        Acme(*card_).Evaluate("stories", with_adapter ? job.adapter_id() : "", valid->id());
    auto on_cpu =
        Acme(*cpu_).Evaluate("stories", with_adapter ? cpu_job.adapter_id() : "", cpu_valid->id());
    ASSERT_TRUE(on_card.ok()) << on_card.status() << "\n" << card_->log();
    ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
    EXPECT_NEAR(on_card->loss(), on_cpu->loss(), 5e-3 * on_cpu->loss())
        << (with_adapter ? "with the adapter" : "base model");
    std::printf("evaluation %s: card %.6f, cpu %.6f\n",
                with_adapter ? "with the adapter" : "of the base model", on_card->loss(),
                on_cpu->loss());
  }

  const std::string after = ScrapeMetrics(*card_);
  EXPECT_GT(
      Sample(after, "qlorad_engine_memory_bytes{device=\"cuda:0\",category=\"base_weights\"}"), 0)
      << after;
  // The same batches on both daemons: the same tokens trained, and the card's counter says so.
  EXPECT_GT(job.tokens_trained(), 0);
  EXPECT_EQ(job.tokens_trained(), cpu_job.tokens_trained());
  EXPECT_EQ(Sample(after, "qlorad_trained_tokens_total{device=\"cuda:0\"}"),
            static_cast<double>(job.tokens_trained()));
  EXPECT_EQ(Sample(after, "qlorad_inference_models_loaded{device=\"cuda:0\"}"), 1) << after;
  EXPECT_GT(
      Sample(after, "qlorad_inference_memory_bytes{device=\"cuda:0\",category=\"base_weights\"}"),
      0);
}

// Two jobs on one card take turns step by step; between its steps the waiting job's AdamW moments
// are paged out to host memory (the card then holds neither job's moments: the accounting and the
// advice calls; on the stand-in paging moves no data, so whether the card's prefetches keep the
// moments intact is tests/gpu's to show), and the turns change nothing: each job's losses are bit
// for bit those of the same job run alone, so no state of one job leaks into the other through
// what they share on the card (the base model, the device's workspaces).
TEST_F(CudaOnCpuDaemonTest, JobsTakingTurnsPageOutTheWaitingOptimizerAndTrainAsAlone) {
  StartCard({"--devices=cuda:0", "--max-jobs-per-device=2"});
  auto a = Acme(*card_).CreateJob(ShortJob(train_, 3, 4));
  auto b = Acme(*card_).CreateJob(ShortJob(train_, 5, 4));
  ASSERT_TRUE(a.ok() && b.ok());
  // While both run: the card's figures as the devices service shows them to an admin.
  bool both_paged_out = false;
  int64_t reserved_for_both = 0;  // the model and both jobs' estimates, as admission counts them
  Eventually(
      [&] {
        auto devices = Ops(*card_).Devices();
        auto job_a = Acme(*card_).GetJob(a->id());
        if (!devices.ok() || !job_a.ok()) return true;  // the daemon is gone: fail at once
        const v1::Device& card = devices->devices(0);
        both_paged_out = card.jobs_running() == 2 && card.memory().optimizer_host() > 0 &&
                         card.memory().optimizer_device() == 0;
        if (card.jobs_running() == 2) reserved_for_both = card.memory_reserved();
        return both_paged_out || job_a->state() == v1::SUCCEEDED || job_a->state() == v1::FAILED;
      },
      120);
  EXPECT_TRUE(both_paged_out) << "never saw both jobs' moments in host memory\n" << card_->log();
  const auto [job_a, losses_a, job_a_events] = WatchToEnd(*card_, a->id());
  const auto [job_b, losses_b, job_b_events] = WatchToEnd(*card_, b->id());
  ASSERT_EQ(job_a.state(), v1::SUCCEEDED) << job_a.error().message();
  ASSERT_EQ(job_b.state(), v1::SUCCEEDED) << job_b.error().message();
  ASSERT_EQ(losses_a.size(), 4u);
  // Admission's estimates hold on the card: the most the engine ever held there (paged-out moments
  // counted too) is within what it reserved for the model and the two jobs. Read once the worker
  // has published the jobs' end (their adapters gone), so the peak covers all their steps.
  EXPECT_TRUE(Eventually([&] {
    auto devices = Ops(*card_).Devices();
    return devices.ok() && devices->devices(0).jobs_running() == 0 &&
           devices->devices(0).memory().adapters() == 0;
  }));
  const std::string metrics = ScrapeMetrics(*card_);
  const double peak = Sample(metrics, "qlorad_engine_memory_peak_bytes{device=\"cuda:0\"}");
  EXPECT_GT(peak, 0) << metrics;
  EXPECT_LE(peak, static_cast<double>(reserved_for_both)) << metrics;
  std::printf("card: peak %.0f bytes held, %lld reserved for the model and both jobs\n", peak,
              static_cast<long long>(reserved_for_both));

  const auto [alone, losses_alone, alone_events] = RunJob(*card_, ShortJob(train_, 3, 4));
  ASSERT_EQ(alone.state(), v1::SUCCEEDED) << alone.error().message();
  EXPECT_EQ(losses_alone, losses_a);
  EXPECT_NE(losses_b, losses_a);  // another seed, another job: the comparison can tell them apart
}

// A fault on the card (an illegal address, injected by the stand-in) loses it: the running job
// goes back to the queue saying why, the device service and metrics show the card lost, and the
// daemon keeps serving. The fault shows as a GPU shows a kernel's fault, at the host's next wait
// for the card (the step's loss read), not at the launch (the two-card test below faults at the
// launch). After a restart the card serves again and the job resumes from its last
// checkpoint and succeeds.
TEST_F(CudaOnCpuDaemonTest, ALostCardRequeuesItsJobAndARestartFinishesIt) {
  const std::string fault = dir_ + "/fault";
  StartCard({"--devices=cuda:0", "--checkpoint-every=2"},
            {{"QLORAD_CUDA_ON_CPU_FAULT_FILE", fault}});
  auto job = Acme(*card_).CreateJob(ShortJob(train_, 3, 6));
  ASSERT_TRUE(job.ok()) << job.status();
  auto checkpointed = Acme(*card_).Watch(job->id(), [](const v1::JobEvent& e) {
    return e.has_checkpoint() && e.checkpoint().step() >= 2;
  });
  ASSERT_TRUE(checkpointed.ok()) << checkpointed.status();
  ASSERT_TRUE(!checkpointed->empty() && checkpointed->back().has_checkpoint()) << card_->log();
  {  // the next kernel launch faults, shown at the next wait (written whole, then put in place)
    std::ofstream(fault + ".tmp") << "0 async";
    fs::rename(fault + ".tmp", fault);
  }

  auto requeued = Acme(*card_).Watch(job->id(), [](const v1::JobEvent& e) {
    return e.has_state_change() && e.state_change().to() == v1::QUEUED &&
           e.state_change().from() == v1::RUNNING;
  });
  ASSERT_TRUE(requeued.ok()) << requeued.status();
  ASSERT_FALSE(requeued->empty());
  EXPECT_TRUE(Contains(requeued->back().state_change().reason(), "is lost"))
      << requeued->back().state_change().reason();
  EXPECT_FALSE(fs::exists(fault)) << "no launch met the fault";
  // The card is marked lost once its jobs are back in the queue.
  v1::Device card;
  EXPECT_TRUE(Eventually([&] {
    auto devices = Ops(*card_).Devices();
    if (devices.ok()) card = devices->devices(0);
    return card.lost();
  }));
  EXPECT_TRUE(Contains(card.lost_reason(), "illegal memory access")) << card.lost_reason();
  const std::string metrics = ScrapeMetrics(*card_);
  EXPECT_EQ(Sample(metrics, "qlorad_device_up{device=\"cuda:0\"}"), 0) << metrics;
  // Its only device lost, the node says NOT_SERVING (2) to health probes, within the second it
  // looks: a liveness probe restarts it.
  EXPECT_TRUE(Eventually([&] { return Ops(*card_).HealthStatus().value_or(-1) == 2; }))
      << Ops(*card_).HealthStatus().status();
  auto queued = Acme(*card_).GetJob(job->id());
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->state(), v1::QUEUED);
  EXPECT_GE(queued->steps_completed(), 2);
  EXPECT_EQ(card_->Stop(SIGTERM), 0) << card_->log();

  ASSERT_TRUE(card_->Start()) << card_->log();
  auto restarted = Ops(*card_).Devices();
  ASSERT_TRUE(restarted.ok());
  EXPECT_FALSE(restarted->devices(0).lost());
  EXPECT_EQ(Ops(*card_).HealthStatus().value_or(-1), 1);  // SERVING again
  const auto [done, losses, done_events] = WatchToEnd(*card_, job->id());
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error().message() << "\n" << card_->log();
  EXPECT_EQ(done.steps_completed(), 6);
  EXPECT_GE(ResumedFromStep(done_events), 2) << "not resumed from its checkpoint";
  EXPECT_FALSE(done.adapter_id().empty());
}

// Two cards (QLORAD_CUDA_ON_CPU_DEVICES=2): --devices auto takes both, a worker each, and each
// card keeps its own memory, streams and faults (the stand-in refuses work given to another
// card's stream or cuBLAS handle and faults a kernel given another card's memory, as a multi-GPU
// host does, so a device call made while another card is current fails).
// A job whose card faults goes back to the queue and resumes from its checkpoint on the other
// card, which goes on taking jobs while the lost one stays lost.
TEST_F(CudaOnCpuDaemonTest, AJobOfALostCardResumesOnTheOtherCard) {
  const std::string fault = dir_ + "/fault";
  StartCard({"--devices=auto", "--checkpoint-every=2"},
            {{"QLORAD_CUDA_ON_CPU_DEVICES", "2"}, {"QLORAD_CUDA_ON_CPU_FAULT_FILE", fault}});
  auto devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->devices_size(), 2);
  EXPECT_EQ(devices->devices(0).name(), "cuda:0");
  EXPECT_EQ(devices->devices(1).name(), "cuda:1");

  auto job = Acme(*card_).CreateJob(ShortJob(train_, 3, 6));
  ASSERT_TRUE(job.ok()) << job.status();
  auto checkpointed = Acme(*card_).Watch(job->id(), [](const v1::JobEvent& e) {
    return e.has_checkpoint() && e.checkpoint().step() >= 2;
  });
  ASSERT_TRUE(checkpointed.ok()) << checkpointed.status();
  auto running = Acme(*card_).GetJob(job->id());
  ASSERT_TRUE(running.ok());
  const std::string first = running->device();
  ASSERT_TRUE(first == "cuda:0" || first == "cuda:1")
      << "'" << first << "': " << running->error().message() << "\n"
      << card_->log();
  const std::string other = first == "cuda:0" ? "cuda:1" : "cuda:0";
  {  // the next launch on the job's card faults (written whole, then put in place)
    std::ofstream(fault + ".tmp") << first.substr(5);
    fs::rename(fault + ".tmp", fault);
  }

  const auto [done, losses, done_events] = WatchToEnd(*card_, job->id());
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.error().message() << "\n" << card_->log();
  EXPECT_EQ(done.device(), other);
  EXPECT_EQ(done.steps_completed(), 6);
  EXPECT_GE(ResumedFromStep(done_events), 2) << "not resumed from its checkpoint";
  EXPECT_FALSE(fs::exists(fault)) << "no launch on " << first << " met the fault";
  EXPECT_TRUE(Contains(card_->log(), "qlorad: " + first + " is lost")) << card_->log();
  devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  for (const v1::Device& d : devices->devices()) {
    EXPECT_EQ(d.lost(), d.name() == first) << d.name() << ": " << d.lost_reason();
  }
  const std::string metrics = ScrapeMetrics(*card_);
  EXPECT_EQ(Sample(metrics, "qlorad_device_up{device=\"" + first + "\"}"), 0) << metrics;
  EXPECT_EQ(Sample(metrics, "qlorad_device_up{device=\"" + other + "\"}"), 1);
  // One card of two left: the node still serves (its watch looks once a second).
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(Ops(*card_).HealthStatus().value_or(-1), 1);
  const v1::Job next = RunJob(*card_, ShortJob(train_, 5, 1)).job;
  EXPECT_EQ(next.state(), v1::SUCCEEDED) << next.error().message();
  EXPECT_EQ(next.device(), other);
}

// A card that runs out of memory mid-job (a 2 GB card of which other processes hold all but
// 4 MiB; admission was told 1 GB, as when they took it after the start): that job fails saying
// so, the card stays up with as much memory free as before the job, and the next job trains.
TEST_F(CudaOnCpuDaemonTest, AnOutOfMemoryOnTheCardFailsThatJobAndGivesItsMemoryBack) {
  StartCard({"--devices=cuda:0", "--device-memory-bytes=1000000000"},
            {{"QLORAD_CUDA_ON_CPU_MEMORY_BYTES", "4194304"},
             {"QLORAD_CUDA_ON_CPU_TOTAL_BYTES", "2000000000"}});
  auto card_free = [&] {
    auto devices = Ops(*card_).Devices();
    EXPECT_TRUE(devices.ok()) << devices.status();
    return devices.ok() ? devices->devices(0).memory().device_free() : -1;
  };
  const v1::Job fits = RunJob(*card_, ShortJob(train_, 3, 1)).job;
  ASSERT_EQ(fits.state(), v1::SUCCEEDED) << "a batch of 4 fits the 4 MiB card\n" << card_->log();
  const int64_t free_before = card_free();
  std::printf("the 4 MiB card after a batch of 4: %lld bytes free\n",
              static_cast<long long>(free_before));
  v1::CreateJobRequest too_big = ShortJob(train_, 3, 1);
  too_big.mutable_hyperparameters()->set_batch_size(64);
  const v1::Job failed = RunJob(*card_, too_big).job;
  ASSERT_EQ(failed.state(), v1::FAILED) << card_->log();
  EXPECT_TRUE(Contains(failed.error().message(), "out of memory on cuda:0 (") &&
              Contains(failed.error().message(), "cannot allocate"))
      << failed.error().message();
  EXPECT_TRUE(Eventually([&] { return card_free() == free_before; }))
      << card_free() << " bytes free, " << free_before << " before the job";
  auto devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_FALSE(devices->devices(0).lost()) << devices->devices(0).lost_reason();
  EXPECT_EQ(Sample(ScrapeMetrics(*card_), "qlorad_device_up{device=\"cuda:0\"}"), 1);
  const auto [after, losses, after_events] = RunJob(*card_, ShortJob(train_, 5, 2));
  ASSERT_EQ(after.state(), v1::SUCCEEDED) << after.error().message() << "\n" << card_->log();
  EXPECT_EQ(losses.size(), 2u);
}

// The inference device on a training card keeps to its share (--inference-memory-bytes), which
// comes out of the card's training budget. Within a share that holds one base model but not two,
// evaluating a second model drops the first and runs (the same loss as with room for both); a
// share too small for one model fails evaluations with RESOURCE_EXHAUSTED naming the limit, and
// the card stays up and trains. A share that leaves training nothing stops the start.
TEST_F(CudaOnCpuDaemonTest, AnInferenceDeviceOnATrainingCardKeepsToItsShare) {
  constexpr int64_t kOurs = kCardBytes / 10 * 9;
  constexpr int64_t kRoomy = int64_t{64} << 20;
  StartCard({"--devices=cuda:0", "--inference-device=cuda:0",
             "--inference-memory-bytes=" + std::to_string(kRoomy)});
  auto devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ(devices->devices(0).memory_budget(), kOurs - kRoomy);
  EXPECT_EQ(devices->devices(0).inference_memory_bytes(), kRoomy);
  EXPECT_TRUE(Contains(devices->inference_device(), "limited to 64 MiB"))
      << devices->inference_device();
  EXPECT_EQ(Sample(ScrapeMetrics(*card_),
                   "qlorad_device_admission_bytes{device=\"cuda:0\",state=\"inference\"}"),
            static_cast<double>(kRoomy));
  // Operators see the split in `qloractl devices` too.
  const std::string ctl = std::string(QLORAD_CTL_BINARY) + " --server " + card_->address() +
                          " --token " + kOpsKey + " devices";
  std::string shown;
  if (FILE* p = popen(ctl.c_str(), "r")) {
    char buf[4096];
    for (size_t got; (got = fread(buf, 1, sizeof buf, p)) > 0;) shown.append(buf, got);
    EXPECT_EQ(pclose(p), 0) << shown;
  }
  EXPECT_TRUE(Contains(shown, "generation and evaluation share it: up to 64.0 MiB")) << shown;
  ASSERT_TRUE(Ops(*card_).RegisterModel("stories-b", gguf_).ok());
  auto valid = Acme(*card_).Upload("facts-valid", ReadTestData("facts_valid.jsonl"));
  ASSERT_TRUE(valid.ok()) << valid.status();
  // The most the device held at once for one model, its weights, and with a second model.
  auto first = Acme(*card_).Evaluate("stories", "", valid->id());
  ASSERT_TRUE(first.ok()) << first.status() << card_->log();
  const std::string peak = "qlorad_inference_memory_peak_bytes{device=\"cuda:0\"}";
  std::string metrics = ScrapeMetrics(*card_);
  const auto one_model_peak = static_cast<int64_t>(Sample(metrics, peak));
  const auto model_bytes = static_cast<int64_t>(Sample(
      metrics, "qlorad_inference_memory_bytes{device=\"cuda:0\",category=\"base_weights\"}"));
  ASSERT_GT(model_bytes, 0) << metrics;
  ASSERT_GT(one_model_peak, model_bytes) << metrics;
  auto second = Acme(*card_).Evaluate("stories-b", "", valid->id());
  ASSERT_TRUE(second.ok()) << second.status() << card_->log();
  metrics = ScrapeMetrics(*card_);
  ASSERT_EQ(Sample(metrics, "qlorad_inference_models_loaded{device=\"cuda:0\"}"), 2) << metrics;
  // The same evaluation again, the first model's weights held besides.
  EXPECT_GE(static_cast<int64_t>(Sample(metrics, peak)), one_model_peak + model_bytes) << metrics;
  std::printf("inference device: peak %lld bytes with one model of %lld bytes\n",
              static_cast<long long>(one_model_peak), static_cast<long long>(model_bytes));

  // Room for one model and the scratch, not two.
  const int64_t one = one_model_peak + model_bytes / 2;
  ASSERT_TRUE(RestartCard({"--devices=cuda:0", "--inference-device=cuda:0",
                           "--inference-memory-bytes=" + std::to_string(one)}))
      << card_->log();
  devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ(devices->devices(0).inference_memory_bytes(), one);
  EXPECT_EQ(devices->devices(0).memory_budget(), kOurs - one);
  for (const char* model : {"stories", "stories-b", "stories"}) {
    auto r = Acme(*card_).Evaluate(model, "", valid->id());
    ASSERT_TRUE(r.ok()) << model << ": " << r.status() << "\n" << card_->log();
    EXPECT_NEAR(r->loss(), first->loss(), 1e-6 * first->loss()) << model;
    metrics = ScrapeMetrics(*card_);
    EXPECT_EQ(Sample(metrics, "qlorad_inference_models_loaded{device=\"cuda:0\"}"), 1) << model;
  }
  // An evaluation too large for the share alone (long examples: their activations) fails, and
  // leaves nothing behind: the next one, which fits, runs.
  std::string long_rows;
  for (int i = 0; i < 4; ++i) {
    std::string text;
    for (int w = 0; w < 120; ++w) text += "Once upon a time there was a little dog. ";
    long_rows += "{\"prompt\": \"Tell a story.\", \"completion\": \"" + text + "\"}\n";
  }
  auto long_set = Acme(*card_).Upload("long", long_rows);
  ASSERT_TRUE(long_set.ok()) << long_set.status();
  auto too_large = Acme(*card_).Evaluate("stories", "", long_set->id());
  ASSERT_FALSE(too_large.ok());
  EXPECT_EQ(too_large.status().code(), absl::StatusCode::kResourceExhausted) << too_large.status();
  auto after = Acme(*card_).Evaluate("stories", "", valid->id());
  ASSERT_TRUE(after.ok()) << after.status() << "\n" << card_->log();
  EXPECT_NEAR(after->loss(), first->loss(), 1e-6 * first->loss());

  // Too little for one model: the request fails, saying why; the card is not lost, and trains.
  ASSERT_TRUE(RestartCard({"--devices=cuda:0", "--inference-device=cuda:0",
                           "--inference-memory-bytes=" + std::to_string(model_bytes / 2)}))
      << card_->log();
  for (int i = 0; i < 2; ++i) {
    auto r = Acme(*card_).Evaluate("stories", "", valid->id());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
    EXPECT_TRUE(Contains(std::string(r.status().message()), "limited to")) << r.status();
  }
  devices = Ops(*card_).Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_FALSE(devices->devices(0).lost());
  const auto [job, losses, events] = RunJob(*card_, ShortJob(train_, 3, 2));
  EXPECT_EQ(job.state(), v1::SUCCEEDED) << job.error().message() << "\n" << card_->log();
  EXPECT_EQ(losses.size(), 2u);

  // A share that leaves training no budget is refused at start, naming the flag.
  std::string refused;
  EXPECT_FALSE(RestartCard({"--devices=cuda:0", "--inference-device=cuda:0",
                            "--inference-memory-bytes=" + std::to_string(kOurs)},
                           &refused));
  EXPECT_TRUE(Contains(refused, "--inference-memory-bytes: ") &&
              Contains(refused, "no training budget"))
      << refused;
}

}  // namespace
}  // namespace qlorad::testing
