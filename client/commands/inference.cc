// qloractl generate|eval: a base model with an adapter applied, unmerged.
#include <iostream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/command.h"
#include "client/cli/errors.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "qlorad/v1/inference.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::InferenceService;

// --messages '[{"role": "user", "content": "Hi"}]': a conversation, as in a chat dataset.
absl::Status ParseMessages(const std::string& text, v1::GenerateRequest* request) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array() || j.empty()) {
    return UsageError("--messages: expected a JSON array of {\"role\", \"content\"} objects");
  }
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      return UsageError(
          absl::StrCat("--messages: message ", i, " needs string \"role\" and \"content\""));
    }
    v1::ChatMessage* out = request->add_messages();
    out->set_role(m["role"].get<std::string>());
    out->set_content(m["content"].get<std::string>());
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::GenerateRequest> ParseGenerate(const ParsedArgs& args) {
  v1::GenerateRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), args.Required("model"));
  request.set_adapter_id(args.Get("adapter").value_or(""));
  if (args.Has("prompt") == args.Has("messages")) {
    return UsageError("give --prompt TEXT or --messages JSON (a chat conversation), one of them");
  }
  if (args.Has("messages")) {
    RETURN_IF_ERROR(ParseMessages(args.Get("messages").value_or(""), &request));
  } else {
    request.set_prompt(args.Get("prompt").value_or(""));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens,
                   args.Int("max-tokens", 0, std::numeric_limits<int32_t>::max()));
  request.set_max_tokens(static_cast<int32_t>(max_tokens.value_or(0)));
  ASSIGN_OR_RETURN(std::optional<float> temperature, args.Float("temperature"));
  request.set_temperature(temperature.value_or(0));
  ASSIGN_OR_RETURN(std::optional<float> top_p, args.Float("top-p"));
  request.set_top_p(top_p.value_or(0));
  ASSIGN_OR_RETURN(std::optional<uint64_t> seed, args.Uint("seed"));
  if (seed) request.set_seed(*seed);  // else the daemon draws one, and says which
  return request;
}

// Text: the pieces as they arrive, flushed each time, then a newline.
absl::Status Generate(const Invocation& invocation) {
  ASSIGN_OR_RETURN(v1::GenerateRequest request, ParseGenerate(invocation.args));
  auto context = invocation.Context(std::nullopt);
  auto reader = InferenceService::NewStub(invocation.channel)->Generate(context.get(), request);
  v1::GenerateResponse response;
  absl::Status printed = absl::OkStatus();
  bool wrote_text = false;
  while (printed.ok() && reader->Read(&response)) {
    if (invocation.json()) {
      printed = PrintJson(response);
    } else {
      std::cout << response.text() << std::flush;
      wrote_text = true;
    }
  }
  if (!printed.ok()) context->TryCancel();
  if (wrote_text) std::cout << "\n" << std::flush;
  // Sampled text with a seed the daemon drew: how to get the same text again (stderr, so that
  // stdout stays the text alone).
  if (!invocation.json() && response.finished() && request.temperature() > 0 &&
      !request.has_seed()) {
    std::cerr << "sampled with --seed " << response.seed() << "\n";
  }
  absl::Status finished = RpcStatus(reader->Finish());
  return printed.ok() ? finished : printed;
}

absl::Status Evaluate(const Invocation& invocation) {
  const ParsedArgs& args = invocation.args;
  v1::EvaluateRequest request;
  ASSIGN_OR_RETURN(*request.mutable_model(), args.Required("model"));
  request.set_adapter_id(args.Get("adapter").value_or(""));  // empty: the base model alone
  ASSIGN_OR_RETURN(*request.mutable_dataset_id(), args.Required("dataset"));
  v1::EvaluateResponse response;
  auto context = invocation.Context(kSlowTimeout);
  RETURN_IF_ERROR(RpcStatus(
      InferenceService::NewStub(invocation.channel)->Evaluate(context.get(), request, &response)));
  return Emit(invocation, response, [&] {
    PrintFields({
        {"loss", absl::StrFormat("%.4f", response.loss())},
        {"perplexity", absl::StrFormat("%.3f", response.perplexity())},
        {"target tokens", absl::StrCat(response.target_tokens())},
        {"examples", absl::StrCat(response.examples())},
    });
  });
}

}  // namespace

std::vector<Command> InferenceCommands() {
  return {
      {"generate",
       "",
       {},
       {{"model"},
        {"adapter"},
        {"prompt"},
        {"messages"},
        {"max-tokens"},
        {"temperature"},
        {"top-p"},
        {"seed"}},
       Generate},
      {"eval", "", {}, {{"model"}, {"adapter"}, {"dataset"}}, Evaluate},
  };
}

}  // namespace qlorad::ctl
