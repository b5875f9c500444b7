// absl-lite (see ../status/status.h): StrCat and StrAppend over strings, integers, enums and
// floating point numbers (six significant digits, as Abseil formats them).
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace absl {
namespace strings_internal {

inline void AppendPiece(std::string& out, std::string_view s) { out.append(s); }
inline void AppendPiece(std::string& out, const char* s) { out.append(s); }
inline void AppendPiece(std::string& out, const std::string& s) { out.append(s); }
void AppendPiece(std::string& out, char c) = delete;  // as Abseil: say StrCat(std::string(1, c))
template <typename T>
std::enable_if_t<std::is_integral_v<T> || std::is_enum_v<T>> AppendPiece(std::string& out, T v) {
  if constexpr (std::is_enum_v<T>) {
    out += std::to_string(static_cast<long long>(v));
  } else {
    out += std::to_string(v);
  }
}
template <typename T>
std::enable_if_t<std::is_floating_point_v<T>> AppendPiece(std::string& out, T v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  out += buf;
}

}  // namespace strings_internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (strings_internal::AppendPiece(out, args), ...);
  return out;
}

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (strings_internal::AppendPiece(*out, args), ...);
}

}  // namespace absl
