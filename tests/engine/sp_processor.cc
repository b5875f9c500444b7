#include "tests/engine/sp_processor.h"

#include <sentencepiece_processor.h>

namespace qlorad {

SpProcessor::SpProcessor() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SpProcessor::~SpProcessor() = default;

std::string SpProcessor::LoadFromSerializedProto(const std::string& proto) {
  const auto s = sp_->LoadFromSerializedProto(proto);
  return s.ok() ? "" : s.ToString();
}

std::string SpProcessor::Encode(const std::string& text, std::vector<int>* ids) const {
  const auto s = sp_->Encode(text, ids);
  return s.ok() ? "" : s.ToString();
}

std::string SpProcessor::Decode(const std::vector<int>& ids, std::string* text) const {
  const auto s = sp_->Decode(ids, text);
  return s.ok() ? "" : s.ToString();
}

std::string SpProcessor::IdToPiece(int id) const { return sp_->IdToPiece(id); }
bool SpProcessor::IsControl(int id) const { return sp_->IsControl(id); }
bool SpProcessor::IsByte(int id) const { return sp_->IsByte(id); }
int SpProcessor::bos_id() const { return sp_->bos_id(); }
int SpProcessor::eos_id() const { return sp_->eos_id(); }
int SpProcessor::size() const { return sp_->GetPieceSize(); }

}  // namespace qlorad
