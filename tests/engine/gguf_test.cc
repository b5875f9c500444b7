#include "engine/gguf.h"

#include <cmath>
#include <cstring>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/generate.h"
#include "engine/llama2c.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::GreedyFromBos;
using ::qlorad::testing::kStoriesGreedy32;
using ::qlorad::testing::Stories260kDir;
using ::qlorad::testing::Stories260kGguf;
using ::qlorad::testing::TempDir;

TEST(Gguf, ParsesHeaderMetadataAndTensors) {
  auto g = GgufFile::Open(Stories260kGguf());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->version(), 3u);
  EXPECT_EQ((*g)->tensors().size(), 48u);
  EXPECT_EQ((*g)->metadata().at("general.architecture").strings[0], "llama");
  EXPECT_EQ((*g)->tensors().at("blk.0.ffn_gate.weight").shape, (std::vector<int64_t>{172, 64}));
}

TEST(Gguf, WeightsEqualTheLlama2cCheckpoint) {
  auto g = LoadGgufModel(Stories260kGguf());
  ASSERT_TRUE(g.ok()) << g.status();
  auto l = ReadLlama2cCheckpoint(Stories260kDir() + "/stories260K.bin");
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(g->weights.config.tie_word_embeddings);
  EXPECT_EQ(g->weights.config.num_key_value_heads, 4);
  EXPECT_EQ(g->weights.embed_tokens, l->embed_tokens);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(g->weights.layers[i].q_proj, l->layers[i].q_proj) << i;
    EXPECT_EQ(g->weights.layers[i].k_proj, l->layers[i].k_proj) << i;
    EXPECT_EQ(g->weights.layers[i].down_proj, l->layers[i].down_proj) << i;
  }
  EXPECT_EQ(g->tokenizer.pieces.size(), 512u);
  EXPECT_EQ(g->tokenizer.pieces[1].piece, "<s>");
}

TEST(Gguf, TokenizerAndGreedyTextMatchTheHfConversion) {
  auto src = OpenModelSource(Stories260kGguf());
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ(src->format, "gguf");
  EXPECT_EQ(*src->tokenizer->Encode("Once upon a time"),
            (std::vector<int32_t>{403, 407, 261, 378}));
  auto tokens = GreedyFromBos(std::move(src->weights), 32);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  for (int i = 0; i < 32; ++i) EXPECT_EQ((*tokens)[i], kStoriesGreedy32[i]) << i;
}

TEST(Gguf, CorruptFilesAreRejectedWithClearErrors) {
  auto full = ReadFileToString(Stories260kGguf());
  ASSERT_TRUE(full.ok());
  const std::string dir = TempDir("gguf_bad");
  ASSERT_TRUE(WriteStringToFile(dir + "/magic.gguf", "GGML" + full->substr(4)).ok());
  EXPECT_NE(GgufFile::Open(dir + "/magic.gguf").status().message().find("bad magic"),
            std::string::npos);
  ASSERT_TRUE(WriteStringToFile(dir + "/trunc.gguf", full->substr(0, 5000)).ok());
  auto t = GgufFile::Open(dir + "/trunc.gguf");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("truncated"), std::string::npos) << t.status();
  ASSERT_TRUE(WriteStringToFile(dir + "/short_data.gguf", full->substr(0, full->size() - 64)).ok());
  auto s = GgufFile::Open(dir + "/short_data.gguf");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("lies outside the file"), std::string::npos) << s.status();
}

// A small GGUF writer, enough to build test files with other tensor types and metadata.
class GgufWriter {
 public:
  void Str(const std::string& key, const std::string& v) {
    Key(key, 8);
    PutStr(v);
    ++kv_;
  }
  void U32(const std::string& key, uint32_t v) {
    Key(key, 4);
    Put(v);
    ++kv_;
  }
  void F32(const std::string& key, float v) {
    Key(key, 6);
    Put(v);
    ++kv_;
  }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    Key(key, 9);
    Put(uint32_t{8});
    Put(uint64_t{v.size()});
    for (const auto& s : v) PutStr(s);
    ++kv_;
  }
  void F32Array(const std::string& key, const std::vector<float>& v) {
    Key(key, 9);
    Put(uint32_t{6});
    Put(uint64_t{v.size()});
    for (float f : v) Put(f);
    ++kv_;
  }
  // `shape` row-major; type 0 (F32) or 1 (F16), or another type number with raw `bytes`.
  void Tensor(const std::string& name, std::vector<int64_t> shape, uint32_t type,
              std::string bytes) {
    tensors_.push_back({name, std::move(shape), type, std::move(bytes)});
  }
  std::string Finish() const {
    std::string out = "GGUF";
    auto put = [&out](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
    put(uint32_t{3});
    put(uint64_t{tensors_.size()});
    put(uint64_t{kv_});
    out += meta_;
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      put(uint64_t{t.name.size()});
      out += t.name;
      put(uint32_t(t.shape.size()));
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put(uint64_t(*it));
      put(t.type);
      put(offset);
      offset += (t.bytes.size() + 31) / 32 * 32;
    }
    out.resize((out.size() + 31) / 32 * 32, '\0');
    for (const auto& t : tensors_) {
      out += t.bytes;
      out.resize((out.size() + 31) / 32 * 32, '\0');
    }
    return out;
  }

 private:
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    uint32_t type;
    std::string bytes;
  };
  template <typename V>
  void Put(V v) {
    meta_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void PutStr(const std::string& s) {
    Put(uint64_t{s.size()});
    meta_ += s;
  }
  void Key(const std::string& key, uint32_t type) {
    PutStr(key);
    Put(type);
  }
  std::string meta_;
  uint64_t kv_ = 0;
  std::vector<T> tensors_;
};

std::string AsF16(const std::vector<float>& v) {
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = F32ToF16(v[i]);
    std::memcpy(&out[2 * i], &h, 2);
  }
  return out;
}

// stories260K written back out as an F16 GGUF (q/k in Meta order, as llama.cpp stores them);
// `claimed_layers`, when set, is the block count its metadata states instead.
std::string Stories260kAsF16Gguf(const std::string& architecture, uint32_t matrix_type,
                                 uint32_t claimed_layers = 0) {
  auto m = LoadGgufModel(Stories260kGguf());
  EXPECT_TRUE(m.ok());
  const LlamaConfig& c = m->weights.config;
  GgufWriter w;
  w.Str("general.architecture", architecture);
  w.U32("llama.embedding_length", c.hidden_size);
  w.U32("llama.block_count", claimed_layers != 0 ? claimed_layers : c.num_hidden_layers);
  w.U32("llama.feed_forward_length", c.intermediate_size);
  w.U32("llama.attention.head_count", c.num_attention_heads);
  w.U32("llama.attention.head_count_kv", c.num_key_value_heads);
  w.F32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  w.Str("tokenizer.ggml.model", "llama");
  std::vector<std::string> tokens;
  std::vector<float> scores;
  for (const auto& p : m->tokenizer.pieces) {
    tokens.push_back(p.piece);
    scores.push_back(p.score);
  }
  w.StrArray("tokenizer.ggml.tokens", tokens);
  w.F32Array("tokenizer.ggml.scores", scores);
  auto matrix = [&](const std::vector<float>& v) {
    return matrix_type == 1 ? AsF16(v) : std::string(v.size() / 2, '\x11');
  };
  const int64_t h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size, hd = c.head_dim();
  w.Tensor("token_embd.weight", {c.vocab_size, h}, 1, AsF16(m->weights.embed_tokens));
  w.Tensor("output_norm.weight", {h}, 0,
           std::string(reinterpret_cast<const char*>(m->weights.norm.data()), h * 4));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = m->weights.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    auto f32 = [](const std::vector<float>& v) {
      return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    };
    w.Tensor(p + "attn_norm.weight", {h}, 0, f32(L.input_layernorm));
    w.Tensor(p + "ffn_norm.weight", {h}, 0, f32(L.post_attention_layernorm));
    w.Tensor(p + "attn_q.weight", {h, h}, matrix_type,
             matrix(PermuteHfToMeta(L.q_proj, c.num_attention_heads, hd, h)));
    w.Tensor(p + "attn_k.weight", {kv, h}, matrix_type,
             matrix(PermuteHfToMeta(L.k_proj, c.num_key_value_heads, hd, h)));
    w.Tensor(p + "attn_v.weight", {kv, h}, matrix_type, matrix(L.v_proj));
    w.Tensor(p + "attn_output.weight", {h, h}, matrix_type, matrix(L.o_proj));
    w.Tensor(p + "ffn_gate.weight", {im, h}, matrix_type, matrix(L.gate_proj));
    w.Tensor(p + "ffn_up.weight", {im, h}, matrix_type, matrix(L.up_proj));
    w.Tensor(p + "ffn_down.weight", {h, im}, matrix_type, matrix(L.down_proj));
  }
  return w.Finish();
}

TEST(Gguf, F16TensorsLoadAndStillGenerateThePublishedText) {
  const std::string path = TempDir("gguf_f16") + "/stories_f16.gguf";
  ASSERT_TRUE(WriteStringToFile(path, Stories260kAsF16Gguf("llama", 1)).ok());
  auto f16 = LoadGgufModel(path);
  ASSERT_TRUE(f16.ok()) << f16.status();
  auto f32 = LoadGgufModel(Stories260kGguf());
  ASSERT_TRUE(f32.ok());
  EXPECT_TRUE(f16->weights.config.tie_word_embeddings);  // no output.weight
  EXPECT_EQ(f16->weights.config.rope_theta, 10000.0f);   // the default when absent
  for (size_t i = 0; i < f32->weights.layers[2].q_proj.size(); ++i) {
    const float ref = f32->weights.layers[2].q_proj[i];
    ASSERT_NEAR(f16->weights.layers[2].q_proj[i], ref, std::fabs(ref) / 1024 + 1e-7) << i;
  }
  auto tokens = GreedyFromBos(std::move(f16->weights), 16);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  for (int i = 0; i < 16; ++i) EXPECT_EQ((*tokens)[i], kStoriesGreedy32[i]) << i;
}

TEST(Gguf, OtherArchitecturesAndQuantizedTypesAreRefusedByName) {
  const std::string dir = TempDir("gguf_refused");
  ASSERT_TRUE(WriteStringToFile(dir + "/gpt2.gguf", Stories260kAsF16Gguf("gpt2", 1)).ok());
  auto a = LoadGgufModel(dir + "/gpt2.gguf");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("general.architecture must be 'llama'"), std::string::npos)
      << a.status();
  ASSERT_TRUE(WriteStringToFile(dir + "/q4.gguf", Stories260kAsF16Gguf("llama", 2)).ok());
  auto q = LoadGgufModel(dir + "/q4.gguf");
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("ggml type 2"), std::string::npos) << q.status();
}

// The tokenizer alone (what the daemon checks a queued job's data with) is the one the whole
// model source gives, for a GGUF file and for a Hugging Face folder.
TEST(Gguf, TheTokenizerAloneIsTheModelSourcesTokenizer) {
  const std::string text = "Once upon a time, Lily saw a \xF0\x9F\x90\xB1.";
  for (const std::string& path : {Stories260kGguf(), ::qlorad::testing::Stories260kHf()}) {
    SCOPED_TRACE(path);
    auto source = OpenModelSource(path);
    ASSERT_TRUE(source.ok()) << source.status();
    ASSERT_NE(source->tokenizer, nullptr);
    auto alone = OpenModelTokenizer(path);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*alone)->vocab_size(), source->tokenizer->vocab_size());
    EXPECT_EQ((*alone)->bos_id(), source->tokenizer->bos_id());
    EXPECT_EQ((*alone)->eos_id(), source->tokenizer->eos_id());
    EXPECT_EQ(*(*alone)->Encode(text), *source->tokenizer->Encode(text));
  }
  EXPECT_EQ(OpenModelTokenizer(TempDir("no_tokenizer")).status().code(),
            absl::StatusCode::kNotFound);
}

// A block count is allocated from once the embedding has loaded: four billion layers ended the
// process (std::bad_alloc) instead of naming the field.
TEST(Gguf, AnAbsurdLayerCountIsRefusedBeforeAnythingIsAllocated) {
  const std::string path = TempDir("gguf_layers") + "/layers.gguf";
  ASSERT_TRUE(WriteStringToFile(path, Stories260kAsF16Gguf("llama", 1, 4000000000u)).ok());
  auto m = LoadGgufModel(path);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("num_hidden_layers is 4000000000"), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace qlorad
