// absl-lite (see ../status/status.h): StrFormat and StrAppendFormat. As Abseil's, the conversions
// follow each argument's type, not printf's length modifiers: %d takes any integer (an int64_t
// too), %f any number, %s a string or string_view. Each conversion is written by snprintf with
// the argument widened to long long, unsigned long long or double; length modifiers in the
// format are ignored. Unlike Abseil, a format that does not fit its arguments is not a compile
// error (such a conversion writes nothing; '*' widths are not supported): the same sources build
// with real Abseil in CI, which checks them.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace absl {
namespace str_format_internal {

struct Arg {
  enum Kind { kSigned, kUnsigned, kFloat, kString } kind;
  long long i = 0;
  unsigned long long u = 0;
  double d = 0.0;
  std::string_view s;
};

template <typename T>
Arg MakeArg(const T& v) {
  Arg a{};
  if constexpr (std::is_enum_v<T>) {
    return MakeArg(static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    a.kind = Arg::kSigned;
    a.i = v;
  } else if constexpr (std::is_integral_v<T>) {  // unsigned, bool
    a.kind = Arg::kUnsigned;
    a.u = v;
  } else if constexpr (std::is_floating_point_v<T>) {
    a.kind = Arg::kFloat;
    a.d = static_cast<double>(v);
  } else {
    static_assert(std::is_convertible_v<const T&, std::string_view>,
                  "absl-lite StrFormat: a number or a string");
    a.kind = Arg::kString;
    a.s = std::string_view(v);
  }
  return a;
}

template <typename T>
void Append(std::string* out, const std::string& spec, T value) {
  const int n = std::snprintf(nullptr, 0, spec.c_str(), value);
  if (n <= 0) return;
  const size_t at = out->size();
  out->resize(at + static_cast<size_t>(n) + 1);
  std::snprintf(out->data() + at, static_cast<size_t>(n) + 1, spec.c_str(), value);
  out->resize(at + static_cast<size_t>(n));
}

// One conversion: `spec` is "%" with its flags, width and precision; `conv` its letter. The
// engine's formats also compile with real Abseil, which rejects a conversion that does not fit
// its argument's type: only the fitting pairs are written (an integer for d i u o x X, a number
// for f e g a, a string for s).
inline void Convert(std::string* out, const std::string& spec, char conv, const Arg& a) {
  const bool integer = a.kind == Arg::kSigned || a.kind == Arg::kUnsigned;
  switch (conv) {
    case 'd':
    case 'i':
      if (integer)
        Append(out, spec + "lld", a.kind == Arg::kSigned ? a.i : static_cast<long long>(a.u));
      return;
    case 'u':
    case 'o':
    case 'x':
    case 'X':
      if (integer) {
        Append(out, spec + "ll" + conv,
               a.kind == Arg::kUnsigned ? a.u : static_cast<unsigned long long>(a.i));
      }
      return;
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
    case 'a':
    case 'A':
      if (a.kind == Arg::kFloat) Append(out, spec + conv, a.d);
      if (a.kind == Arg::kSigned) Append(out, spec + conv, static_cast<double>(a.i));
      if (a.kind == Arg::kUnsigned) Append(out, spec + conv, static_cast<double>(a.u));
      return;
    case 's':
      if (a.kind == Arg::kString) Append(out, spec + "s", std::string(a.s).c_str());
      return;
    default:
      return;
  }
}

inline std::string& Format(std::string* out, std::string_view fmt, const Arg* args, size_t n) {
  size_t next = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out->push_back(fmt[i]);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '%') {
      out->push_back('%');
      ++i;
      continue;
    }
    std::string spec = "%";
    size_t j = i + 1;
    while (j < fmt.size() && std::string_view("-+ #0").find(fmt[j]) != std::string_view::npos) {
      spec += fmt[j++];
    }
    while (j < fmt.size() && ((fmt[j] >= '0' && fmt[j] <= '9') || fmt[j] == '.')) spec += fmt[j++];
    while (j < fmt.size() && std::string_view("hlLqjzt").find(fmt[j]) != std::string_view::npos) {
      ++j;  // length modifiers: the argument's type decides
    }
    if (j >= fmt.size()) break;
    if (next < n) Convert(out, spec, fmt[j], args[next]);
    ++next;
    i = j;
  }
  return *out;
}

}  // namespace str_format_internal

template <typename... Args>
std::string StrFormat(std::string_view format, const Args&... args) {
  const str_format_internal::Arg list[] = {str_format_internal::MakeArg(args)...,
                                           str_format_internal::Arg{}};
  std::string out;
  return str_format_internal::Format(&out, format, list, sizeof...(Args));
}

template <typename... Args>
std::string& StrAppendFormat(std::string* dst, std::string_view format, const Args&... args) {
  const str_format_internal::Arg list[] = {str_format_internal::MakeArg(args)...,
                                           str_format_internal::Arg{}};
  return str_format_internal::Format(dst, format, list, sizeof...(Args));
}

}  // namespace absl
