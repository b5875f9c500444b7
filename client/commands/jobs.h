// The pieces of `qloractl jobs` shared between its files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/cli/command.h"
#include "qlorad/v1/jobs.pb.h"

namespace qlorad::ctl {

// job_create.cc: `jobs create`.
std::vector<FlagDef> CreateJobFlags();
absl::Status CreateJob(const Invocation& invocation);

// job_watch.cc: follows the job's events from after `after_sequence` until it ends, then exits
// 0 (SUCCEEDED, printing the adapter), 3 (FAILED) or 4 (CANCELLED) through the status.
// Reconnects for up to 10 minutes; its callers have reached the daemon first (jobs create's
// call, jobs watch's GetJob), so that a daemon never reached is an error at once.
absl::Status WatchJob(const Invocation& invocation, const std::string& id, int64_t after_sequence);

// job_view.cc: text forms.
void PrintJob(const v1::Job& job);
// "CODE: message (parameter: p)".
std::string FormatJobError(const v1::JobError& error);
// "step 12/40 | loss 1.2345 | lr 3.00e-03 | 523 tok/s | eta 00:00:07".
std::string FormatProgress(const v1::TrainingProgress& progress);
// One line for any event: a state change, progress, eval loss, checkpoint, warning or error.
std::string FormatEvent(const v1::JobEvent& event);
// "step 12/40" of a job (steps completed of total).
std::string FormatSteps(const v1::Job& job);

}  // namespace qlorad::ctl
