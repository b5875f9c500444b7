#include "engine/sentencepiece_proto.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"

namespace qlorad {
namespace {

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutTag(std::string* out, int field, int wire) { PutVarint(out, (field << 3) | wire); }

void PutInt(std::string* out, int field, int64_t v) {
  PutTag(out, field, 0);
  PutVarint(out, static_cast<uint64_t>(v));  // negative int32 is sign-extended to 10 bytes
}

void PutBytes(std::string* out, int field, const std::string& s) {
  PutTag(out, field, 2);
  PutVarint(out, s.size());
  out->append(s);
}

void PutFloat(std::string* out, int field, float f) {
  PutTag(out, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);
  out->append(b, 4);
}

}  // namespace

std::string SerializeSentencePieceModel(const SentencePieceSpec& spec) {
  std::string out;
  for (const VocabPiece& p : spec.pieces) {
    std::string msg;
    PutBytes(&msg, 1, p.piece);
    PutFloat(&msg, 2, p.score);
    PutInt(&msg, 3, static_cast<int>(p.type));
    PutBytes(&out, 1, msg);
  }
  std::string trainer;
  PutInt(&trainer, 3, spec.bpe ? 2 : 1);                          // model_type: UNIGRAM 1, BPE 2
  PutInt(&trainer, 4, static_cast<int64_t>(spec.pieces.size()));  // vocab_size
  PutInt(&trainer, 35, spec.byte_fallback ? 1 : 0);
  PutInt(&trainer, 40, spec.unk_id);
  PutInt(&trainer, 41, spec.bos_id);
  PutInt(&trainer, 42, spec.eos_id);
  PutInt(&trainer, 43, spec.pad_id);
  PutBytes(&out, 2, trainer);
  std::string normalizer;
  PutBytes(&normalizer, 1, "identity");
  PutInt(&normalizer, 3, spec.add_dummy_prefix ? 1 : 0);
  PutInt(&normalizer, 4, spec.remove_extra_whitespaces ? 1 : 0);
  PutInt(&normalizer, 5, 1);  // escape_whitespaces
  PutBytes(&out, 3, normalizer);
  return out;
}

absl::StatusOr<SentencePieceSpec> ReadLlama2cTokenizer(const std::string& path,
                                                       int64_t vocab_size) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const uint8_t* p = file->data();
  const size_t size = file->size();
  size_t pos = 0;
  auto read32 = [&](void* dst) -> bool {
    if (pos + 4 > size) return false;
    std::memcpy(dst, p + pos, 4);
    pos += 4;
    return true;
  };
  int32_t max_len = 0;
  if (!read32(&max_len) || max_len <= 0 || max_len > 1 << 16) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a llama2.c tokenizer file (bad max_token_length)"));
  }
  SentencePieceSpec spec;
  spec.remove_extra_whitespaces = false;
  for (int64_t id = 0; id < vocab_size; ++id) {
    float score = 0.0f;
    int32_t len = 0;
    if (!read32(&score) || !read32(&len) || len < 0 || len > max_len ||
        pos + static_cast<size_t>(len) > size) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": token ", id, " is truncated or malformed (file too short for a vocabulary of ",
          vocab_size, ")"));
    }
    std::string text(reinterpret_cast<const char*>(p + pos), len);
    pos += len;
    VocabPiece piece;
    piece.score = score;
    if (id == 0) {
      piece.piece = "<unk>";
      piece.type = PieceType::kUnknown;
    } else if (text == "\n<s>\n" || text == "<s>") {
      piece.piece = "<s>";
      piece.type = PieceType::kControl;
    } else if (text == "\n</s>\n" || text == "</s>") {
      piece.piece = "</s>";
      piece.type = PieceType::kControl;
    } else if (text.size() == 6 && text.rfind("<0x", 0) == 0 && text[5] == '>') {
      piece.piece = text;
      piece.type = PieceType::kByte;
    } else {
      piece.piece = absl::StrReplaceAll(text, {{" ", "\xE2\x96\x81"}});
    }
    spec.pieces.push_back(std::move(piece));
  }
  if (pos != size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", size - pos, " trailing bytes after ",
                                                   vocab_size,
                                                   " tokens; vocabulary size mismatch?"));
  }
  return spec;
}

}  // namespace qlorad
