// Streams generated text: decodes the last few tokens (of the prompt, then of the text itself)
// with the new one after each token and hands out only what is new, so that byte-fallback pieces
// forming one UTF-8 character come out whole. The tokens decoded stay few: each push costs the
// same at the 4000th token as at the first.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace qlorad {

class TextStream {
 public:
  // The prompt's text is taken as already seen (never handed out).
  static absl::StatusOr<TextStream> Start(const Tokenizer& tokenizer, std::vector<int32_t> prompt);
  // The text the new token completes; empty while a character is still partial. A character
  // still partial decodes as one U+FFFD per byte until its last byte replaces them, so trailing
  // U+FFFDs are held back until what follows settles them.
  absl::StatusOr<std::string> Push(int32_t token);
  // What is held back once generation ends (bytes that never formed a character: U+FFFDs).
  absl::StatusOr<std::string> Rest();
  // How many tokens the next push decodes besides the new one.
  size_t context_tokens() const { return ids_.size(); }

 private:
  explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  // Keeps the last few of `ids` as the context (ids_) and their text as handed out (text_).
  absl::Status KeepTail(const std::vector<int32_t>& ids);
  // The part of `text` (the whole sequence decoded) not handed out yet, up to `end`.
  std::string Fresh(const std::string& text, size_t end);
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  std::string text_;    // handed out so far (the prompt's text included)
  size_t drop_at_ = 0;  // the context's size at which KeepTail shortens it again
};

}  // namespace qlorad
