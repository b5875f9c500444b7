// qloractl admin backup PATH: a consistent copy of the node's RocksDB on the server.
// qloractl route: the address the global flags lead to (with --statefulset: the tenant's pod).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "client/cli/command.h"
#include "engine/status_macros.h"
#include "qlorad/v1/admin.grpc.pb.h"

namespace qlorad::ctl {
namespace {

absl::Status Backup(const Invocation& invocation) {
  v1::BackupDatabaseRequest request;
  request.set_path(invocation.args.positionals()[0]);
  v1::BackupDatabaseResponse response;
  auto context = invocation.Context(kSlowTimeout);
  RETURN_IF_ERROR(RpcStatus(v1::AdminService::NewStub(invocation.channel)
                                ->BackupDatabase(context.get(), request, &response)));
  return Emit(invocation, response, [&] {
    PrintFields({{"backup", response.path()}, {"size", FormatBytes(response.bytes())}});
  });
}

absl::Status Route(const Invocation& invocation) {
  std::printf("%s\n", invocation.connection.server.c_str());
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> AdminCommands() {
  return {{"admin", "backup", {"PATH"}, {}, Backup}, {"route", "", {}, {}, Route}};
}

}  // namespace qlorad::ctl
