// One QLoRA training step (forward + backward + AdamW) on a mid-size synthetic LLaMA:
// hidden 512, 8 layers, 8 heads, 4 kv heads, intermediate 1408, vocab 32000, untied head,
// seq 256, batch 4, LoRA r=16 on all linear layers, dropout 0.05, NF4 + double-quantized base
// (and, for comparison, a float32 base and activation checkpointing). Random weights.
// Peer: bench/torch_lora_step.py (PyTorch + PEFT, float32, same shape and threads).
// Run: build/bench/train_step_bench --benchmark_repetitions=3
// --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <random>

#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/trainer.h"

namespace qlorad {
namespace {

LlamaWeights MidSizeModel() {
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.hidden_size = 512;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.intermediate_size = 1408;
  c.vocab_size = 32000;
  c.max_position_embeddings = 512;
  c.tie_word_embeddings = false;
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 0.02f);
  for (const TensorSlot& s : TensorSlots(w)) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    s.data->resize(n);
    for (float& v : *s.data) v = s.shape.size() == 1 ? 1.0f : g(rng);
  }
  return w;
}

std::vector<TrainingRow> RandomRows(int64_t rows, int64_t seq, int32_t vocab) {
  std::mt19937 rng(2);
  std::vector<TrainingRow> out(rows);
  for (TrainingRow& r : out) {
    for (int64_t i = 0; i < seq; ++i) {
      r.tokens.push_back(static_cast<int32_t>(rng() % vocab));
      r.positions.push_back(static_cast<int32_t>(i));
      r.segments.push_back(0);
    }
    for (int64_t i = 0; i < seq; ++i) r.targets.push_back(i + 1 < seq ? r.tokens[i + 1] : -1);
  }
  return out;
}

// state.range(0): 1 = NF4+DQ base, 0 = float32 base; range(1): activation checkpointing.
void BM_QloraTrainStep(benchmark::State& state) {
  auto device = CreateCpuDevice();
  ModelOptions mo;
  mo.quantize = state.range(0) == 1;
  auto model = LlamaModel::Create(MidSizeModel(), device.get(), mo);
  if (!model.ok()) return state.SkipWithError(std::string(model.status().message()).c_str());
  TrainerOptions o;  // r 16, alpha 32, dropout 0.05, all linear layers
  o.batch_size = 4;
  o.max_steps = 1000;
  o.activation_checkpointing = state.range(1) == 1;
  auto trainer = Trainer::Create(model->get(), RandomRows(4, 256, 32000), {}, o);
  if (!trainer.ok()) return state.SkipWithError(std::string(trainer.status().message()).c_str());
  if (!(*trainer)->RunUntil(1).ok()) return state.SkipWithError("warm-up step failed");
  for (auto _ : state) {
    if (!(*trainer)->RunUntil((*trainer)->step() + 1).ok())
      return state.SkipWithError("step failed");
  }
  state.counters["tokens/s"] =
      benchmark::Counter(4.0 * 256 * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["trainable"] = static_cast<double>((*trainer)->layout().num_params());
  state.counters["base_MB"] = static_cast<double>(device->memory_usage().base_weights) / 1e6;
}
BENCHMARK(BM_QloraTrainStep)
    ->Args({1, 0})
    ->Args({0, 0})
    ->Args({1, 1})
    ->ArgNames({"nf4", "ckpt"})
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace qlorad

BENCHMARK_MAIN();
