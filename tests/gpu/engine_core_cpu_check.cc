// The engine's compute core (qlorad_engine_core) on the CPU device, built the way the GPU check
// builds it (on compat/absl-lite where the machine lacks Abseil): a LoRA adapter on a small
// random model learns a repeating token pattern, and a bad option comes back as an error that
// names it. Needs no GPU (it is built with the GPU tests, wherever a CUDA compiler is found); on
// the GPU machine it shows that the core the GPU tests link works there.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/trainer.h"
#include "tests/common/random_model.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

int Main() {
  std::mt19937 rng(gpu_check::FreshSeed());
  LlamaWeights w = testing::RandomLlamaWeights(testing::SmallLlamaConfig(64, 128, 64), rng);
  auto device = CreateCpuDevice(1);
  auto model = LlamaModel::Create(std::move(w), device.get(), ModelOptions{});
  GPU_CHECK(model.ok(), "model: %s", std::string(model.status().message()).c_str());
  if (!model.ok()) return gpu_check::Finish("engine_core_cpu_check");
  // Rows of the pattern 5 6 7 ... 12 5 6 7 ...: the next token is always predictable.
  std::vector<TrainingRow> rows(8);
  for (TrainingRow& r : rows) {
    for (int t = 0; t < 32; ++t) {
      r.tokens.push_back(5 + t % 8);
      r.positions.push_back(t);
      r.segments.push_back(0);
      r.targets.push_back(t + 1 < 32 ? 5 + (t + 1) % 8 : -1);
    }
  }
  TrainerOptions o;
  o.lora.rank = 8;
  o.lora.alpha = 16.0f;
  o.learning_rate = 1e-2;
  o.max_steps = 30;
  o.batch_size = 4;
  o.warmup_ratio = 0.0;
  o.activation_checkpointing = true;
  auto trainer = Trainer::Create(model->get(), rows, {}, o);
  GPU_CHECK(trainer.ok(), "trainer: %s", std::string(trainer.status().message()).c_str());
  if (!trainer.ok()) return gpu_check::Finish("engine_core_cpu_check");
  double first = NAN, last = NAN;
  absl::Status s = (*trainer)->RunUntil(30, [&](const StepReport& r) {
    if (std::isnan(first)) first = r.loss;
    last = r.loss;
    return true;
  });
  GPU_CHECK(s.ok(), "run: %s", std::string(s.message()).c_str());
  std::printf("  loss %.4f -> %.4f over 30 steps\n", first, last);
  GPU_CHECK(last < 0.5 * first, "the adapter did not learn the pattern: %g -> %g", first, last);
  o.learning_rate = -1.0;
  auto bad = Trainer::Create(model->get(), rows, {}, o);
  GPU_CHECK(!bad.ok() && absl::IsInvalidArgument(bad.status()) &&
                std::string(bad.status().message()).find("learning_rate") != std::string::npos,
            "a negative learning rate gave: %s", bad.status().ToString().c_str());
  return gpu_check::Finish("engine_core_cpu_check");
}

}  // namespace
}  // namespace qlorad

int main() { return qlorad::Main(); }
