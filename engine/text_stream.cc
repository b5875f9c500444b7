#include "engine/text_stream.h"

#include "engine/status_macros.h"

namespace qlorad {

absl::StatusOr<TextStream> TextStream::Start(const Tokenizer& tokenizer,
                                             std::vector<int32_t> prompt) {
  ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(prompt));
  return TextStream(tokenizer, std::move(prompt), std::move(text));
}

absl::StatusOr<std::string> TextStream::Push(int32_t token) {
  ids_.push_back(token);
  ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(ids_));
  if (text.size() <= text_.size() || text.compare(0, text_.size(), text_) != 0) return "";
  std::string fresh = text.substr(text_.size());
  text_ = std::move(text);
  return fresh;
}

}  // namespace qlorad
