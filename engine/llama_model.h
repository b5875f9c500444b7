// A LLaMA-architecture model placed on a Device for inference: frozen linear weights as NF4
// with double quantization (or float32 when asked), embeddings and norms in float32, and a
// key/value cache for incremental decoding. Not thread-safe (it drives one Device).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/device.h"
#include "engine/llama_weights.h"
#include "engine/lora.h"
#include "engine/nf4_tensor.h"

namespace qlorad {

// A LoRA adapter applied unmerged at inference: parameters on the model's device.
struct LoraWeights {
  const LoraLayout* layout = nullptr;
  const float* params = nullptr;  // device pointer, layout->num_params() floats
  int64_t rank = 0;
  float scale = 0.0f;
};

struct ModelOptions {
  bool quantize = true;  // NF4 + double quantization for the seven linear projections
  Nf4Options nf4;
  // Benchmarks: a linear weight left empty in `weights` is made on the device, uniform in
  // [-random_linear_scale, random_linear_scale) (Device::RandomLinear; seed random_linear_seed,
  // stream 1 + 7 * layer + module) and NF4-quantized, so that a 7B model never passes through
  // host memory. 0: every linear weight must be given.
  float random_linear_scale = 0.0f;
  uint64_t random_linear_seed = 0;
};

class LlamaModel {
 public:
  // Keys and values of every layer for up to `capacity` positions.
  class KvCache {
   public:
    int64_t length() const { return length_; }
    int64_t capacity() const { return capacity_; }
    void Clear() { length_ = 0; }

   private:
    friend class LlamaModel;
    std::vector<std::unique_ptr<DeviceBuffer>> k_, v_;  // per layer [capacity, kv_dim]
    int64_t length_ = 0;
    int64_t capacity_ = 0;
  };

  // Takes the float32 weights. Linear weights found in `prequantized` (keyed by Hugging Face
  // module weight name, e.g. model.layers.0.self_attn.q_proj.weight) are used as they are.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      LlamaWeights weights, Device* device, const ModelOptions& options,
      std::map<std::string, Nf4Tensor> prequantized = {});

  const LlamaConfig& config() const { return config_; }
  Device* device() const { return device_; }
  bool quantized() const { return quantized_; }
  // Bytes of the frozen linear weights as stored (NF4 statistics included) and their count.
  int64_t linear_weight_bytes() const { return linear_bytes_; }
  int64_t linear_weight_params() const { return linear_params_; }

  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int64_t capacity) const;

  // Runs `tokens` at positions cache->length().. and appends them to the cache. Writes the
  // logits of every new token ([tokens, vocab]) or only of the last one. `lora`, when given,
  // is applied unmerged (no dropout).
  absl::Status Forward(const std::vector<int32_t>& tokens, KvCache* cache, bool all_logits,
                       std::vector<float>* logits, const LoraWeights* lora = nullptr);

  // The frozen weights on the device, for the training graph.
  struct Layer {
    std::unique_ptr<DeviceBuffer> input_norm, post_norm;
    // Indexed like kLinearModuleNames: q, k, v, o, gate, up, down.
    std::array<std::unique_ptr<DeviceLinear>, 7> linear;
  };
  const std::vector<Layer>& layers() const { return layers_; }
  const float* embed() const { return embed_->data(); }
  const float* final_norm() const { return norm_->data(); }
  // The output head [vocab, hidden]: the embedding when tied.
  const float* lm_head() const;

 private:
  LlamaModel() = default;
  // y = W x (+ s B A x when `lora` targets this module); `scratch` holds [tokens, rank].
  void ApplyLinear(int64_t layer, int module, const float* x, int64_t tokens, float* y,
                   const LoraWeights* lora, float* scratch);

  LlamaConfig config_;
  Device* device_ = nullptr;
  bool quantized_ = true;
  std::unique_ptr<DeviceBuffer> embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
  int64_t linear_bytes_ = 0;
  int64_t linear_params_ = 0;
};

// Mean negative log-likelihood (nats/token) of tokens[1..] given the ones before them.
absl::StatusOr<double> MeanNll(LlamaModel& model, const std::vector<int32_t>& tokens,
                               const LoraWeights* lora = nullptr);

}  // namespace qlorad
