#include "client/cli/utf8.h"

#include "engine/utf8.h"

namespace qlorad::ctl {

std::string ToValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const Utf8Char c = Utf8CharAt(text, i);
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
