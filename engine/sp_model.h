// SentencePiece BPE tokenization, implemented here from the model's ModelProto (the format of
// tokenizer.model), so that the engine needs no libsentencepiece: Debian's copy exports its own
// protobuf, which crashes processes that also load libprotobuf (docs/engine.md). It matches
// libsentencepiece's ids and text on BPE models with the identity normalizer (the LLaMA family);
// tests/engine/sp_model_test.cc checks that against libsentencepiece itself.
//
// Encoding: normalize (collapse extra spaces, add the dummy-prefix space, spaces -> U+2581),
// split into characters (user-defined pieces whole), merge adjacent pairs highest score first
// (leftmost on ties) while the merged piece is in the vocabulary, then map symbols to ids with
// byte fallback (<0xXX>) or <unk>. Thread-safe after Parse.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sentencepiece_proto.h"

namespace qlorad {

class SentencePieceModel {
 public:
  // Fails for unigram/word/char models and normalizers other than identity, naming them.
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Parse(std::string_view proto);

  std::vector<int32_t> Encode(std::string_view text) const;
  // Control pieces decode to nothing, byte pieces to their bytes, U+2581 to a space; the
  // dummy-prefix space of the first piece is removed.
  std::string Decode(const std::vector<int32_t>& ids) const;

  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& IdToPiece(int32_t id) const { return pieces_[id].piece; }
  bool IsControl(int32_t id) const { return pieces_[id].type == PieceType::kControl; }
  bool IsByte(int32_t id) const { return pieces_[id].type == PieceType::kByte; }
  // The byte a byte piece stands for (Parse checked each is spelled "<0xHH>").
  char ByteOf(int32_t id) const;
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }

 private:
  SentencePieceModel() = default;
  std::string Normalize(std::string_view text) const;

  std::vector<VocabPiece> pieces_;
  std::unordered_map<std::string, int32_t> mergeable_;  // normal and user-defined pieces
  std::vector<std::string> user_defined_;               // matched whole, longest first
  int32_t byte_ids_[256];
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  int32_t unk_id_ = 0, bos_id_ = 1, eos_id_ = 2;
  std::string unk_surface_ = " \xE2\x81\x87 ";  // trainer_spec.unk_surface, " ⁇ " by default
};

}  // namespace qlorad
