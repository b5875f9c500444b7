// absl-lite (see ../status/status.h): StripAsciiWhitespace.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace absl {

inline std::string_view StripAsciiWhitespace(std::string_view s) {
  auto space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace absl
