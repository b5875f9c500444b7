// qloractl: the command-line client of qlorad. Usage below (kUsage); exit statuses in
// client/cli/errors.h. Flags are parsed here only and copied into the Invocation.
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/command.h"
#include "client/cli/errors.h"
#include "client/cli/flags.h"
#include "client/cli/utf8.h"
#include "client/connection.h"
#include "engine/status_macros.h"

namespace qlorad::ctl {
namespace {

constexpr char kUsage[] = R"(usage: qloractl [global flags] <command> [flags]

global flags (anywhere on the line):
  --server HOST:PORT   daemon address (default $QLORAD_SERVER, else 127.0.0.1:50051)
  --token KEY          API key, sent as "authorization: Bearer KEY" (default $QLORAD_TOKEN)
  --tls-ca FILE        use TLS, trusting the root certificates in FILE (default: plaintext)
  --statefulset NAME --replicas N --tenant T [--service S] [--namespace NS] [--port P]
                       instead of --server, on a cluster: the tenant's pod of the StatefulSet
                       (rendezvous hashing, stable as pods are added; service NAME-headless,
                       namespace default, port 50051 unless given; $QLORAD_TENANT)
  -o json|text         output format (default text); json prints the response messages in the
                       canonical proto3 JSON mapping, one per line
  --timeout SECONDS    deadline of each call (default 30 s; 1 h for models register, eval and
                       admin backup; none for uploads, downloads, generate and watch). Given, it
                       bounds a watch too (jobs create --watch): the job goes on
  -h, --help           this text

models (register and delete need an admin key):
  models register NAME PATH    register a base model from a directory or GGUF file on the server
  models list | get NAME | delete NAME

datasets:
  datasets upload FILE [--name NAME]   upload JSONL (name defaults to the file's base name);
                                       FILE '-' reads stdin (then --name is required)
  datasets list | get ID | delete ID

jobs:
  jobs create --model M --train DATASET_ID [--valid DATASET_ID]
      [--rank N] [--alpha X] [--dropout X] [--targets a,b|all-linear] [--lr X]
      [--schedule cosine|linear|constant] [--warmup-ratio X] [--epochs N] [--max-steps N]
      [--batch-size N] [--grad-accum N] [--seq-len N] [--weight-decay X] [--seed N]
      [--packing] [--eval-every N] [--early-stopping N] [--max-grad-norm X] [--rslora]
      [--no-gradient-checkpointing]
      [--suffix S] [--label k=v]... [--idempotency-key K] [--priority N] [--watch]
                               queue a fine-tune; hyperparameters not given take the server's
                               defaults; --watch then follows it like `jobs watch`
  jobs get ID
  jobs list [--state STATE[,STATE]]... [--label k=v]... [--page-size N] [--page-token T] [--all]
  jobs cancel ID
  jobs pause ID                stop a queued or running job (with a checkpoint of its last step)
                               until `jobs resume ID`; a paused job holds no device or quota
  jobs resume ID               queue a paused job again: it goes on from its checkpoint
  jobs delete ID               delete a finished job's record and events (its adapter stays)
  jobs events ID [--after N] [--page-size N]
  jobs watch ID [--after N]    follow the job's events until it ends; exit 0 when it SUCCEEDED
                               (prints "adapter: ID"), 3 when it FAILED, 4 when CANCELLED,
                               5 when it is PAUSED

adapters:
  adapters list | get ID | delete ID
  adapters download ID --out DIR [--rslora-as-plain]   write the PEFT files into DIR

inference:
  generate --model M [--adapter ID] --prompt TEXT | --messages JSON [--max-tokens N]
           [--temperature X] [--top-p X] [--seed N]
                               stream the generated text; --messages '[{"role": "user",
                               "content": "Hi"}]' answers a conversation in the chat layout
                               jobs train on
  eval --model M [--adapter ID] --dataset ID   loss, perplexity, target tokens, examples

limits [--model M]             what the server accepts and what this tenant uses

devices                        the node's training devices, their budgets, a lost GPU and why,
                               the largest job the node takes, where generation runs; with an
                               admin key also jobs, memory by what it holds (base weights,
                               adapters, optimizer on the card and paged out, activations,
                               workspace) and the card's free memory

admin (admin key):
  admin backup PATH            a consistent copy of the node's RocksDB in a new server folder

route                          print the address the flags lead to (with --statefulset: which
                               pod holds the tenant); no call is made

exit status: 0 success; 1 RPC or local error ("qloractl: NOT_FOUND: <message>");
2 usage error; 3 watched job FAILED; 4 watched job CANCELLED; 5 watched job PAUSED.
)";

const std::vector<FlagDef>& GlobalFlags() {
  static const std::vector<FlagDef> flags = {
      {"server"},   {"token"},       {"tls-ca", true, false, /*path=*/true},
      {"o"},        {"timeout"},     {"help", false},
      {"h", false}, {"statefulset"}, {"replicas"},
      {"tenant"},   {"service"},     {"namespace"},
      {"port"}};
  return flags;
}

std::vector<Command> AllCommands() {
  std::vector<Command> all;
  for (auto group : {ModelCommands, DatasetCommands, JobCommands, AdapterCommands,
                     InferenceCommands, LimitsCommands, DeviceCommands, AdminCommands}) {
    for (Command& command : group()) all.push_back(std::move(command));
  }
  return all;
}

// Returns the next word at or after args[*i], moving global flags met on the way (with their
// values) into `flags`; nullopt at the end of the line.
std::optional<std::string> NextWord(const std::vector<std::string>& args, size_t* i,
                                    std::vector<std::string>* flags) {
  while (*i < args.size()) {
    const std::string& arg = args[(*i)++];
    if (arg == "--") continue;
    if (arg.size() < 2 || arg[0] != '-') return arg;
    flags->push_back(arg);
    std::string name = arg.substr(arg[1] == '-' ? 2 : 1);
    if (name.find('=') != std::string::npos) continue;
    for (const FlagDef& flag : GlobalFlags()) {
      if (flag.name == name && flag.takes_value && *i < args.size()) {
        flags->push_back(args[(*i)++]);
      }
    }
  }
  return std::nullopt;
}

bool WantsHelp(const ParsedArgs& args) { return args.Has("help") || args.Has("h"); }

// The command the words name, or a usage error.
absl::StatusOr<const Command*> FindCommand(const std::vector<Command>& commands,
                                           const std::vector<std::string>& args, size_t* i,
                                           std::vector<std::string>* flags) {
  std::optional<std::string> group = NextWord(args, i, flags);
  if (!group.has_value()) return UsageError("missing command");
  std::vector<std::string> names;
  for (const Command& command : commands) {
    if (command.group != *group) continue;
    if (command.name.empty()) return &command;
    names.push_back(command.name);
  }
  if (names.empty()) return UsageError(absl::StrCat("unknown command '", *group, "'"));
  std::optional<std::string> name = NextWord(args, i, flags);
  if (!name.has_value()) {
    return UsageError(
        absl::StrCat(*group, ": missing subcommand (", absl::StrJoin(names, ", "), ")"));
  }
  for (const Command& command : commands) {
    if (command.group == *group && command.name == *name) return &command;
  }
  return UsageError(absl::StrCat("unknown command '", *group, " ", *name, "'"));
}

absl::StatusOr<Invocation> MakeInvocation(const ParsedArgs& args) {
  client::ConnectionOptions connection = client::ConnectionOptionsFromEnvironment();
  connection.server = args.Get("server").value_or(connection.server);
  if (!args.Get("statefulset").has_value()) {
    // They only shape a --statefulset address: without it they were ignored without a word.
    for (const char* flag : {"replicas", "tenant", "service", "namespace", "port"}) {
      if (args.Has(flag)) return UsageError(absl::StrCat("--", flag, " goes with --statefulset"));
    }
  } else {
    // A cluster: the tenant's pod of the StatefulSet, by rendezvous hashing (connection.h).
    if (args.Get("server").has_value()) {
      return UsageError("--server and --statefulset: give one or the other");
    }
    ASSIGN_OR_RETURN(std::optional<int64_t> replicas, args.Int("replicas", 1, 10000));
    if (!replicas.has_value()) return UsageError("--statefulset needs --replicas N");
    std::string tenant = args.Get("tenant").value_or("");
    if (tenant.empty() && std::getenv("QLORAD_TENANT") != nullptr) {
      tenant = std::getenv("QLORAD_TENANT");
    }
    if (tenant.empty()) return UsageError("--statefulset needs --tenant NAME (or $QLORAD_TENANT)");
    ASSIGN_OR_RETURN(std::optional<int64_t> port, args.Int("port", 1, 65535));
    const std::string set = *args.Get("statefulset");
    connection.server = client::StatefulSetPodAddress(
        set, client::PodForTenant(tenant, static_cast<int>(*replicas)),
        args.Get("service").value_or(set + "-headless"), args.Get("namespace").value_or("default"),
        static_cast<int>(port.value_or(50051)));
  }
  if (connection.server.empty()) return UsageError("--server: expected HOST:PORT");
  connection.token = args.Get("token").value_or(connection.token);
  connection.tls_ca_file = args.Get("tls-ca").value_or("");

  OutputFormat output = OutputFormat::kText;
  std::string format = args.Get("o").value_or("text");
  if (format == "json") {
    output = OutputFormat::kJson;
  } else if (format != "text") {
    return UsageError(absl::StrCat("-o: expected json or text, got '", format, "'"));
  }
  ASSIGN_OR_RETURN(std::optional<double> seconds, args.Double("timeout"));
  std::optional<absl::Duration> timeout;
  if (seconds.has_value()) {
    if (*seconds <= 0) return UsageError("--timeout: expected a positive number of seconds");
    timeout = absl::Seconds(*seconds);
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = client::CreateChannel(connection);
  if (!channel.ok()) return LocalError(std::string(channel.status().message()));
  return Invocation{args, std::move(connection), *std::move(channel), output, timeout};
}

absl::Status CheckPositionals(const Command& command, const ParsedArgs& args) {
  const std::string label =
      absl::StrCat(command.group, command.name.empty() ? "" : " ", command.name);
  const std::vector<std::string>& given = args.positionals();
  if (given.size() < command.positionals.size()) {
    return UsageError(
        absl::StrCat(label, ": missing argument ", command.positionals[given.size()]));
  }
  if (given.size() > command.positionals.size()) {
    return UsageError(
        absl::StrCat(label, ": unexpected argument '", given[command.positionals.size()], "'"));
  }
  // Every argument but a local FILE goes into the API's UTF-8 strings (IDs, names, the daemon's
  // own paths); a local file's path may be any bytes.
  for (size_t k = 0; k < given.size(); ++k) {
    if (command.positionals[k] != "FILE" && !IsUtf8(given[k])) {
      return UsageError(absl::StrCat(label, ": ", command.positionals[k], " '",
                                     ToValidUtf8(given[k]), "' is not UTF-8 text"));
    }
  }
  return absl::OkStatus();
}

// Returns the exit status.
int Run(const std::vector<std::string>& args) {
  const std::vector<Command> commands = AllCommands();
  std::vector<std::string> flags;
  size_t i = 0;
  {
    // `qloractl`, `qloractl help`, `qloractl --help`: before any command word.
    size_t peek = 0;
    std::vector<std::string> leading;
    std::optional<std::string> first = NextWord(args, &peek, &leading);
    absl::StatusOr<ParsedArgs> parsed = ParsedArgs::Parse(leading, GlobalFlags());
    if (!parsed.ok()) return ReportError(parsed.status());
    if (first == "help" || WantsHelp(*parsed)) {
      std::cout << kUsage;
      return kExitOk;
    }
    if (!first.has_value()) {
      std::cerr << kUsage;
      return kExitUsage;
    }
  }
  absl::StatusOr<const Command*> found = FindCommand(commands, args, &i, &flags);
  if (!found.ok()) {
    // `qloractl jobs --help`: help wins over a missing subcommand.
    absl::StatusOr<ParsedArgs> parsed = ParsedArgs::Parse(flags, GlobalFlags());
    if (parsed.ok() && WantsHelp(*parsed)) {
      std::cout << kUsage;
      return kExitOk;
    }
    return ReportError(found.status());
  }
  const Command& command = **found;
  flags.insert(flags.end(), args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  std::vector<FlagDef> accepted = command.flags;
  accepted.insert(accepted.end(), GlobalFlags().begin(), GlobalFlags().end());
  absl::StatusOr<ParsedArgs> parsed = ParsedArgs::Parse(flags, accepted);
  if (!parsed.ok()) return ReportError(parsed.status());
  if (WantsHelp(*parsed)) {
    std::cout << kUsage;
    return kExitOk;
  }
  if (absl::Status positionals = CheckPositionals(command, *parsed); !positionals.ok()) {
    return ReportError(positionals);
  }
  absl::StatusOr<Invocation> invocation = MakeInvocation(*parsed);
  if (!invocation.ok()) return ReportError(invocation.status());
  absl::Status ran = command.run(*invocation);
  // What the command printed must have arrived: a script reading `-o json` output from a full
  // disk would otherwise take a cut file with exit 0.
  std::cout.flush();
  if (ran.ok() && !std::cout) ran = LocalError("cannot write the output (stdout)");
  return ReportError(ran);
}

}  // namespace
}  // namespace qlorad::ctl

int main(int argc, char** argv) {
  return qlorad::ctl::Run(std::vector<std::string>(argv + 1, argv + argc));
}
