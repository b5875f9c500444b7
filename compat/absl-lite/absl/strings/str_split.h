// absl-lite (see ../status/status.h): StrSplit on one character. The pieces view the input, which
// must outlive them (as with Abseil); they convert to a vector of strings too.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace absl {

class SplitPieces {
 public:
  explicit SplitPieces(std::vector<std::string_view> pieces) : pieces_(std::move(pieces)) {}
  auto begin() const { return pieces_.begin(); }
  auto end() const { return pieces_.end(); }
  operator std::vector<std::string_view>() const { return pieces_; }  // NOLINT
  operator std::vector<std::string>() const {                         // NOLINT
    return std::vector<std::string>(pieces_.begin(), pieces_.end());
  }

 private:
  std::vector<std::string_view> pieces_;
};

inline SplitPieces StrSplit(std::string_view text, char delimiter) {
  std::vector<std::string_view> pieces;
  size_t start = 0;
  while (true) {
    const size_t at = text.find(delimiter, start);
    if (at == std::string_view::npos) {
      pieces.push_back(text.substr(start));
      return SplitPieces(std::move(pieces));
    }
    pieces.push_back(text.substr(start, at - start));
    start = at + 1;
  }
}

}  // namespace absl
