#include "engine/device_adapter.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace qlorad {

absl::StatusOr<std::unique_ptr<DeviceAdapter>> DeviceAdapter::Create(
    Device* device, const LlamaConfig& model, const LoraConfig& lora,
    const std::vector<float>& params) {
  RETURN_IF_ERROR(lora.Validate());
  auto a = std::unique_ptr<DeviceAdapter>(new DeviceAdapter());
  a->lora_ = lora;
  a->layout_ = std::make_unique<LoraLayout>(model, lora);
  if (static_cast<int64_t>(params.size()) != a->layout_->num_params()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter has ", params.size(),
                                                   " parameters, the model and its config need ",
                                                   a->layout_->num_params()));
  }
  ASSIGN_OR_RETURN(a->params_, device->Alloc(a->layout_->num_params(), BufferKind::kAdapter));
  device->CopyFromHost(params.data(), a->layout_->num_params(), a->params_->data());
  a->view_ = {a->layout_.get(), a->params_->data(), lora.rank, lora.scale()};
  return a;
}

}  // namespace qlorad
