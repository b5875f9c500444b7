// qloractl's command line: --name value, --name=value and --switch flags (one-letter names take
// one dash: -o json), positionals in order, "--" ending the flags. Every failure is a usage
// error naming the flag at fault, never a crash. Parsed in main only.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cli/errors.h"

namespace qlorad::ctl {

// How a flag is written: "-o" for one letter, "--rank" otherwise.
std::string FlagName(std::string_view name);

struct FlagDef {
  std::string name;  // without the dashes
  bool takes_value = true;
  bool repeatable = false;
  // A local path, which may be any bytes. Every other value goes into the API's UTF-8 strings
  // and is refused, naming the flag, when it is not UTF-8.
  bool path = false;
};

class ParsedArgs {
 public:
  // Parses `args` against `flags`: an unknown flag, a missing value, a value given to a switch
  // or a non-repeatable flag given twice is a usage error.
  static absl::StatusOr<ParsedArgs> Parse(const std::vector<std::string>& args,
                                          const std::vector<FlagDef>& flags);

  const std::vector<std::string>& positionals() const { return positionals_; }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The value of a flag given once; nullopt when absent.
  std::optional<std::string> Get(const std::string& name) const;
  // The value of a flag the command cannot do without; absent: a usage error naming it.
  absl::StatusOr<std::string> Required(const std::string& name) const;
  // Every value of a repeatable flag, in order.
  std::vector<std::string> GetAll(const std::string& name) const;

  // Typed values; a value that does not parse or lies outside [min, max] is a usage error.
  absl::StatusOr<std::optional<int64_t>> Int(
      const std::string& name, int64_t min = std::numeric_limits<int64_t>::min(),
      int64_t max = std::numeric_limits<int64_t>::max()) const;
  absl::StatusOr<std::optional<uint64_t>> Uint(const std::string& name) const;
  // Finite numbers only.
  absl::StatusOr<std::optional<double>> Double(const std::string& name) const;
  absl::StatusOr<std::optional<float>> Float(const std::string& name) const;
  // Every value of a repeatable flag, each split at commas, empty items dropped.
  std::vector<std::string> GetList(const std::string& name) const;
  // Every value of a repeatable flag as key=value pairs.
  absl::StatusOr<std::map<std::string, std::string>> KeyValues(const std::string& name) const;

 private:
  std::vector<std::string> positionals_;
  std::map<std::string, std::vector<std::string>> values_;  // a switch holds one empty value
};

}  // namespace qlorad::ctl
