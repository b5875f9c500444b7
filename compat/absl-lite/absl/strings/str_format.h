// absl-lite (see ../status/status.h): StrFormat and StrAppendFormat. As Abseil's, the conversions
// follow each argument's type, not printf's length modifiers: %d takes any integer (an int64_t
// too), %f any integer or floating-point number, %s a string or string_view. Each conversion is
// written by snprintf with the argument widened to long long, unsigned long long or double;
// length modifiers in the format are ignored. Unlike Abseil, a format that does not fit its
// arguments is not a compile error (a conversion without an argument writes nothing; a '*'
// width is not supported), so the engine's tests build its formats with real Abseil too.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace absl {
namespace str_format_internal {

struct Arg {
  enum Kind { kSigned, kUnsigned, kFloat, kString, kPointer } kind;
  long long i = 0;
  unsigned long long u = 0;
  double d = 0.0;
  std::string_view s;
  const void* p = nullptr;
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
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    a.kind = Arg::kString;
    a.s = std::string_view(v);
  } else {
    static_assert(std::is_pointer_v<T>, "absl-lite StrFormat: an unsupported argument type");
    a.kind = Arg::kPointer;
    a.p = static_cast<const void*>(v);
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

// One conversion: `spec` is "%" with its flags, width and precision; `conv` its letter.
inline void Convert(std::string* out, std::string spec, char conv, const Arg& a) {
  auto as_signed = [&]() -> long long {
    return a.kind == Arg::kSigned     ? a.i
           : a.kind == Arg::kUnsigned ? static_cast<long long>(a.u)
                                      : static_cast<long long>(a.d);
  };
  auto as_double = [&]() -> double {
    return a.kind == Arg::kFloat    ? a.d
           : a.kind == Arg::kSigned ? static_cast<double>(a.i)
                                    : static_cast<double>(a.u);
  };
  switch (conv) {
    case 'd':
    case 'i':
      if (a.kind == Arg::kFloat) return Append(out, spec + "f", a.d);  // absl prints it as %f
      return Append(out, spec + "lld", as_signed());
    case 'u':
    case 'o':
    case 'x':
    case 'X':
      return Append(out, spec + "ll" + conv,
                    a.kind == Arg::kUnsigned ? a.u : static_cast<unsigned long long>(as_signed()));
    case 'c':
      return Append(out, spec + "c", static_cast<int>(as_signed()));
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
    case 'a':
    case 'A':
      return Append(out, spec + conv, as_double());
    case 'p':
      return Append(out, spec + "p", a.p);
    case 's': {
      std::string text;
      if (a.kind == Arg::kString) {
        text = std::string(a.s);
      } else if (a.kind == Arg::kFloat) {
        Append(&text, "%g", a.d);
      } else if (a.kind == Arg::kSigned) {
        text = std::to_string(a.i);
      } else {
        text = std::to_string(a.u);
      }
      return Append(out, spec + "s", text.c_str());
    }
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
