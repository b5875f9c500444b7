// qloractl limits: what the server accepts and what the tenant uses.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/command.h"
#include "engine/status_macros.h"
#include "qlorad/v1/limits.grpc.pb.h"

namespace qlorad::ctl {
namespace {

absl::Status Limits(const Invocation& invocation) {
  v1::GetLimitsRequest request;
  request.set_model(invocation.args.Get("model").value_or(""));
  v1::Limits limits;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      v1::LimitsService::NewStub(invocation.channel)->GetLimits(context.get(), request, &limits)));
  return Emit(invocation, limits, [&] {
    PrintFields({
        {"max rank", absl::StrCat(limits.max_rank())},
        {"max seq len", absl::StrCat(limits.max_seq_len())},
        {"max batch size", absl::StrCat(limits.max_batch_size())},
        {"target modules", absl::StrJoin(limits.target_modules(), ",")},
        {"jobs", absl::StrCat(limits.active_jobs(), " active of ", limits.max_concurrent_jobs())},
        {"dataset bytes", absl::StrCat(FormatBytes(limits.dataset_bytes_used()), " used of ",
                                       FormatBytes(limits.max_dataset_bytes()))},
        {"adapters", absl::StrCat(limits.adapters_used(), " of ", limits.max_adapters())},
        {"datasets", absl::StrCat(limits.datasets_used(), " of ", limits.max_datasets())},
        {"max priority", absl::StrCat(limits.max_priority())},
    });
  });
}

}  // namespace

std::vector<Command> LimitsCommands() { return {{"limits", "", {}, {{"model"}}, Limits}}; }

}  // namespace qlorad::ctl
