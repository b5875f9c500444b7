#include "engine/text_stream.h"

#include <algorithm>
#include <string_view>

#include "engine/status_macros.h"

namespace qlorad {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
// The context decoded with each new token: only the last tokens, since decoding them all made a
// prompt near a 32k-token context, or a long answer, cost O(n) per token.
constexpr size_t kContextTokens = 16;

}  // namespace

absl::StatusOr<TextStream> TextStream::Start(const Tokenizer& tokenizer,
                                             std::vector<int32_t> prompt) {
  TextStream stream(tokenizer);
  RETURN_IF_ERROR(stream.KeepTail(prompt));
  return stream;
}

absl::Status TextStream::KeepTail(const std::vector<int32_t>& ids) {
  // Enough tokens that their text is not empty: the decoder drops the leading space of pieces
  // written to an empty text (the dummy prefix; all leading spaces where extra whitespace is
  // removed), and would drop the next piece's. Control tokens decode to nothing, so a model
  // that emits only those keeps them all (each push then decodes all it emitted, as before).
  size_t keep = std::min(ids.size(), kContextTokens);
  while (true) {
    std::vector<int32_t> tail(ids.end() - static_cast<std::ptrdiff_t>(keep), ids.end());
    ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(tail));
    if (keep == ids.size() || !text.empty()) {
      ids_ = std::move(tail);
      text_ = std::move(text);
      // The next drop once the context has doubled: a wide one (empty text) is not decoded
      // again at every push.
      drop_at_ = 2 * std::max(ids_.size(), kContextTokens);
      return absl::OkStatus();
    }
    keep = std::min(ids.size(), 2 * keep);
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
  std::string fresh = Fresh(text, settled);
  // Once all is handed out (no partial character pending), the context drops back to its last
  // few tokens, every kContextTokens pushes or so: the decodes stay short.
  if (settled == text.size() && ids_.size() >= drop_at_) RETURN_IF_ERROR(KeepTail(ids_));
  return fresh;
}

absl::StatusOr<std::string> TextStream::Rest() {
  ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(ids_));
  return Fresh(text, text.size());
}

}  // namespace qlorad
