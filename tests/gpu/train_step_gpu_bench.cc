// One QLoRA training step of a LLaMA-shaped model on the CUDA device (issue: CUDA backend):
// tokens/s, GPU memory in use after the step, and MFU against the bf16 GEMM rate measured in
// the same run. Random weights (a counter hash; the linear layers made and NF4 + double-quantized
// on the card, never on the host); LoRA on every linear layer. A plain executable (no Google
// Benchmark there):
//   train_step_gpu_bench [--layers 32] [--hidden 4096] [--intermediate 11008] [--heads 32]
//                        [--kv-heads 32] [--vocab 32000] [--seq 2048] [--batch 1] [--rank 16]
//                        [--steps 3] [--dropout 0.05] [--fp32-gemm] [--gemm-attention]
//                        [--no-checkpointing] [--f32-activations] [--profile]
// --profile: one more step with every device operation timed by CUDA events, printed as a
// second JSON line (GPU milliseconds by operation, and how much of the step the GPU was busy).
// Activation checkpointing is on unless --no-checkpointing (each layer recomputed in the
// backward, as QLoRA trains). LoRA dropout 0.05 as the PyTorch + PEFT peer
// (bench/torch_lora_step_gpu.py) has it.
// Activations are bf16 (the device's default) unless --f32-activations.
// Prints one JSON line. Skips (exit 77) without a CUDA device.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cuda_device.h"
#include "engine/llama_model.h"
#include "engine/trainer.h"
#include "kernels/cpu/dropout.h"
#include "tests/gpu/gpu_bench.h"
#include "tests/gpu/gpu_check.h"

namespace qlorad {
namespace {

// The value after `name` on the command line, or null.
const char* FlagValue(int argc, char** argv, const char* name) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return nullptr;
}
int64_t Flag(int argc, char** argv, const char* name, int64_t def) {
  const char* v = FlagValue(argc, argv, name);
  return v != nullptr ? std::atoll(v) : def;
}
double FloatFlag(int argc, char** argv, const char* name, double def) {
  const char* v = FlagValue(argc, argv, name);
  return v != nullptr ? std::atof(v) : def;
}
bool Has(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return true;
  }
  return false;
}

// One more step with the device's operations timed; prints them as one JSON line.
int PrintProfile(Device* device, Trainer* trainer, int64_t last_step) {
  if (!StartCudaOpProfile(device)) {
    std::fprintf(stderr, "profile: not a CUDA device\n");
    return 1;
  }
  const auto a = std::chrono::steady_clock::now();
  const absl::Status st = trainer->RunUntil(last_step, nullptr);
  const std::vector<CudaOpTime> ops = TakeCudaOpProfile(device);
  const double step_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
  if (!st.ok()) {
    std::fprintf(stderr, "profiled step: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  double busy = 0.0;
  for (const CudaOpTime& t : ops) busy += t.ms;
  std::printf("{\"profiled_step_ms\": %.1f, \"gpu_busy_ms\": %.1f, \"ops\": [", step_ms, busy);
  for (size_t i = 0; i < ops.size(); ++i) {
    std::printf("%s{\"op\": \"%s\", \"calls\": %lld, \"ms\": %.2f, \"share\": %.3f}", i ? ", " : "",
                ops[i].op.c_str(), static_cast<long long>(ops[i].calls), ops[i].ms,
                ops[i].ms / step_ms);
  }
  std::printf("]}\n");
  return 0;
}

int Main(int argc, char** argv) {
  if (!gpu_check::HaveCudaDevice()) return 77;
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.num_hidden_layers = Flag(argc, argv, "--layers", 32);
  c.hidden_size = Flag(argc, argv, "--hidden", 4096);
  c.intermediate_size = Flag(argc, argv, "--intermediate", 11008);
  c.num_attention_heads = Flag(argc, argv, "--heads", 32);
  c.num_key_value_heads = Flag(argc, argv, "--kv-heads", 32);
  c.vocab_size = Flag(argc, argv, "--vocab", 32000);
  const int64_t seq = Flag(argc, argv, "--seq", 2048), batch = Flag(argc, argv, "--batch", 1);
  const int64_t rank = Flag(argc, argv, "--rank", 16), steps = Flag(argc, argv, "--steps", 3);
  c.max_position_embeddings = std::max<int64_t>(seq, 2048);
  const double gemm_tflops = gpu_bench::MeasureBf16GemmTflops();

  // Random weights made on the card: the linear layers (6.5 G values at the 7B shape) never
  // exist on the host (ModelOptions::random_linear_scale); only the embedding and the head do.
  auto t0 = std::chrono::steady_clock::now();
  // Streams of their own: the linears take 1 + 7 * layer + module (ModelOptions), < 1000.
  uint64_t stream = 1000;
  int64_t linear_params = 0, all_params = 0;
  for (TensorSlot& s : TensorSlots(w)) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    all_params += n;
    if (s.is_linear) {
      linear_params += n;
      continue;
    }
    s.data->resize(n);
    if (s.shape.size() == 1) {
      std::fill(s.data->begin(), s.data->end(), 1.0f);
    } else {
      kernels::FillUniform(s.data->data(), n, 0, stream++, 0.02f);
    }
  }
  CudaDeviceOptions o;
  o.bf16_gemm = !Has(argc, argv, "--fp32-gemm");
  o.flash_attention = !Has(argc, argv, "--gemm-attention");
  o.bf16_activations = !Has(argc, argv, "--f32-activations");
  auto device = CreateCudaDevice(0, o);
  if (!device.ok()) {
    std::fprintf(stderr, "%s\n", std::string(device.status().message()).c_str());
    return 1;
  }
  size_t free0 = 0, total = 0;
  cudaMemGetInfo(&free0, &total);
  ModelOptions mo;
  mo.random_linear_scale = 0.02f;
  auto model = LlamaModel::Create(std::move(w), device->get(), mo);
  if (!model.ok()) {
    std::fprintf(stderr, "model: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool profile = Has(argc, argv, "--profile");
  std::vector<TrainingRow> rows(batch * (steps + 2));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int64_t t = 0; t < seq; ++t) {
      rows[r].tokens.push_back(
          static_cast<int32_t>(3 + (r * 7919 + t * 104729) % (c.vocab_size - 3)));
      rows[r].positions.push_back(static_cast<int32_t>(t));
      rows[r].segments.push_back(0);
    }
    for (int64_t t = 0; t < seq; ++t)
      rows[r].targets.push_back(t + 1 < seq ? rows[r].tokens[t + 1] : -1);
  }
  TrainerOptions to;
  to.lora.rank = rank;
  to.lora.alpha = 2.0f * rank;
  to.lora.dropout = static_cast<float>(FloatFlag(argc, argv, "--dropout", 0.05));
  to.max_steps = steps + 2;
  to.batch_size = batch;
  to.warmup_ratio = 0.0;
  to.activation_checkpointing = !Has(argc, argv, "--no-checkpointing");
  auto trainer = Trainer::Create(model->get(), rows, {}, to);
  if (!trainer.ok()) {
    std::fprintf(stderr, "trainer: %s\n", std::string(trainer.status().message()).c_str());
    return 1;
  }
  // The first step allocates and warms up; the rest are timed.
  size_t peak_used = 0;
  std::vector<double> times;
  double loss = 0.0;
  for (int64_t s = 0; s <= steps; ++s) {
    const auto a = std::chrono::steady_clock::now();
    absl::Status st = (*trainer)->RunUntil(s + 1, [&](const StepReport& r) {
      loss = r.loss;
      return true;
    });
    if (!st.ok()) {
      std::fprintf(stderr, "step: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
    if (s > 0) times.push_back(secs);
    size_t f = 0;
    cudaMemGetInfo(&f, &total);
    peak_used = std::max(peak_used, static_cast<size_t>(free0 - f));
  }
  double mean = 0.0;
  for (double t : times) mean += t / static_cast<double>(times.size());
  const double tokens = static_cast<double>(batch * seq);
  // Model FLOPs of a LoRA step per token: forward and input-gradient GEMMs of every frozen
  // linear layer and the LM head (2 + 2 flops per weight), and causal attention (QK^T and PV,
  // half of a T x T square each, forward 2x and backward 4x of 2*T*hidden per layer).
  const double head = static_cast<double>(c.vocab_size) * c.hidden_size;
  const double flops_per_token = 4.0 * (static_cast<double>(linear_params) + head) +
                                 6.0 * 2.0 * seq * c.hidden_size * c.num_hidden_layers / 2.0;
  const double achieved = flops_per_token * tokens / mean / 1e12;
  const auto usage = (*device)->memory_usage();
  std::printf(
      "{\"device\": \"%s\", \"attention\": \"%s\", \"activations\": \"%s\", \"checkpointing\": %s, "
      "\"dropout\": %.2f, \"layers\": %lld, "
      "\"hidden\": %lld, \"seq\": "
      "%lld, \"batch\": %lld, "
      "\"rank\": %lld, \"params\": %lld, \"load_s\": %.1f, \"step_s\": %.4f, "
      "\"tokens_per_s\": %.1f, \"loss\": %.4f, \"gpu_used_gib\": %.2f, "
      "\"base_weights_gib\": %.2f, \"activations_gib\": %.2f, \"workspace_gib\": %.2f, "
      "\"model_tflops\": %.1f, \"bf16_gemm_tflops\": %s, \"mfu\": %s}\n",
      (*device)->name().c_str(), o.flash_attention ? "flash" : "gemm",
      (*trainer)->bf16_activations() ? "bf16" : "float32",
      to.activation_checkpointing ? "true" : "false", to.lora.dropout,
      static_cast<long long>(c.num_hidden_layers), static_cast<long long>(c.hidden_size),
      static_cast<long long>(seq), static_cast<long long>(batch), static_cast<long long>(rank),
      static_cast<long long>(all_params), load_s, mean, tokens / mean, loss,
      peak_used / 1073741824.0, usage.base_weights / 1073741824.0, usage.activations / 1073741824.0,
      usage.workspace / 1073741824.0, achieved, gpu_bench::JsonNumber(gemm_tflops, 1).c_str(),
      gpu_bench::JsonNumber(achieved / gemm_tflops, 3).c_str());
  if (profile) return PrintProfile(device->get(), trainer->get(), steps + 2);
  return 0;
}

}  // namespace
}  // namespace qlorad

int main(int argc, char** argv) { return qlorad::Main(argc, argv); }
