#include "client/cli/errors.h"

#include <iostream>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qlorad::ctl {
namespace {

// The payload that marks our own errors; its value is the exit status.
constexpr char kExitPayload[] = "type.qlorad/qloractl.ExitCode";

absl::Status WithExitCode(absl::StatusCode code, int exit_code, std::string_view message) {
  absl::Status status(code, std::string(message));
  status.SetPayload(kExitPayload, absl::Cord(absl::StrCat(exit_code)));
  return status;
}

std::optional<int> ExitCodeOf(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kExitPayload);
  int exit_code;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &exit_code)) {
    return std::nullopt;
  }
  return exit_code;
}

}  // namespace

absl::Status UsageError(std::string_view message) {
  return WithExitCode(absl::StatusCode::kInvalidArgument, kExitUsage, message);
}

bool IsUsageError(const absl::Status& status) { return ExitCodeOf(status) == kExitUsage; }

absl::Status LocalError(std::string_view message) {
  return WithExitCode(absl::StatusCode::kUnknown, kExitError, message);
}

absl::Status ExitError(int exit_code, std::string_view message) {
  return WithExitCode(absl::StatusCode::kUnknown, exit_code, message);
}

int ReportError(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  std::optional<int> exit_code = ExitCodeOf(status);
  if (exit_code.has_value()) {
    std::cerr << "qloractl: " << status.message() << "\n";
    if (*exit_code == kExitUsage) std::cerr << "Run 'qloractl help' for usage.\n";
    return *exit_code;
  }
  std::cerr << "qloractl: " << absl::StatusCodeToString(status.code());
  if (!status.message().empty()) std::cerr << ": " << status.message();
  std::cerr << "\n";
  return kExitError;
}

}  // namespace qlorad::ctl
