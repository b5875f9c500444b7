// Builds a serialized SentencePiece ModelProto from a vocabulary, so that tokenizers embedded in
// GGUF files or in llama2.c tokenizer files run through libsentencepiece like tokenizer.model
// files do. Only the fields a BPE model needs are written (protobuf wire format by hand: the
// engine links no protobuf library).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qlorad {

// SentencePiece piece types (sentencepiece_model.proto), which GGUF's token_type reuses.
enum class PieceType : int {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct VocabPiece {
  std::string piece;  // with U+2581 for spaces, "<0x0A>" for byte pieces
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
};

struct SentencePieceSpec {
  std::vector<VocabPiece> pieces;
  bool bpe = true;  // BPE (LLaMA) or unigram
  bool byte_fallback = true;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
};

std::string SerializeSentencePieceModel(const SentencePieceSpec& spec);

// Reads a llama2.c tokenizer file (int32 max_token_length, then per token: float32 score,
// int32 length, bytes). Spaces become U+2581; "\n<s>\n"/"\n</s>\n" become <s>/</s>; <0xXX>
// pieces are byte pieces; id 0 is <unk>.
absl::StatusOr<SentencePieceSpec> ReadLlama2cTokenizer(const std::string& path, int64_t vocab_size);

}  // namespace qlorad
