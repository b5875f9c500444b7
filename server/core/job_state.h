// The job lifecycle, one enum and one transition check (STYLE.md, after TF Serving's
// LoaderHarness). The numbers equal qlorad.v1.JobState's.
//
//   VALIDATING -> QUEUED | FAILED | CANCELLED
//   QUEUED     -> RUNNING | FAILED | CANCELLED
//   RUNNING    -> SUCCEEDED | FAILED | CANCELLED | QUEUED (requeued to resume from its
//                 checkpoint after a restart) | PAUSED
//   QUEUED     -> PAUSED too (a client's pause)
//   PAUSED     -> QUEUED (resumed: from its checkpoint) | CANCELLED | FAILED
//   SUCCEEDED, FAILED, CANCELLED: terminal
#pragma once

#include "absl/status/status.h"

namespace qlorad::core {

enum class JobState {
  kValidating = 1,
  kQueued = 2,
  kRunning = 3,
  kSucceeded = 4,
  kFailed = 5,
  kCancelled = 6,
  kPaused = 7
};

const char* JobStateName(JobState s);
bool IsTerminal(JobState s);
// OK for a legal edge; FAILED_PRECONDITION naming both states otherwise.
absl::Status CheckTransition(JobState from, JobState to);

}  // namespace qlorad::core
