// How qloractl fails: each error carries the exit status it ends the process with.
//   1  an RPC failed ("qloractl: NOT_FOUND: job 'x' not found"), or a local file could not be
//      read or written
//   2  a usage error (unknown command or flag, missing argument, value that does not parse)
//   3  the watched job FAILED;  4  the watched job was CANCELLED
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace qlorad::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitJobFailed = 3;
inline constexpr int kExitJobCancelled = 4;
inline constexpr int kExitJobPaused = 5;

// A usage error: exit 2, with a pointer to `qloractl help`.
absl::Status UsageError(std::string_view message);
bool IsUsageError(const absl::Status& status);

// A failure on this machine (a file that cannot be opened, a disk write): exit 1.
absl::Status LocalError(std::string_view message);

// An outcome that is not an RPC error but must not exit 0 (a watched job that failed).
absl::Status ExitError(int exit_code, std::string_view message);

// Prints `status` to stderr and returns the exit status for it. Errors made by the functions
// above print "qloractl: <message>"; any other status is an RPC's, printed as
// "qloractl: <CODE_NAME>: <message>" with exit 1.
int ReportError(const absl::Status& status);

}  // namespace qlorad::ctl
