// The device a command line names, for the offline tool and the daemon's inference device:
// "cpu", "cuda:N", or "auto" (cuda:0 where a GPU is usable, else the CPU).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/device.h"

namespace qlorad {

// `cpu_threads` <= 0: all cores. INVALID_ARGUMENT for a spec that names no device kind,
// NOT_FOUND or UNAVAILABLE for a GPU that cannot be used; the message names the spec.
absl::StatusOr<std::unique_ptr<Device>> OpenDevice(const std::string& spec, int cpu_threads);

}  // namespace qlorad
