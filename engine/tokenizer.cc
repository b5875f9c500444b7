#include "engine/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/sp_model.h"
#include "engine/status_macros.h"

namespace qlorad {

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string proto, ReadFileToString(path));
  auto t = FromSerializedProto(std::move(proto));
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSerializedProto(std::string proto) {
  auto model = SentencePieceModel::Parse(proto);
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load SentencePiece model: ", model.status().message()));
  }
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  t->sp_ = std::move(*model);
  t->proto_ = std::move(proto);
  return t;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  return sp_->Encode(text);
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab_size()));
    }
  }
  return sp_->Decode(ids);
}

std::string Tokenizer::PieceText(int32_t id) const {
  if (id < 0 || id >= vocab_size() || sp_->IsControl(id)) return "";
  if (sp_->IsByte(id)) return std::string(1, sp_->ByteOf(id));  // "<0xAB>" -> the raw byte
  const std::string& piece = sp_->IdToPiece(id);
  std::string out;
  for (size_t i = 0; i < piece.size(); ++i) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
      out.push_back(' ');
      i += 2;
    } else {
      out.push_back(piece[i]);
    }
  }
  return out;
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::vocab_size() const { return sp_->size(); }

}  // namespace qlorad
