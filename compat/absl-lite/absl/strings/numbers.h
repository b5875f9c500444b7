// absl-lite (see ../status/status.h): SimpleAtoi, SimpleAtod. As in Abseil, ASCII
// whitespace around the number is ignored, a leading '+' is accepted, the whole rest must be the
// number (base 10 for integers), an integer out of the type's range fails, and a floating-point
// number out of range is +-inf or 0. On failure *out is unspecified (Abseil writes to it).
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "absl/strings/strip.h"

namespace absl {
namespace numbers_internal {
// The number's text without surrounding whitespace or a leading '+' ("+-1" stays invalid).
inline std::string_view Digits(std::string_view s) {
  s = StripAsciiWhitespace(s);
  if (s.size() > 1 && s[0] == '+' && s[1] != '-') s.remove_prefix(1);
  return s;
}
template <typename T>
bool Parse(std::string_view s, T* out) {
  s = Digits(s);
  if (s.empty()) return false;
  T v{};
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ptr != s.data() + s.size()) return false;
  if constexpr (std::is_floating_point_v<T>) {
    // As Abseil: a number too large or too small for the type is +-inf or 0 (strtod's value).
    if (r.ec == std::errc::result_out_of_range) {
      const std::string text(s);
      *out = static_cast<T>(std::strtod(text.c_str(), nullptr));
      return true;
    }
  }
  if (r.ec != std::errc()) return false;  // an integer out of range fails
  *out = v;
  return true;
}
}  // namespace numbers_internal

template <typename Int>
bool SimpleAtoi(std::string_view s, Int* out) {
  static_assert(std::is_integral_v<Int> && !std::is_same_v<Int, bool>, "an integer type");
  return numbers_internal::Parse(s, out);
}
inline bool SimpleAtod(std::string_view s, double* out) { return numbers_internal::Parse(s, out); }

}  // namespace absl
