#include "server/core/job_state.h"

#include "absl/strings/str_cat.h"

namespace qlorad::core {

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kValidating:
      return "VALIDATING";
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
    case JobState::kPaused:
      return "PAUSED";
  }
  return "UNSPECIFIED";
}

bool IsTerminal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

absl::Status CheckTransition(JobState from, JobState to) {
  bool legal = false;
  switch (from) {
    case JobState::kValidating:
      legal = to == JobState::kQueued || to == JobState::kFailed || to == JobState::kCancelled;
      break;
    case JobState::kQueued:
      legal = to == JobState::kRunning || to == JobState::kFailed || to == JobState::kCancelled ||
              to == JobState::kPaused;
      break;
    case JobState::kRunning:
      legal = to == JobState::kSucceeded || to == JobState::kFailed || to == JobState::kCancelled ||
              to == JobState::kQueued || to == JobState::kPaused;
      break;
    case JobState::kPaused:
      legal = to == JobState::kQueued || to == JobState::kCancelled || to == JobState::kFailed;
      break;
    default:
      legal = false;  // terminal
  }
  if (legal) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("a job cannot go from ", JobStateName(from), " to ", JobStateName(to)));
}

}  // namespace qlorad::core
