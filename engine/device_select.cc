#include "engine/device_select.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/cuda_device.h"

namespace qlorad {

absl::StatusOr<std::unique_ptr<Device>> OpenDevice(const std::string& spec, int cpu_threads) {
  if (spec == "cpu" || spec == "cpu:0") return CreateCpuDevice(cpu_threads);
  if (spec == "auto") {
    if (CudaDeviceCount() > 0) return CreateCudaDevice(0);
    return CreateCpuDevice(cpu_threads);
  }
  if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 &&
      spec.find_first_not_of("0123456789", 5) == std::string::npos && spec.size() <= 8) {
    return CreateCudaDevice(std::atoi(spec.c_str() + 5));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", spec, "' is not a device (cpu, cuda:N or auto)"));
}

}  // namespace qlorad
