#include "client/cli/utf8.h"

#include <cstddef>
#include <cstdint>

namespace qlorad::ctl {
namespace {

// The character starting at text[i]: how many bytes it takes (`length`), and whether they form a
// well-formed one. When not, `length` is the maximal subpart (the bytes that could still have
// begun one), which becomes one U+FFFD, as Python's and ICU's decoders do.
struct Char {
  size_t length = 1;
  bool valid = false;
};

Char CharAt(std::string_view text, size_t i) {
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

}  // namespace

bool IsUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const Char c = CharAt(text, i);
    if (!c.valid) return false;
    i += c.length;
  }
  return true;
}

std::string ToValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const Char c = CharAt(text, i);
    if (c.valid) {
      out.append(text.substr(i, c.length));
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
    }
    i += c.length;
  }
  return out;
}

}  // namespace qlorad::ctl
