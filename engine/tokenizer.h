// Text <-> token ids with a SentencePiece BPE model (engine/sp_model.h), from a tokenizer.model
// file or from a model proto built out of an embedded vocabulary (GGUF, llama2.c). Thread-safe
// after construction.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace qlorad {

class SentencePieceModel;

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSerializedProto(std::string proto);
  ~Tokenizer();

  // Without BOS/EOS; add them explicitly.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const;
  // The text of one token on its own (U+2581 as a space, byte pieces as their byte, control
  // tokens as nothing), for streaming output.
  std::string PieceText(int32_t id) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t vocab_size() const;
  // The serialized ModelProto, to save next to a converted model as tokenizer.model.
  const std::string& serialized_proto() const { return proto_; }

 private:
  Tokenizer() = default;
  std::unique_ptr<SentencePieceModel> sp_;
  std::string proto_;
};

}  // namespace qlorad
