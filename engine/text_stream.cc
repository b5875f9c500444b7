#include "engine/text_stream.h"

#include <algorithm>
#include <string_view>

#include "engine/status_macros.h"

namespace qlorad {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

absl::StatusOr<TextStream> TextStream::Start(const Tokenizer& tokenizer,
                                             std::vector<int32_t> prompt) {
  // Only the prompt's last tokens are kept, as context: each push decodes the kept ids again,
  // and a prompt near a 32k-token context made every token of the answer decode all of it.
  // Enough of them that their text is not blank, so that the first generated piece's leading
  // space is not taken for the start of the text (and dropped as a dummy prefix).
  constexpr size_t kPromptContext = 16;
  size_t keep = std::min(prompt.size(), kPromptContext);
  while (true) {
    std::vector<int32_t> tail(prompt.end() - static_cast<std::ptrdiff_t>(keep), prompt.end());
    ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(tail));
    if (keep == prompt.size() || text.find_first_not_of(' ') != std::string::npos) {
      return TextStream(tokenizer, std::move(tail), std::move(text));
    }
    keep = std::min(prompt.size(), 2 * keep);
  }
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
