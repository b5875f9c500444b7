#include "engine/model_source.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/gguf.h"
#include "engine/hf_model_io.h"
#include "engine/nf4_checkpoint.h"
#include "engine/status_macros.h"

namespace qlorad {
namespace fs = std::filesystem;

absl::StatusOr<ModelSource> OpenModelSource(const std::string& path) {
  ModelSource src;
  src.path = path;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    ASSIGN_OR_RETURN(GgufModel g, LoadGgufModel(path));
    src.format = "gguf";
    src.weights = std::move(g.weights);
    ASSIGN_OR_RETURN(src.tokenizer,
                     Tokenizer::FromSerializedProto(SerializeSentencePieceModel(g.tokenizer)));
    return src;
  }
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model '", path, "' is neither a directory nor a GGUF file"));
  }
  ASSIGN_OR_RETURN(bool is_bnb, IsNf4Checkpoint(path));
  if (is_bnb) {
    ASSIGN_OR_RETURN(Nf4Checkpoint ck, LoadNf4Checkpoint(path));
    src.format = "hf-bnb-4bit";
    src.weights = std::move(ck.weights);
    src.prequantized = std::move(ck.quantized);
  } else {
    src.format = "hf";
    ASSIGN_OR_RETURN(src.weights, LoadHfWeights(path));
  }
  const fs::path tok = fs::path(path) / "tokenizer.model";
  if (fs::exists(tok)) {
    ASSIGN_OR_RETURN(src.tokenizer, Tokenizer::FromModelFile(tok.string()));
    if (src.tokenizer->vocab_size() > src.weights.config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(tok.string(), ": ", src.tokenizer->vocab_size(),
                       " tokens but the model's vocab_size is ", src.weights.config.vocab_size));
    }
  }
  return src;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> OpenModelTokenizer(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    ASSIGN_OR_RETURN(auto gguf, GgufFile::Open(path));
    ASSIGN_OR_RETURN(SentencePieceSpec spec, ReadGgufTokenizer(*gguf));
    return Tokenizer::FromSerializedProto(SerializeSentencePieceModel(spec));
  }
  const fs::path tok = fs::path(path) / "tokenizer.model";
  if (!fs::exists(tok, ec)) return absl::NotFoundError(absl::StrCat(path, " has no tokenizer"));
  return Tokenizer::FromModelFile(tok.string());
}

}  // namespace qlorad
