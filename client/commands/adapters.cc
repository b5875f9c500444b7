// qloractl adapters list|get|download|delete: the tenant's trained adapters.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli/command.h"
#include "client/commands/adapter_files.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "qlorad/v1/adapters.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::AdapterService;

void PrintAdapter(const v1::Adapter& adapter) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"id", adapter.id()},
      {"name", adapter.name()},
      {"job", adapter.job_id()},
      {"base model", adapter.base_model()},
      {"rank", absl::StrCat(adapter.rank())},
      {"alpha", FormatNumber(adapter.alpha())},
      {"targets", absl::StrJoin(adapter.target_modules(), ",")},
      {"trainable parameters", FormatCount(adapter.trainable_parameters())},
      {"size", FormatBytes(adapter.bytes())},
      {"final loss", absl::StrFormat("%.4f", adapter.final_loss())},
  };
  if (adapter.has_best_eval_loss()) {
    fields.emplace_back("best eval loss", absl::StrFormat("%.4f", adapter.best_eval_loss()));
  }
  fields.emplace_back("created", FormatTime(adapter.create_time()));
  PrintFields(fields);
}

absl::Status List(const Invocation& invocation) {
  v1::ListAdaptersResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(
      RpcStatus(AdapterService::NewStub(invocation.channel)
                    ->ListAdapters(context.get(), v1::ListAdaptersRequest(), &response)));
  return Emit(invocation, response, [&] {
    Table table({"ID", "NAME", "MODEL", "RANK", "SIZE", "FINAL LOSS", "CREATED"});
    for (const v1::Adapter& adapter : response.adapters()) {
      table.AddRow({adapter.id(), adapter.name(), adapter.base_model(),
                    absl::StrCat(adapter.rank()), FormatBytes(adapter.bytes()),
                    absl::StrFormat("%.4f", adapter.final_loss()),
                    FormatTime(adapter.create_time())});
    }
    table.Print();
  });
}

absl::Status Get(const Invocation& invocation) {
  v1::GetAdapterRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::Adapter adapter;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      AdapterService::NewStub(invocation.channel)->GetAdapter(context.get(), request, &adapter)));
  return Emit(invocation, adapter, [&] { PrintAdapter(adapter); });
}

absl::Status Download(const Invocation& invocation) {
  ASSIGN_OR_RETURN(std::string directory, invocation.args.Required("out"));
  ASSIGN_OR_RETURN(AdapterFileWriter files, AdapterFileWriter::Create(directory));
  v1::DownloadAdapterRequest request;
  request.set_id(invocation.args.positionals()[0]);
  request.set_rslora_as_plain(invocation.args.Has("rslora-as-plain"));
  auto context = invocation.Context(std::nullopt);
  auto reader =
      AdapterService::NewStub(invocation.channel)->DownloadAdapter(context.get(), request);
  v1::AdapterFileChunk chunk;
  absl::Status written = absl::OkStatus();
  while (written.ok() && reader->Read(&chunk)) written = files.Add(chunk);
  if (!written.ok()) context->TryCancel();
  absl::Status finished = RpcStatus(reader->Finish());
  if (written.ok()) written = finished;
  if (written.ok()) written = files.Finish();
  if (!written.ok()) {
    files.Abandon();
    return written;
  }

  if (invocation.json()) {
    nlohmann::json summary = {{"adapterId", request.id()}, {"directory", directory}};
    summary["files"] = nlohmann::json::array();
    for (const AdapterFileWriter::File& file : files.files()) {
      summary["files"].push_back({{"path", file.path}, {"bytes", file.bytes}});
    }
    std::cout << summary.dump() << "\n" << std::flush;
    return absl::OkStatus();
  }
  for (const AdapterFileWriter::File& file : files.files()) {
    std::cout << "wrote " << file.path << " (" << FormatBytes(file.bytes) << ")\n";
  }
  std::cout << std::flush;
  return absl::OkStatus();
}

absl::Status Delete(const Invocation& invocation) {
  v1::DeleteAdapterRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::DeleteAdapterResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(AdapterService::NewStub(invocation.channel)
                                ->DeleteAdapter(context.get(), request, &response)));
  return Emit(invocation, response,
              [&] { std::cout << "deleted adapter " << request.id() << "\n"; });
}

}  // namespace

std::vector<Command> AdapterCommands() {
  return {
      {"adapters", "list", {}, {}, List},
      {"adapters", "get", {"ID"}, {}, Get},
      {"adapters",
       "download",
       {"ID"},
       {{"out", true, false, /*path=*/true}, {"rslora-as-plain", false}},
       Download},
      {"adapters", "delete", {"ID"}, {}, Delete},
  };
}

}  // namespace qlorad::ctl
