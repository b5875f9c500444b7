// The QLoRA training computation on a Device: forward through the frozen (NF4) base with LoRA
// adapters, cross-entropy with a loss mask, and a hand-written backward pass that produces the
// gradients of the LoRA parameters only (the input gradient flows through the frozen weights,
// dequantized again for the backward GEMMs). Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/lora.h"

namespace qlorad {

// `rows` sequences of `seq_len` tokens. Several examples may be packed into a row: `segments`
// numbers them (tokens attend only within their segment) and `positions` restart at 0 for
// each. Padding has segment -1 and target -1.
struct MicroBatch {
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;     // [rows * seq_len]
  std::vector<int32_t> positions;  // [rows * seq_len]
  std::vector<int32_t> segments;   // [rows * seq_len]
  std::vector<int32_t> targets;    // [rows * seq_len]: the next token, or -1 (no loss)
  int64_t num_targets() const;
  absl::Status Validate(int64_t vocab) const;
};

// The element type of the activations a training graph keeps and passes between operations.
// LoRA parameters, their gradients, 1/rms, attention state, logits and losses stay float32.
enum class ActivationPrecision {
  kDevicePreferred,  // bf16 where the device prefers it (a GPU), else float32
  kFloat32,
  kBf16,
};

struct TrainingGraphOptions {
  float dropout = 0.0f;
  // Keep only each layer's input and recompute the layer in the backward pass.
  bool activation_checkpointing = false;
  ActivationPrecision activations = ActivationPrecision::kDevicePreferred;
};

class LoraTrainingGraph {
 public:
  LoraTrainingGraph(LlamaModel* model, const LoraLayout* layout, const LoraConfig& lora,
                    const TrainingGraphOptions& options);
  ~LoraTrainingGraph();

  // Forward and backward of one micro-batch. `params` and `grads` are device arrays of the
  // layout's size; gradients accumulate (+=) scaled by `loss_scale` (1 / target tokens of
  // the whole accumulated batch). Dropout masks come from (dropout_seed, step): `step` names the
  // micro-batch, each of an optimizer step's its own (equal masks would correlate them). Adds the
  // micro-batch's summed (unscaled) loss to `loss_sum`, one float in device memory, without
  // waiting for the device.
  absl::Status ForwardBackward(const MicroBatch& batch, const float* params, float* grads,
                               float loss_scale, uint64_t dropout_seed, uint64_t step,
                               float* loss_sum);
  // The same, waiting for the micro-batch's summed loss and returning it.
  absl::StatusOr<double> ForwardBackward(const MicroBatch& batch, const float* params, float* grads,
                                         float loss_scale, uint64_t dropout_seed, uint64_t step);

  // Summed loss without dropout or gradients (evaluation).
  absl::StatusOr<double> Loss(const MicroBatch& batch, const float* params);

  // Whether this graph keeps its activations in bf16 (the options and the device decide).
  bool bf16_activations() const;

  // Bytes of device memory the graph allocates for micro-batches of `rows` x `seq_len` with
  // LoRA `rank` on a device whose attention keeps `attention_saved_per_row` floats a row
  // (Device::AttentionSavedFloats), activations in bf16 or float32: the list Prepare allocates,
  // counted.
  static int64_t ActivationBytes(const LlamaConfig& config, int64_t rank, bool checkpointing,
                                 int64_t rows, int64_t seq_len, int64_t attention_saved_per_row,
                                 bool bf16_activations);

 private:
  class Graph;  // the computation, for one activation type (lora_training.cc)
  template <typename T>
  class TypedGraph;
  std::unique_ptr<Graph> graph_;
};

}  // namespace qlorad
