// One qloractl command ("jobs create", "generate"): its words, positionals and flags, and the
// function that runs it with the connection already set up.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/cli/flags.h"
#include "client/cli/output.h"
#include "client/connection.h"
#include "grpcpp/grpcpp.h"

namespace qlorad::ctl {

// Deadlines of the calls, unless --timeout gives one. Streams that follow a job or a generation
// (WatchJob, Generate) and uploads/downloads of arbitrary size run without one by default.
inline constexpr absl::Duration kUnaryTimeout = absl::Seconds(30);
// RegisterModel reads and validates the whole checkpoint; Evaluate runs a whole dataset.
inline constexpr absl::Duration kSlowTimeout = absl::Hours(1);

// What a command runs with; built by main after the command line parsed.
struct Invocation {
  const ParsedArgs& args;
  client::ConnectionOptions connection;
  std::shared_ptr<grpc::Channel> channel;
  OutputFormat output = OutputFormat::kText;
  // --timeout: replaces every call's default deadline.
  std::optional<absl::Duration> timeout;

  bool json() const { return output == OutputFormat::kJson; }
  // A context with the API key and the deadline: --timeout when given, else `default_timeout`
  // (nullopt: no deadline).
  std::unique_ptr<grpc::ClientContext> Context(
      std::optional<absl::Duration> default_timeout) const {
    return client::MakeClientContext(connection, timeout.has_value() ? timeout : default_timeout);
  }
};

struct Command {
  std::string group;  // "jobs"; for a one-word command ("generate") the word itself
  std::string name;   // "create"; empty for a one-word command
  std::vector<std::string> positionals;  // as shown in messages: "NAME", "PATH"
  std::vector<FlagDef> flags;
  absl::Status (*run)(const Invocation& invocation);
};

// The command table, one function per group (client/commands/*.cc).
std::vector<Command> ModelCommands();
std::vector<Command> DatasetCommands();
std::vector<Command> JobCommands();
std::vector<Command> AdapterCommands();
std::vector<Command> InferenceCommands();  // generate, eval
std::vector<Command> LimitsCommands();
std::vector<Command> DeviceCommands();  // devices
std::vector<Command> AdminCommands();   // admin backup

// With -o json prints `message` as one JSON line, else runs `print_text`.
inline absl::Status Emit(const Invocation& invocation, const google::protobuf::Message& message,
                         const std::function<void()>& print_text) {
  if (invocation.json()) return PrintJson(message);
  print_text();
  return absl::OkStatus();
}

// Converts a finished call's status; an RPC error keeps the server's code and message.
inline absl::Status RpcStatus(const grpc::Status& status) { return client::ToAbslStatus(status); }

}  // namespace qlorad::ctl
