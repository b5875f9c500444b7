#include "client/cli/flags.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cli/utf8.h"

namespace qlorad::ctl {
namespace {

const FlagDef* Find(const std::vector<FlagDef>& flags, std::string_view name) {
  for (const FlagDef& flag : flags) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

absl::Status BadValue(const std::string& name, const std::string& value, std::string_view want) {
  return UsageError(
      absl::StrCat(FlagName(name), ": expected ", std::string(want), ", got '", value, "'"));
}

}  // namespace

std::string FlagName(std::string_view name) {
  return absl::StrCat(name.size() == 1 ? "-" : "--", std::string(name));
}

absl::StatusOr<ParsedArgs> ParsedArgs::Parse(const std::vector<std::string>& args,
                                             const std::vector<FlagDef>& flags) {
  ParsedArgs parsed;
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      parsed.positionals_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    const bool long_form = arg[1] == '-';
    std::string name = arg.substr(long_form ? 2 : 1);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    const FlagDef* flag = Find(flags, name);
    // One dash is for one-letter flags only; "-rank" is not "--rank".
    if (flag == nullptr || long_form != (name.size() > 1)) {
      return UsageError(absl::StrCat("unknown flag '", arg, "'"));
    }
    if (!flag->takes_value && value.has_value()) {
      return UsageError(absl::StrCat(FlagName(name), " takes no value"));
    }
    if (flag->takes_value && !value.has_value()) {
      if (i + 1 >= args.size()) return UsageError(absl::StrCat(FlagName(name), " needs a value"));
      // "--out --rslora-as-plain": the value was forgotten, and taking the next flag as it would
      // drop that flag silently. A value that does start with a flag's name is given with '='.
      if (const std::string& next = args[i + 1]; next.size() > 1 && next[0] == '-') {
        std::string next_name = next.substr(next[1] == '-' ? 2 : 1);
        next_name.resize(std::min(next_name.size(), next_name.find('=')));
        if (Find(flags, next_name) != nullptr) {
          return UsageError(absl::StrCat(FlagName(name), " needs a value, got the flag '", next,
                                         "' (for a value that starts with '-', write ",
                                         FlagName(name), "=VALUE)"));
        }
      }
      value = args[++i];
    }
    if (value.has_value() && !flag->path && !IsUtf8(*value)) {
      return UsageError(absl::StrCat(FlagName(name), ": '", ToValidUtf8(*value),
                                     "' is not UTF-8 text (set the terminal to UTF-8)"));
    }
    std::vector<std::string>& values = parsed.values_[name];
    if (!values.empty() && !flag->repeatable) {
      return UsageError(absl::StrCat(FlagName(name), " given more than once"));
    }
    values.push_back(value.value_or(""));
  }
  return parsed;
}

std::optional<std::string> ParsedArgs::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

absl::StatusOr<std::string> ParsedArgs::Required(const std::string& name) const {
  std::optional<std::string> value = Get(name);
  if (!value.has_value()) return UsageError(absl::StrCat("missing required flag ", FlagName(name)));
  return *std::move(value);
}

std::vector<std::string> ParsedArgs::GetList(const std::string& name) const {
  std::vector<std::string> items;
  for (const std::string& value : GetAll(name)) {
    for (absl::string_view item : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      items.emplace_back(absl::StripAsciiWhitespace(item));
    }
  }
  return items;
}

std::vector<std::string> ParsedArgs::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<std::optional<int64_t>> ParsedArgs::Int(const std::string& name, int64_t min,
                                                       int64_t max) const {
  std::optional<std::string> text = Get(name);
  if (!text.has_value()) return std::nullopt;
  int64_t value;
  if (!absl::SimpleAtoi(*text, &value)) return BadValue(name, *text, "an integer");
  if (value < min || value > max) {
    return UsageError(
        absl::StrCat(FlagName(name), ": ", value, " is out of range [", min, ", ", max, "]"));
  }
  return value;
}

absl::StatusOr<std::optional<uint64_t>> ParsedArgs::Uint(const std::string& name) const {
  std::optional<std::string> text = Get(name);
  if (!text.has_value()) return std::nullopt;
  uint64_t value;
  if (text->empty() || (*text)[0] == '-' || !absl::SimpleAtoi(*text, &value)) {
    return BadValue(name, *text, "a non-negative integer");
  }
  return value;
}

absl::StatusOr<std::optional<double>> ParsedArgs::Double(const std::string& name) const {
  std::optional<std::string> text = Get(name);
  if (!text.has_value()) return std::nullopt;
  double value;
  if (!absl::SimpleAtod(*text, &value) || !std::isfinite(value)) {
    return BadValue(name, *text, "a number");
  }
  return value;
}

absl::StatusOr<std::optional<float>> ParsedArgs::Float(const std::string& name) const {
  absl::StatusOr<std::optional<double>> value = Double(name);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return std::nullopt;
  if (std::fabs(**value) > std::numeric_limits<float>::max()) {
    return BadValue(name, *Get(name), "a number in float range");
  }
  return static_cast<float>(**value);
}

absl::StatusOr<std::map<std::string, std::string>> ParsedArgs::KeyValues(
    const std::string& name) const {
  std::map<std::string, std::string> pairs;
  for (const std::string& text : GetAll(name)) {
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) return BadValue(name, text, "KEY=VALUE");
    // Given twice (--label team=a --label team=b), the last one silently won.
    if (!pairs.emplace(text.substr(0, eq), text.substr(eq + 1)).second) {
      return UsageError(
          absl::StrCat("--", name, ": key '", text.substr(0, eq), "' is given twice"));
    }
  }
  return pairs;
}

}  // namespace qlorad::ctl
