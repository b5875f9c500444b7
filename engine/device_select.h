// The device a command line names, for the offline tool and the daemon's inference device:
// "cpu", "cuda:N", or "auto" (the first GPU that opens, else the CPU).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda_device.h"
#include "engine/device.h"

namespace qlorad {

// The options of the CUDA device opened on card `ordinal` (the daemon's share of a card that also
// trains, say); null: the defaults.
using CudaOptionsFor = std::function<CudaDeviceOptions(int ordinal)>;

// N for "cuda:N" (1-3 digits: a larger ordinal is no card), else -1.
int CudaOrdinal(const std::string& spec);

// `cpu_threads` <= 0: all cores. INVALID_ARGUMENT for a spec that names no device kind,
// NOT_FOUND or UNAVAILABLE for a GPU that cannot be used; the message names the spec.
// "auto" is OpenFirstUsableGpu over every GPU the driver reports.
absl::StatusOr<std::unique_ptr<Device>> OpenDevice(const std::string& spec, int cpu_threads,
                                                   const CudaOptionsFor& options_for = nullptr);

// The first of `gpus` ("cuda:N" each, tried in order) that opens, else a CPU device. A card
// that cannot serve (too old, faulted, held by another process) is skipped, never fatal:
// `why_skipped`, when given, gets one line per card passed over and why, so that a GPU host
// falling back to its CPU is never silent (with no card to try, the caller knows why).
std::unique_ptr<Device> OpenFirstUsableGpu(const std::vector<std::string>& gpus, int cpu_threads,
                                           std::vector<std::string>* why_skipped,
                                           const CudaOptionsFor& options_for = nullptr);

}  // namespace qlorad
