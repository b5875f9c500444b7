// absl-lite (see ../status/status.h): StrReplaceAll over a list of (old, new) pairs. Scanning left
// to right, the earliest match of any pair is replaced (at one position, the longest pattern, as
// Abseil) and the scan goes on after it: replaced text is never matched again. Empty patterns are
// skipped.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/string_view.h"

namespace absl {

inline std::string StrReplaceAll(
    std::string_view s,
    std::initializer_list<std::pair<std::string_view, std::string_view>> replacements) {
  std::string out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t best = std::string_view::npos;
    const std::pair<std::string_view, std::string_view>* which = nullptr;
    for (const auto& r : replacements) {
      if (r.first.empty()) continue;
      const size_t at = s.find(r.first, pos);
      if (at < best ||
          (at == best && at != std::string_view::npos && r.first.size() > which->first.size())) {
        best = at;
        which = &r;
      }
    }
    if (which == nullptr) break;
    out.append(s.substr(pos, best - pos));
    out.append(which->second);
    pos = best + which->first.size();
  }
  if (pos < s.size()) out.append(s.substr(pos));
  return out;
}

}  // namespace absl
