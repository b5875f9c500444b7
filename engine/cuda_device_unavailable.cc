// Builds without a CUDA compiler: no CUDA device can be made.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda_device.h"

namespace qlorad {

int CudaDeviceCount(std::string* why_none) {
  if (why_none != nullptr) *why_none = "this build has no CUDA backend";
  return 0;
}

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int ordinal,
                                                         const CudaDeviceOptions& options) {
  (void)options;
  return absl::UnimplementedError(absl::StrCat(
      "cuda:", ordinal, ": this build has no CUDA backend (it was built without a CUDA compiler)"));
}

bool StartCudaOpProfile(Device*) { return false; }

std::vector<CudaOpTime> TakeCudaOpProfile(Device*) { return {}; }

}  // namespace qlorad
