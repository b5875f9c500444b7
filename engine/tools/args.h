// Command-line options of qlora-engine: --name value (or --name=value) pairs and --switches,
// validated against what each command accepts. Parsed in main only (flags are not globals).
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qlorad {

// --name value pairs and --switches, validated against what the command accepts.
class Args {
 public:
  static absl::StatusOr<Args> Parse(int argc, char** argv, const std::set<std::string>& values,
                                    const std::set<std::string>& switches) {
    Args a;
    for (int i = 0; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0)
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
      std::string name = arg.substr(2), value;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      // Given twice, the last one silently won.
      if (a.Has(name)) return absl::InvalidArgumentError(absl::StrCat("--", name, " given twice"));
      if (switches.count(name)) {
        if (has_value)
          return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
        a.switches_.insert(name);
      } else if (values.count(name)) {
        if (!has_value) {
          if (i + 1 >= argc)
            return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
          // Another option where the value belongs (`--out --rank 8` wrote into ./--rank).
          const std::string next = argv[i + 1];
          const std::string next_name =
              next.rfind("--", 0) == 0 ? next.substr(2, next.find('=') - 2) : "";
          if (values.count(next_name) || switches.count(next_name)) {
            return absl::InvalidArgumentError(
                absl::StrCat("--", name, " needs a value, not the option ", next, " (write --",
                             name, "=VALUE for a value that starts with --)"));
          }
          value = argv[++i];
        }
        a.values_[name] = value;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown option --", name));
      }
    }
    return a;
  }
  bool Has(const std::string& n) const { return values_.count(n) || switches_.count(n); }
  absl::StatusOr<std::string> Required(const std::string& n) const {
    auto it = values_.find(n);
    if (it == values_.end())
      return absl::InvalidArgumentError(absl::StrCat("missing required option --", n));
    return it->second;
  }
  std::string Get(const std::string& n, const std::string& fallback) const {
    auto it = values_.find(n);
    return it == values_.end() ? fallback : it->second;
  }
  absl::StatusOr<double> Number(const std::string& n, double fallback) const {
    auto it = values_.find(n);
    if (it == values_.end()) return fallback;
    double v;
    if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", n, " must be a number, got '", it->second, "'"));
    }
    return v;
  }
  absl::StatusOr<int64_t> Integer(const std::string& n, int64_t fallback) const {
    auto it = values_.find(n);
    if (it == values_.end()) return fallback;
    int64_t v;
    if (!absl::SimpleAtoi(it->second, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", n, " must be an integer, got '", it->second, "'"));
    }
    return v;
  }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
};

}  // namespace qlorad
