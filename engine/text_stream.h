// Streams generated text: decodes the generated tokens after the prompt's last few again after
// each new token and hands out only what is new, so that byte-fallback pieces forming one UTF-8
// character come out whole.
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

 private:
  TextStream(const Tokenizer& tokenizer, std::vector<int32_t> ids, std::string text)
      : tokenizer_(&tokenizer), ids_(std::move(ids)), text_(std::move(text)) {}
  // The part of `text` (the whole sequence decoded) not handed out yet, up to `end`.
  std::string Fresh(const std::string& text, size_t end);
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  std::string text_;  // handed out so far (the prompt's text included)
};

}  // namespace qlorad
