// Builds without a CUDA compiler: no CUDA device can be made.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda_device.h"

namespace qlorad {

int CudaDeviceCount() { return 0; }

int64_t CudaDeviceMemoryBytes(int) { return 0; }

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(int ordinal,
                                                         const CudaDeviceOptions& options) {
  (void)options;
  return absl::UnimplementedError(absl::StrCat(
      "cuda:", ordinal, ": this build has no CUDA backend (it was built without a CUDA compiler)"));
}

bool StartCudaOpProfile(Device*) { return false; }

std::vector<CudaOpTime> TakeCudaOpProfile(Device*) { return {}; }

}  // namespace qlorad
