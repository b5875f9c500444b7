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

struct TrainingGraphOptions {
  float dropout = 0.0f;
  // Keep only each layer's input and recompute the layer in the backward pass.
  bool activation_checkpointing = false;
};

class LoraTrainingGraph {
 public:
  LoraTrainingGraph(LlamaModel* model, const LoraLayout* layout, const LoraConfig& lora,
                    const TrainingGraphOptions& options);
  ~LoraTrainingGraph();

  // Forward and backward of one micro-batch. `params` and `grads` are device arrays of the
  // layout's size; gradients accumulate (+=) scaled by `loss_scale` (1 / target tokens of
  // the whole accumulated batch). Dropout masks come from (dropout_seed, step). Adds the
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

  // Floats of device memory the graph allocates for micro-batches of `rows` x `seq_len` with
  // LoRA `rank` on a device whose attention keeps `attention_saved_per_row` floats a row
  // (Device::AttentionSavedFloats): the list Prepare allocates, counted.
  static int64_t ActivationFloats(const LlamaConfig& config, int64_t rank, bool checkpointing,
                                  int64_t rows, int64_t seq_len, int64_t attention_saved_per_row);

 private:
  struct LayerCache;
  struct Buffers;
  struct Shape;
  static Shape ShapeOf(const LlamaConfig& c, int64_t rank, bool checkpointing, int64_t rows,
                       int64_t seq_len, int64_t attention_saved_per_row);
  template <typename Visit>
  static absl::Status ForEachBuffer(const Shape& shape, Buffers& buffers, Visit&& visit);
  // Checks the micro-batch and allocates the buffers for its shape (kept while it repeats).
  absl::Status Prepare(const MicroBatch& batch);
  // ForwardBackward on a checked, prepared micro-batch.
  void Run(const MicroBatch& batch, const float* params, float* grads, float loss_scale,
           uint64_t dropout_seed, uint64_t step, float* loss_sum);
  void LayerForward(int64_t layer, const float* x, const MicroBatch& b, const float* params,
                    bool train, uint64_t seed, uint64_t step, LayerCache& c, float* out);
  // `recomputed`: LayerForward of this layer ran just before (checkpointing), so the SwiGLU
  // output and the post-attention norm's output are still in their scratch buffers.
  void LayerBackward(int64_t layer, const MicroBatch& b, const float* params, float* grads,
                     uint64_t seed, uint64_t step, LayerCache& c, float* dout, float* dx,
                     bool recomputed);
  void LoraForward(int64_t layer, int module, const float* x, int64_t n, const float* params,
                   bool train, uint64_t seed, uint64_t step, float* h_save, float* y);
  void LoraBackward(int64_t layer, int module, const float* x, int64_t n, const float* params,
                    float* grads, uint64_t seed, uint64_t step, const float* h_saved,
                    const float* dy, float* dx, bool accumulate);
  uint64_t Stream(uint64_t step, int64_t layer, int module) const;

  LlamaModel* model_;
  Device* device_;
  const LoraLayout* layout_;
  LoraConfig lora_;
  TrainingGraphOptions options_;
  std::unique_ptr<Buffers> buf_;
};

}  // namespace qlorad
