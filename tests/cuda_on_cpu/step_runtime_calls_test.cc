// What a steady training step of the CUDA device asks of the CUDA runtime, counted by the
// stand-in: the "no host synchronisation inside a step except where the loss is read",
// and no allocation or free inside a step (cudaFree waits for the whole card; cudaMalloc may
// too). A card shows the same under nsys, but only on a machine that has one; the stand-in
// counts on every machine. Steps after the first are counted: the first grows the device's
// workspaces.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda_device.h"
#include "engine/llama_model.h"
#include "engine/trainer.h"
#include "tests/common/random_model.h"

namespace qlorad {
namespace {

namespace coc = ::qlorad::cuda_on_cpu;

struct Case {
  std::string name;
  // Four heads: 128 (head_dim 32) runs the flash kernels on bf16 activations, 32 (head_dim 8)
  // GEMM attention on float32 ones.
  int64_t hidden;
  bool checkpointing = false;
  bool paged = false;  // paged out after every step, as the daemon does between jobs' turns
  int64_t grad_accum = 1;
  bool flash() const { return hidden == 128; }  // the attention path the shape takes
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class StepRuntimeCallsTest : public ::testing::TestWithParam<Case> {};

TEST_P(StepRuntimeCallsTest, OneWaitOneCopyToTheHostAndNoAllocationPerStep) {
  const Case& c = GetParam();
  std::mt19937_64 rng(5);
  const LlamaWeights weights =
      testing::RandomLlamaWeights(testing::SmallLlamaConfig(c.hidden, 2 * c.hidden, 256), rng);
  auto device = CreateCudaDevice(0);
  ASSERT_TRUE(device.ok()) << device.status();
  auto model = LlamaModel::Create(weights, device->get(), ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  TrainerOptions o;
  o.lora.rank = 4;
  o.lora.dropout = 0.1f;
  o.batch_size = 2;
  o.grad_accum = c.grad_accum;
  o.max_steps = 4;
  o.activation_checkpointing = c.checkpointing;
  o.paged_optimizer = c.paged;
  auto trainer =
      Trainer::Create(model->get(), testing::RandomTrainingRows(rng, 16, 32, 256), {}, o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  Trainer& t = **trainer;
  EXPECT_EQ(t.bf16_activations(), c.flash()) << "the case's attention path did not run";

  auto step = [&] {
    ASSERT_TRUE(t.RunUntil(t.step() + 1).ok());
    if (c.paged) {
      ASSERT_TRUE(t.PageOutOptimizer().ok());
      const DeviceMemoryUsage u = (*device)->memory_usage();
      ASSERT_TRUE(u.optimizer_host > 0 && u.optimizer_device == 0) << "the moments were not paged";
    }
  };
  // The first step grows the workspaces; its op profile says which paths ran (profiling adds
  // events, so the counted steps run without it).
  ASSERT_TRUE(StartCudaOpProfile(device->get()));
  step();
  const std::string path = c.flash() ? "flash" : "gemm", other = c.flash() ? "gemm" : "flash";
  std::map<std::string, int64_t> calls;
  for (const CudaOpTime& op : TakeCudaOpProfile(device->get())) calls[op.op] = op.calls;
  const int64_t forwards = calls[path + " attention forward"],
                backwards = calls[path + " attention backward"];
  EXPECT_GT(backwards, 0) << path << " attention did not run";
  EXPECT_EQ(calls[other + " attention forward"], 0) << other << " attention ran too";
  // Every backward has its forward, and checkpointing runs each forward again to recompute.
  EXPECT_EQ(forwards, backwards * (c.checkpointing ? 2 : 1)) << path << " attention forwards";
  const coc::ApiCounts before = coc::Counts();
  constexpr int kSteps = 3;
  for (int i = 0; i < kSteps; ++i) step();
  const coc::ApiCounts after = coc::Counts();
  const uint64_t launches = after.launches - before.launches;
  std::printf(
      "%s: per step %llu kernel launches, %llu waits, %llu copies to the host\n", c.name.c_str(),
      static_cast<unsigned long long>(launches / kSteps),
      static_cast<unsigned long long>((after.synchronizes - before.synchronizes) / kSteps),
      static_cast<unsigned long long>((after.copies_to_host - before.copies_to_host) / kSteps));
  EXPECT_GT(launches, 0u) << "no kernel ran: the counts below say nothing";
  // The loss and the gradient norm, read together once the step's backward pass is done.
  EXPECT_EQ(after.synchronizes - before.synchronizes, uint64_t{kSteps});
  EXPECT_EQ(after.copies_to_host - before.copies_to_host, uint64_t{kSteps});
  EXPECT_EQ(after.allocations - before.allocations, 0u);
  EXPECT_EQ(after.frees - before.frees, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Configurations, StepRuntimeCallsTest,
    ::testing::Values(Case{"Bf16FlashActivations", 128}, Case{"Float32GemmAttention", 32},
                      Case{"Checkpointing", 128, true},
                      Case{"PagedOptimizerTwoMicroBatches", 128, false, true, 2}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace qlorad
