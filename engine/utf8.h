// Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or values past U+10FFFF), read a
// character at a time. Header-only: the engine's tokenizer and qloractl (which does not link the
// engine) both read it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace qlorad {

struct Utf8Char {
  size_t length = 1;
  bool valid = false;
};

// The character starting at text[i] (i < text.size()): how many bytes it takes and whether they
// form a well-formed one. When not, `length` is the maximal subpart (the bytes that could still
// have begun one), which Python's and ICU's decoders replace by one U+FFFD.
inline Utf8Char Utf8CharAt(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) return {1, true};
  size_t length = 0;
  uint8_t low = 0x80, high = 0xBF;  // the range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
  } else {
    return {1, false};  // not a lead byte
  }
  size_t k = 1;
  if (i + 1 < text.size() && byte(i + 1) >= low && byte(i + 1) <= high) {
    k = 2;
    while (k < length && i + k < text.size() && byte(i + k) >= 0x80 && byte(i + k) <= 0xBF) ++k;
  }
  return {k, k == length};
}

// Whether all of `text` is well-formed UTF-8.
inline bool IsUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const Utf8Char c = Utf8CharAt(text, i);
    if (!c.valid) return false;
    i += c.length;
  }
  return true;
}

}  // namespace qlorad
