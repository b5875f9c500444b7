// absl-lite (see ../status/status.h): StrSplit on one character. The pieces view the input, which
// must outlive them, unless it was a temporary string, which they then keep (as with Abseil);
// they convert to a vector of strings too.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/strings/string_view.h"

namespace absl {

class SplitPieces {
 public:
  SplitPieces(std::vector<std::string_view> pieces, std::shared_ptr<const std::string> owned)
      : owned_(std::move(owned)), pieces_(std::move(pieces)) {}
  auto begin() const { return pieces_.begin(); }
  auto end() const { return pieces_.end(); }
  operator std::vector<std::string_view>() const { return pieces_; }  // NOLINT
  operator std::vector<std::string>() const {                         // NOLINT
    return std::vector<std::string>(pieces_.begin(), pieces_.end());
  }

 private:
  std::shared_ptr<const std::string> owned_;  // a temporary input, kept alive
  std::vector<std::string_view> pieces_;
};

namespace strings_internal {
inline SplitPieces Split(std::string_view text, char delimiter,
                         std::shared_ptr<const std::string> owned) {
  std::vector<std::string_view> pieces;
  size_t start = 0;
  while (true) {
    const size_t at = text.find(delimiter, start);
    if (at == std::string_view::npos) {
      pieces.push_back(text.substr(start));
      return SplitPieces(std::move(pieces), std::move(owned));
    }
    pieces.push_back(text.substr(start, at - start));
    start = at + 1;
  }
}
}  // namespace strings_internal

inline SplitPieces StrSplit(std::string_view text, char delimiter) {
  return strings_internal::Split(text, delimiter, nullptr);
}
inline SplitPieces StrSplit(std::string&& text, char delimiter) {
  auto owned = std::make_shared<const std::string>(std::move(text));
  return strings_internal::Split(*owned, delimiter, owned);
}

}  // namespace absl
