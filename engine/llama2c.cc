#include "engine/llama2c.h"

#include "absl/strings/str_cat.h"
#include "engine/hf_model_io.h"
#include "engine/sentencepiece_proto.h"
#include "engine/status_macros.h"
#include "engine/tokenizer.h"

namespace qlorad {

absl::Status ConvertLlama2cToHf(const std::string& checkpoint, const std::string& tokenizer,
                                const std::string& out_dir) {
  ASSIGN_OR_RETURN(LlamaWeights w, ReadLlama2cCheckpoint(checkpoint));
  // A SentencePiece model file is taken as is; anything else must be a llama2.c tokenizer.
  std::string proto;
  if (auto sp = Tokenizer::FromModelFile(tokenizer); sp.ok()) {
    proto = (*sp)->serialized_proto();
  } else {
    auto spec = ReadLlama2cTokenizer(tokenizer, w.config.vocab_size);
    if (!spec.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          tokenizer, ": neither a SentencePiece tokenizer.model (", sp.status().message(),
          ") nor a llama2.c tokenizer (", spec.status().message(), ")"));
    }
    proto = SerializeSentencePieceModel(*spec);
  }
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromSerializedProto(proto));
  if (tok->vocab_size() != w.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(tokenizer, ": vocabulary of ", tok->vocab_size(),
                                                   " tokens, the checkpoint has ",
                                                   w.config.vocab_size));
  }
  w.config.bos_token_id = tok->bos_id();
  w.config.eos_token_id = tok->eos_id();
  return SaveHfModel(w, proto, out_dir, DType::kF32);
}

}  // namespace qlorad
