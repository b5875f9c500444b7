#include "engine/text_stream.h"

#include <string_view>

#include "engine/status_macros.h"

namespace qlorad {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

absl::StatusOr<TextStream> TextStream::Start(const Tokenizer& tokenizer,
                                             std::vector<int32_t> prompt) {
  ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(prompt));
  return TextStream(tokenizer, std::move(prompt), std::move(text));
}

std::string TextStream::Fresh(const std::string& text, size_t end) {
  if (end <= text_.size()) return "";
  if (text.compare(0, text_.size(), text_) != 0) {
    // What was handed out no longer starts the text (never seen with our tokenizers): go on
    // from here rather than stall the rest of the stream.
    text_ = text.substr(0, end);
    return "";
  }
  std::string fresh = text.substr(text_.size(), end - text_.size());
  text_ = text.substr(0, end);
  return fresh;
}

absl::StatusOr<std::string> TextStream::Push(int32_t token) {
  ids_.push_back(token);
  ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(ids_));
  size_t settled = text.size();
  while (settled >= text_.size() + kReplacement.size() &&
         std::string_view(text).substr(settled - kReplacement.size(), kReplacement.size()) ==
             kReplacement) {
    settled -= kReplacement.size();
  }
  return Fresh(text, settled);
}

absl::StatusOr<std::string> TextStream::Rest() {
  ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(ids_));
  return Fresh(text, text.size());
}

}  // namespace qlorad
