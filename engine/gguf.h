// GGUF files (llama.cpp's format, v2/v3) of the `llama` architecture with F32/F16 tensors and
// an embedded SentencePiece-style (`llama`) tokenizer. Weights come out in Hugging Face layout
// (GGUF keeps q/k in the Meta RoPE order, so their rows are permuted).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/llama_weights.h"
#include "engine/mapped_file.h"
#include "engine/sentencepiece_proto.h"

namespace qlorad {

struct GgufValue {
  uint32_t type = 0;                 // gguf value type; 9 = array
  uint32_t elem_type = 0;            // for arrays
  std::vector<double> numbers;       // scalar in [0]; numeric arrays
  std::vector<std::string> strings;  // string in [0]; string arrays
};

struct GgufTensorInfo {
  std::vector<int64_t> shape;  // row-major (ggml's ne reversed): [out, in] for matrices
  uint32_t ggml_type = 0;      // 0 F32, 1 F16
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// A parsed, bounds-checked GGUF file. Thread-compatible.
class GgufFile {
 public:
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::map<std::string, GgufTensorInfo>& tensors() const { return tensors_; }
  uint32_t version() const { return version_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::map<std::string, GgufTensorInfo> tensors_;
};

struct GgufModel {
  LlamaWeights weights;
  SentencePieceSpec tokenizer;
};

absl::StatusOr<GgufModel> LoadGgufModel(const std::string& path);
// The file's SentencePiece vocabulary alone (tokenizer.ggml.*), without reading any tensor.
absl::StatusOr<SentencePieceSpec> ReadGgufTokenizer(const GgufFile& g);

}  // namespace qlorad
