// absl-lite (see ../status/status.h): StrContains, EndsWith.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace absl {

inline bool StrContains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}
inline bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace absl
