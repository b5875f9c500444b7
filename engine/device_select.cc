#include "engine/device_select.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/cuda_device.h"

namespace qlorad {
namespace {

absl::StatusOr<std::unique_ptr<Device>> OpenCard(int ordinal, const CudaOptionsFor& options_for) {
  return CreateCudaDevice(ordinal, options_for ? options_for(ordinal) : CudaDeviceOptions());
}

}  // namespace

int CudaOrdinal(const std::string& spec) {
  if (spec.rfind("cuda:", 0) != 0 || spec.size() <= 5 || spec.size() > 8 ||
      spec.find_first_not_of("0123456789", 5) != std::string::npos) {
    return -1;
  }
  return std::atoi(spec.c_str() + 5);
}

std::unique_ptr<Device> OpenFirstUsableGpu(const std::vector<std::string>& gpus, int cpu_threads,
                                           std::vector<std::string>* why_skipped,
                                           const CudaOptionsFor& options_for) {
  for (const std::string& name : gpus) {
    const int ordinal = CudaOrdinal(name);
    absl::StatusOr<std::unique_ptr<Device>> opened =
        ordinal < 0 ? absl::InvalidArgumentError("not a GPU (cuda:N)")
                    : OpenCard(ordinal, options_for);
    if (opened.ok()) return std::move(*opened);
    if (why_skipped != nullptr) {
      why_skipped->push_back(absl::StrCat(name, ": ", opened.status().message()));
    }
  }
  return CreateCpuDevice(cpu_threads);
}

absl::StatusOr<std::unique_ptr<Device>> OpenDevice(const std::string& spec, int cpu_threads,
                                                   const CudaOptionsFor& options_for) {
  if (spec == "cpu" || spec == "cpu:0") return CreateCpuDevice(cpu_threads);
  if (spec == "auto") {
    std::string why_none;
    std::vector<std::string> gpus;
    for (int i = 0, n = CudaDeviceCount(&why_none); i < n; ++i) {
      gpus.push_back(absl::StrCat("cuda:", i));
    }
    std::vector<std::string> skipped;
    std::unique_ptr<Device> device = OpenFirstUsableGpu(gpus, cpu_threads, &skipped, options_for);
    if (gpus.empty()) skipped.push_back(why_none.empty() ? "no GPU" : why_none);
    // The offline tool's user asked for a GPU if there is one: say why they got the CPU.
    for (const std::string& s : skipped) std::fprintf(stderr, "device auto: %s\n", s.c_str());
    return device;
  }
  if (const int ordinal = CudaOrdinal(spec); ordinal >= 0) return OpenCard(ordinal, options_for);
  return absl::InvalidArgumentError(
      absl::StrCat("'", spec, "' is not a device (cpu, cuda:N or auto)"));
}

}  // namespace qlorad
