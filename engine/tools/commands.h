// The training-side subcommands of qlora-engine (train_commands.cc).
#pragma once

#include "absl/status/status.h"

namespace qlorad {

absl::Status TrainCommand(int argc, char** argv);
absl::Status EvalCommand(int argc, char** argv);
absl::Status MergeCommand(int argc, char** argv);

}  // namespace qlorad
