// absl-lite (see ../status/status.h): SimpleAtoi, SimpleAtod, SimpleAtof. As in Abseil, ASCII
// whitespace around the number is ignored, a leading '+' is accepted, the whole rest must be the
// number (base 10 for integers), and an integer out of the type's range fails.
#pragma once

#include <charconv>
#include <cstdint>
#include <limits>
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
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return false;
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
inline bool SimpleAtof(std::string_view s, float* out) { return numbers_internal::Parse(s, out); }

}  // namespace absl
