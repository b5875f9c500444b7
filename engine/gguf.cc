#include "engine/gguf.h"

#include <cfloat>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"
#include "engine/status_macros.h"

namespace qlorad {
namespace {

constexpr uint32_t kArray = 9;
constexpr uint32_t kString = 8;

// Bounds-checked little-endian cursor over the mapping.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t size, std::string path)
      : p_(p), size_(size), path_(std::move(path)) {}
  size_t pos() const { return pos_; }
  absl::Status Need(size_t n, const std::string& what) {
    if (n > size_ - pos_) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": GGUF file truncated while reading ", what, " at byte ", pos_));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Read(const std::string& what) {
    RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> ReadString(const std::string& what) {
    ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what));
    RETURN_IF_ERROR(Need(len, what));
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  std::string path_;
};

absl::StatusOr<double> ReadNumber(Cursor& c, uint32_t type, const std::string& key) {
  switch (type) {
    case 0: {
      ASSIGN_OR_RETURN(uint8_t v, c.Read<uint8_t>(key));
      return v;
    }
    case 1: {
      ASSIGN_OR_RETURN(int8_t v, c.Read<int8_t>(key));
      return v;
    }
    case 2: {
      ASSIGN_OR_RETURN(uint16_t v, c.Read<uint16_t>(key));
      return v;
    }
    case 3: {
      ASSIGN_OR_RETURN(int16_t v, c.Read<int16_t>(key));
      return v;
    }
    case 4: {
      ASSIGN_OR_RETURN(uint32_t v, c.Read<uint32_t>(key));
      return v;
    }
    case 5: {
      ASSIGN_OR_RETURN(int32_t v, c.Read<int32_t>(key));
      return v;
    }
    case 6: {
      ASSIGN_OR_RETURN(float v, c.Read<float>(key));
      return v;
    }
    case 7: {
      ASSIGN_OR_RETURN(uint8_t v, c.Read<uint8_t>(key));
      return v != 0;
    }
    case 10: {
      ASSIGN_OR_RETURN(uint64_t v, c.Read<uint64_t>(key));
      return static_cast<double>(v);
    }
    case 11: {
      ASSIGN_OR_RETURN(int64_t v, c.Read<int64_t>(key));
      return static_cast<double>(v);
    }
    case 12: {
      ASSIGN_OR_RETURN(double v, c.Read<double>(key));
      return v;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("metadata '", key, "' has unknown value type ", type));
  }
}

absl::StatusOr<GgufValue> ReadValue(Cursor& c, uint32_t type, const std::string& key) {
  GgufValue v;
  v.type = type;
  if (type == kString) {
    ASSIGN_OR_RETURN(std::string s, c.ReadString(key));
    v.strings.push_back(std::move(s));
  } else if (type == kArray) {
    ASSIGN_OR_RETURN(v.elem_type, c.Read<uint32_t>(key));
    ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>(key));
    RETURN_IF_ERROR(c.Need(n, key));  // every element takes at least one byte
    for (uint64_t i = 0; i < n; ++i) {
      if (v.elem_type == kString) {
        ASSIGN_OR_RETURN(std::string s, c.ReadString(key));
        v.strings.push_back(std::move(s));
      } else if (v.elem_type == kArray) {
        return absl::InvalidArgumentError(
            absl::StrCat("metadata '", key, "': nested arrays are not supported"));
      } else {
        ASSIGN_OR_RETURN(double d, ReadNumber(c, v.elem_type, key));
        v.numbers.push_back(d);
      }
    }
  } else {
    ASSIGN_OR_RETURN(double d, ReadNumber(c, type, key));
    v.numbers.push_back(d);
  }
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  auto g = std::unique_ptr<GgufFile>(new GgufFile());
  ASSIGN_OR_RETURN(g->file_, MappedFile::Open(path));
  Cursor c(g->file_->data(), g->file_->size(), path);
  ASSIGN_OR_RETURN(uint32_t magic, c.Read<uint32_t>("magic"));
  if (magic != 0x46554747u)
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a GGUF file (bad magic)"));
  ASSIGN_OR_RETURN(g->version_, c.Read<uint32_t>("version"));
  if (g->version_ < 2 || g->version_ > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": GGUF version ", g->version_, " is not supported (2 or 3)"));
  }
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, c.Read<uint64_t>("metadata count"));
  for (uint64_t i = 0; i < n_kv; ++i) {
    ASSIGN_OR_RETURN(std::string key, c.ReadString("metadata key"));
    ASSIGN_OR_RETURN(uint32_t type, c.Read<uint32_t>(key));
    auto value = ReadValue(c, type, key);
    if (!value.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", value.status().message()));
    g->kv_[key] = std::move(*value);
  }
  struct Pending {
    std::string name;
    GgufTensorInfo info;
    uint64_t offset;
  };
  std::vector<Pending> pending;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Pending t;
    ASSIGN_OR_RETURN(t.name, c.ReadString("tensor name"));
    ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>(t.name));
    if (n_dims == 0 || n_dims > 4)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' has ", n_dims, " dimensions"));
    std::vector<int64_t> ne(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t v, c.Read<uint64_t>(t.name));
      if (v > (1ull << 40))
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", t.name, "' has an absurd dimension"));
      ne[d] = static_cast<int64_t>(v);
    }
    t.info.shape.assign(ne.rbegin(), ne.rend());
    ASSIGN_OR_RETURN(t.info.ggml_type, c.Read<uint32_t>(t.name));
    ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>(t.name));
    pending.push_back(std::move(t));
  }
  uint64_t alignment = 32;
  if (auto it = g->kv_.find("general.alignment");
      it != g->kv_.end() && !it->second.numbers.empty()) {
    const double a = it->second.numbers[0];
    alignment = a >= 1 && a <= 4096 ? static_cast<uint64_t>(a) : 0;
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || a != std::floor(a)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": general.alignment ", a, " is not a power of two"));
    }
  }
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  const uint64_t size = g->file_->size();
  for (Pending& t : pending) {
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t d : t.info.shape) overflow |= __builtin_mul_overflow(numel, d, &numel);
    if (overflow || numel > size) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' is larger than the file"));
    }
    uint64_t elem;
    if (t.info.ggml_type == 0) {
      elem = 4;
    } else if (t.info.ggml_type == 1) {
      elem = 2;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' has ggml type ", t.info.ggml_type,
                       "; only F32 (0) and F16 (1) GGUF tensors are supported"));
    }
    t.info.bytes = numel * elem;
    if (data_start > size || t.offset > size - data_start ||
        t.info.bytes > size - data_start - t.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' lies outside the file"));
    }
    t.info.data = g->file_->data() + data_start + t.offset;
    g->tensors_[t.name] = t.info;
  }
  return g;
}

namespace {

absl::StatusOr<double> Number(const GgufFile& g, const std::string& key, bool required,
                              double fallback) {
  auto it = g.metadata().find(key);
  if (it == g.metadata().end() || it->second.type == kArray || it->second.numbers.empty()) {
    if (!required) return fallback;
    return absl::InvalidArgumentError(
        absl::StrCat(g.path(), ": missing numeric metadata '", key, "'"));
  }
  return it->second.numbers[0];
}

// A metadata number used as a count or an id: a whole number in [min, max] (casting NaN or a
// value past int64 to an integer is undefined).
absl::StatusOr<int64_t> Integer(const GgufFile& g, const std::string& key, bool required,
                                int64_t fallback, int64_t min = 0, int64_t max = int64_t{1} << 40) {
  ASSIGN_OR_RETURN(double v, Number(g, key, required, static_cast<double>(fallback)));
  if (!(v >= static_cast<double>(min) && v <= static_cast<double>(max)) || v != std::floor(v)) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": metadata '", key, "' is ", v,
                                                   "; a whole number from ", min, " to ", max,
                                                   " is expected"));
  }
  return static_cast<int64_t>(v);
}

}  // namespace

absl::StatusOr<SentencePieceSpec> ReadGgufTokenizer(const GgufFile& g) {
  auto tok_model = g.metadata().find("tokenizer.ggml.model");
  if (tok_model == g.metadata().end() || tok_model->second.strings.empty() ||
      tok_model->second.strings[0] != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat(g.path(), ": tokenizer.ggml.model must be 'llama' (SentencePiece)"));
  }
  auto tokens = g.metadata().find("tokenizer.ggml.tokens");
  if (tokens == g.metadata().end() || tokens->second.strings.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": missing tokenizer.ggml.tokens"));
  }
  const size_t vocab = tokens->second.strings.size();
  auto scores = g.metadata().find("tokenizer.ggml.scores");
  auto types = g.metadata().find("tokenizer.ggml.token_type");
  if (scores != g.metadata().end() && scores->second.numbers.size() != vocab) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": tokenizer.ggml.scores has ",
                                                   scores->second.numbers.size(), " entries for ",
                                                   vocab, " tokens"));
  }
  if (types != g.metadata().end() && types->second.numbers.size() != vocab) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": tokenizer.ggml.token_type has ",
                                                   types->second.numbers.size(), " entries for ",
                                                   vocab, " tokens"));
  }
  SentencePieceSpec spec;
  for (size_t i = 0; i < vocab; ++i) {
    VocabPiece p;
    p.piece = tokens->second.strings[i];
    if (scores != g.metadata().end()) p.score = static_cast<float>(scores->second.numbers[i]);
    if (types != g.metadata().end()) {
      const double t = types->second.numbers[i];
      if (!(t >= 1 && t <= 6) || t != std::floor(t))
        return absl::InvalidArgumentError(
            absl::StrCat(g.path(), ": token ", i, " has unknown type ", t));
      p.type = static_cast<PieceType>(static_cast<int>(t));
    }
    spec.pieces.push_back(std::move(p));
  }
  // Special ids name tokens of the list; llama.vocab_size (the embedding's rows) may pad it.
  const int64_t last_id = static_cast<int64_t>(vocab) - 1;
  ASSIGN_OR_RETURN(int64_t bos, Integer(g, "tokenizer.ggml.bos_token_id", false, 1, 0, last_id));
  ASSIGN_OR_RETURN(int64_t eos, Integer(g, "tokenizer.ggml.eos_token_id", false, 2, 0, last_id));
  ASSIGN_OR_RETURN(int64_t unk,
                   Integer(g, "tokenizer.ggml.unknown_token_id", false, 0, 0, last_id));
  spec.bos_id = static_cast<int>(bos);
  spec.eos_id = static_cast<int>(eos);
  spec.unk_id = static_cast<int>(unk);
  return spec;
}

absl::StatusOr<GgufModel> LoadGgufModel(const std::string& path) {
  ASSIGN_OR_RETURN(auto g, GgufFile::Open(path));
  auto arch = g->metadata().find("general.architecture");
  if (arch == g->metadata().end() || arch->second.strings.empty() ||
      arch->second.strings[0] != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": general.architecture must be 'llama'"));
  }
  GgufModel m;
  LlamaConfig& c = m.weights.config;
  ASSIGN_OR_RETURN(c.hidden_size, Integer(*g, "llama.embedding_length", true, 0));
  ASSIGN_OR_RETURN(c.num_hidden_layers, Integer(*g, "llama.block_count", true, 0));
  ASSIGN_OR_RETURN(c.intermediate_size, Integer(*g, "llama.feed_forward_length", true, 0));
  ASSIGN_OR_RETURN(c.num_attention_heads, Integer(*g, "llama.attention.head_count", true, 0));
  ASSIGN_OR_RETURN(c.num_key_value_heads,
                   Integer(*g, "llama.attention.head_count_kv", false, c.num_attention_heads));
  ASSIGN_OR_RETURN(double eps, Number(*g, "llama.attention.layer_norm_rms_epsilon", false, 1e-5));
  ASSIGN_OR_RETURN(double theta, Number(*g, "llama.rope.freq_base", false, 10000.0));
  ASSIGN_OR_RETURN(c.max_position_embeddings, Integer(*g, "llama.context_length", false, 2048));
  // Out of float's range reads as infinity, which Validate refuses (casting it is undefined).
  c.rms_norm_eps = std::fabs(eps) <= FLT_MAX ? static_cast<float>(eps) : INFINITY;
  c.rope_theta = std::fabs(theta) <= FLT_MAX ? static_cast<float>(theta) : INFINITY;

  ASSIGN_OR_RETURN(m.tokenizer, ReadGgufTokenizer(*g));
  const SentencePieceSpec& spec = m.tokenizer;
  const int64_t last_id = static_cast<int64_t>(spec.pieces.size()) - 1;
  c.bos_token_id = spec.bos_id;
  c.eos_token_id = spec.eos_id;
  ASSIGN_OR_RETURN(c.vocab_size, Integer(*g, "llama.vocab_size", false, last_id + 1, last_id + 1));

  // Tensors: the output head is tied when output.weight is absent or equals the embedding.
  const auto& t = g->tensors();
  auto emb = t.find("token_embd.weight");
  auto out = t.find("output.weight");
  c.tie_word_embeddings =
      out == t.end() || (emb != t.end() && out->second.bytes == emb->second.bytes &&
                         out->second.ggml_type == emb->second.ggml_type &&
                         std::memcmp(out->second.data, emb->second.data, emb->second.bytes) == 0);
  if (auto s = c.Validate(); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));

  auto load = [&](const std::string& name,
                  const std::vector<int64_t>& shape) -> absl::StatusOr<std::vector<float>> {
    auto it = t.find(name);
    if (it == t.end())
      return absl::InvalidArgumentError(absl::StrCat(path, ": missing tensor '", name, "'"));
    if (it->second.shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", name, "' does not have the shape the metadata implies"));
    }
    const int64_t n = static_cast<int64_t>(it->second.bytes / (it->second.ggml_type == 0 ? 4 : 2));
    std::vector<float> v(n);
    if (it->second.ggml_type == 0) {
      std::memcpy(v.data(), it->second.data, n * 4);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, it->second.data + 2 * i, 2);
        v[i] = F16ToF32(h);
      }
    }
    return v;
  };
  LlamaWeights& w = m.weights;
  const int64_t h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size, hd = c.head_dim();
  ASSIGN_OR_RETURN(w.embed_tokens, load("token_embd.weight", {c.vocab_size, h}));
  ASSIGN_OR_RETURN(w.norm, load("output_norm.weight", {h}));
  if (!c.tie_word_embeddings) {
    ASSIGN_OR_RETURN(w.lm_head, load("output.weight", {c.vocab_size, h}));
  }
  w.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    LlamaLayerWeights& L = w.layers[l];
    ASSIGN_OR_RETURN(L.input_layernorm, load(p + "attn_norm.weight", {h}));
    ASSIGN_OR_RETURN(std::vector<float> q, load(p + "attn_q.weight", {h, h}));
    ASSIGN_OR_RETURN(std::vector<float> k, load(p + "attn_k.weight", {kv, h}));
    L.q_proj = PermuteMetaToHf(q, c.num_attention_heads, hd, h);
    L.k_proj = PermuteMetaToHf(k, c.num_key_value_heads, hd, h);
    ASSIGN_OR_RETURN(L.v_proj, load(p + "attn_v.weight", {kv, h}));
    ASSIGN_OR_RETURN(L.o_proj, load(p + "attn_output.weight", {h, h}));
    ASSIGN_OR_RETURN(L.post_attention_layernorm, load(p + "ffn_norm.weight", {h}));
    ASSIGN_OR_RETURN(L.gate_proj, load(p + "ffn_gate.weight", {im, h}));
    ASSIGN_OR_RETURN(L.up_proj, load(p + "ffn_up.weight", {im, h}));
    ASSIGN_OR_RETURN(L.down_proj, load(p + "ffn_down.weight", {h, im}));
  }
  RETURN_IF_ERROR(ValidateWeights(w));
  return m;
}

}  // namespace qlorad
