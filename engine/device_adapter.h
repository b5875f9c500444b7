// A LoRA adapter placed on a device for unmerged inference (generation, evaluation).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/device.h"
#include "engine/llama_model.h"
#include "engine/lora.h"

namespace qlorad {

class DeviceAdapter {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceAdapter>> Create(Device* device,
                                                               const LlamaConfig& model,
                                                               const LoraConfig& lora,
                                                               const std::vector<float>& params);
  const LoraWeights* weights() const { return &view_; }
  const LoraConfig& config() const { return lora_; }

 private:
  DeviceAdapter() = default;
  LoraConfig lora_;
  std::unique_ptr<LoraLayout> layout_;
  std::unique_ptr<DeviceBuffer> params_;
  LoraWeights view_;
};

}  // namespace qlorad
