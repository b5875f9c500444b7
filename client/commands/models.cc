// qloractl models register|list|get|delete: base models (admin key).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "client/cli/command.h"
#include "engine/status_macros.h"
#include "qlorad/v1/models.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::ModelService;

void PrintModel(const v1::Model& model) {
  const v1::ModelArchitecture& arch = model.architecture();
  PrintFields({
      {"name", model.name()},
      {"format", model.format()},
      {"source", model.source_path()},
      {"parameters", FormatCount(model.parameter_count())},
      {"loaded size", FormatBytes(model.quantized_bytes())},
      {"layers", absl::StrCat(arch.num_hidden_layers())},
      {"hidden size", absl::StrCat(arch.hidden_size())},
      {"intermediate size", absl::StrCat(arch.intermediate_size())},
      {"attention heads",
       absl::StrCat(arch.num_attention_heads(), " (", arch.num_key_value_heads(), " kv)")},
      {"vocabulary", absl::StrCat(arch.vocab_size())},
      {"context", absl::StrCat(arch.max_position_embeddings())},
      {"created", FormatTime(model.create_time())},
  });
}

absl::Status Register(const Invocation& invocation) {
  v1::RegisterModelRequest request;
  request.set_name(invocation.args.positionals()[0]);
  request.set_path(invocation.args.positionals()[1]);
  v1::Model model;
  auto context = invocation.Context(kSlowTimeout);
  RETURN_IF_ERROR(RpcStatus(
      ModelService::NewStub(invocation.channel)->RegisterModel(context.get(), request, &model)));
  return Emit(invocation, model, [&] { PrintModel(model); });
}

absl::Status List(const Invocation& invocation) {
  v1::ListModelsResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(ModelService::NewStub(invocation.channel)
                                ->ListModels(context.get(), v1::ListModelsRequest(), &response)));
  return Emit(invocation, response, [&] {
    Table table({"NAME", "FORMAT", "PARAMETERS", "LOADED", "CREATED"});
    for (const v1::Model& model : response.models()) {
      table.AddRow({model.name(), model.format(), FormatCount(model.parameter_count()),
                    FormatBytes(model.quantized_bytes()), FormatTime(model.create_time())});
    }
    table.Print();
  });
}

absl::Status Get(const Invocation& invocation) {
  v1::GetModelRequest request;
  request.set_name(invocation.args.positionals()[0]);
  v1::Model model;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      ModelService::NewStub(invocation.channel)->GetModel(context.get(), request, &model)));
  return Emit(invocation, model, [&] { PrintModel(model); });
}

absl::Status Delete(const Invocation& invocation) {
  v1::DeleteModelRequest request;
  request.set_name(invocation.args.positionals()[0]);
  v1::DeleteModelResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      ModelService::NewStub(invocation.channel)->DeleteModel(context.get(), request, &response)));
  return Emit(invocation, response,
              [&] { std::cout << "deleted model '" << request.name() << "'\n"; });
}

}  // namespace

std::vector<Command> ModelCommands() {
  return {
      {"models", "register", {"NAME", "PATH"}, {}, Register},
      {"models", "list", {}, {}, List},
      {"models", "get", {"NAME"}, {}, Get},
      {"models", "delete", {"NAME"}, {}, Delete},
  };
}

}  // namespace qlorad::ctl
