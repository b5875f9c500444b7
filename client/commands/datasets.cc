// qloractl datasets upload|list|get|delete: the tenant's JSONL datasets.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/command.h"
#include "client/cli/utf8.h"
#include "engine/status_macros.h"
#include "qlorad/v1/datasets.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::DatasetService;

constexpr size_t kUploadChunkBytes = 1 << 20;

void PrintDataset(const v1::Dataset& dataset) {
  PrintFields({
      {"id", dataset.id()},
      {"name", dataset.name()},
      {"examples", absl::StrCat(dataset.examples())},
      {"size", FormatBytes(dataset.bytes())},
      {"sha256", dataset.sha256()},
      {"created", FormatTime(dataset.create_time())},
  });
}

// Streams the header, then the file (or stdin, for "-": a pipeline's output) in 1 MiB chunks.
// A stream the server closed early (say, over quota) stops the writes; Finish() then carries
// the server's status.
absl::Status Upload(const Invocation& invocation) {
  const std::string& path = invocation.args.positionals()[0];
  const bool from_stdin = path == "-";
  std::ifstream file;
  std::istream* input = &std::cin;
  if (from_stdin) {
    if (!invocation.args.Get("name")) {
      return UsageError("--name: required when the dataset comes from stdin ('-')");
    }
  } else {
    std::error_code error;
    if (std::filesystem::is_directory(path, error)) {
      return LocalError(absl::StrCat("'", path, "' is a directory"));
    }
    file.open(path, std::ios::binary);
    if (!file) return LocalError(absl::StrCat("cannot open '", path, "': ", std::strerror(errno)));
    input = &file;
  }
  std::istream& in = *input;

  v1::UploadDatasetRequest header;
  // A file name is bytes (a Latin-1 one is not UTF-8): its readable part names the dataset.
  header.mutable_header()->set_name(ToValidUtf8(
      invocation.args.Get("name").value_or(std::filesystem::path(path).filename().string())));
  v1::Dataset dataset;
  auto context = invocation.Context(std::nullopt);
  auto writer = DatasetService::NewStub(invocation.channel)->UploadDataset(context.get(), &dataset);
  bool open = writer->Write(header);
  std::vector<char> buffer(kUploadChunkBytes);
  bool read_failed = false;
  while (open) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) {
      v1::UploadDatasetRequest chunk;
      chunk.set_chunk(std::string(buffer.data(), static_cast<size_t>(in.gcount())));
      open = writer->Write(chunk);
    }
    if (in.eof()) break;
    if (!in) {
      read_failed = true;
      break;
    }
  }
  if (read_failed) {
    context->TryCancel();
    (void)writer->Finish();
    return LocalError(from_stdin ? std::string("cannot read stdin")
                                 : absl::StrCat("cannot read '", path, "'"));
  }
  if (open) writer->WritesDone();
  RETURN_IF_ERROR(RpcStatus(writer->Finish()));
  return Emit(invocation, dataset, [&] { PrintDataset(dataset); });
}

absl::Status List(const Invocation& invocation) {
  v1::ListDatasetsResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(
      RpcStatus(DatasetService::NewStub(invocation.channel)
                    ->ListDatasets(context.get(), v1::ListDatasetsRequest(), &response)));
  return Emit(invocation, response, [&] {
    Table table({"ID", "NAME", "EXAMPLES", "SIZE", "CREATED"});
    for (const v1::Dataset& dataset : response.datasets()) {
      table.AddRow({dataset.id(), dataset.name(), absl::StrCat(dataset.examples()),
                    FormatBytes(dataset.bytes()), FormatTime(dataset.create_time())});
    }
    table.Print();
  });
}

absl::Status Get(const Invocation& invocation) {
  v1::GetDatasetRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::Dataset dataset;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      DatasetService::NewStub(invocation.channel)->GetDataset(context.get(), request, &dataset)));
  return Emit(invocation, dataset, [&] { PrintDataset(dataset); });
}

absl::Status Delete(const Invocation& invocation) {
  v1::DeleteDatasetRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::DeleteDatasetResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(DatasetService::NewStub(invocation.channel)
                                ->DeleteDataset(context.get(), request, &response)));
  return Emit(invocation, response,
              [&] { std::cout << "deleted dataset " << request.id() << "\n"; });
}

}  // namespace

std::vector<Command> DatasetCommands() {
  return {
      {"datasets", "upload", {"FILE"}, {{"name"}}, Upload},
      {"datasets", "list", {}, {}, List},
      {"datasets", "get", {"ID"}, {}, Get},
      {"datasets", "delete", {"ID"}, {}, Delete},
  };
}

}  // namespace qlorad::ctl
