// The reference for engine/sp_model.h in tests: libsentencepiece itself, behind a thin wrapper
// with no Abseil in its interface (libsentencepiece's header declares its own
// `absl::string_view`, which clashes with the real Abseil's, so only sp_processor.cc includes
// it, and it includes no Abseil header). Only test binaries that load no libprotobuf may link it.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace qlorad {

class SpProcessor {
 public:
  SpProcessor();
  ~SpProcessor();
  // Each returns an empty string on success, otherwise the error message.
  std::string LoadFromSerializedProto(const std::string& proto);
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  std::string IdToPiece(int id) const;
  bool IsControl(int id) const;
  bool IsByte(int id) const;
  int bos_id() const;
  int eos_id() const;
  int size() const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace qlorad
