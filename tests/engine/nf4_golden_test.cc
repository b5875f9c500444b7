// NF4 and double quantization against files written by the real bitsandbytes 0.50.2 and
// transformers (tests/golden/README.md says how they were made and the exact rules).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/hf_model_io.h"
#include "engine/nf4_checkpoint.h"
#include "engine/nf4_tensor.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/cpu/nf4.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::GoldenDir;

const char* kCases[] = {"gauss_3x1000", "gauss_17x1030", "tiny_1x5",      "outlier_9x515",
                        "zeros_2x100",  "ties_2x64",     "recipdiv_1x152"};

class GoldenFile {
 public:
  explicit GoldenFile(const std::string& name) {
    auto f = SafetensorsFile::Open(GoldenDir() + "/" + name);
    EXPECT_TRUE(f.ok()) << f.status();
    file_ = std::move(*f);
  }
  template <typename T>
  std::vector<T> Get(const std::string& key) const {
    const SafetensorsEntry& e = file_->tensors().at(key);
    std::vector<T> v(e.bytes / sizeof(T));
    std::memcpy(v.data(), e.data, e.bytes);
    return v;
  }
  bool Has(const std::string& key) const { return file_->Has(key); }

 private:
  std::unique_ptr<SafetensorsFile> file_;
};

// Bitwise float comparison (so -0.0 != 0.0 and NaN == NaN with the same payload).
int64_t BitDiffs(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return -1;
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], 4) != 0;
  return n;
}

TEST(Nf4Golden, CodeTablesAreBitsandbytesOwn) {
  GoldenFile g("nf4_blockwise.safetensors");
  EXPECT_EQ(BitDiffs(g.Get<float>("gauss_3x1000.code"),
                     std::vector<float>(kernels::kNf4Code.begin(), kernels::kNf4Code.end())),
            0);
  const auto& map = kernels::SignedDynamicMap();
  EXPECT_EQ(BitDiffs(g.Get<float>("bw8.code"), std::vector<float>(map.begin(), map.end())), 0);
}

TEST(Nf4Golden, PlainNf4QuantizationIsBitExact) {
  GoldenFile g("nf4_blockwise.safetensors");
  for (const std::string c : kCases) {
    const auto x = g.Get<float>(c + ".input");
    Nf4Options o;
    o.double_quant = false;
    auto t = QuantizeNf4(x.data(), {static_cast<int64_t>(x.size())}, o);
    ASSERT_TRUE(t.ok()) << c;
    EXPECT_EQ(t->packed, g.Get<uint8_t>(c + ".plain_packed")) << c;
    EXPECT_EQ(BitDiffs(t->absmax, g.Get<float>(c + ".plain_absmax")), 0) << c;
    EXPECT_EQ(BitDiffs(t->Dequantize(), g.Get<float>(c + ".plain_dequant")), 0) << c;
  }
}

TEST(Nf4Golden, DoubleQuantizedPackedCodesAreBitExact) {
  GoldenFile g("nf4_blockwise.safetensors");
  for (const std::string c : kCases) {
    const auto x = g.Get<float>(c + ".input");
    auto t = QuantizeNf4(x.data(), {static_cast<int64_t>(x.size())});
    ASSERT_TRUE(t.ok()) << c;
    EXPECT_EQ(t->packed, g.Get<uint8_t>(c + ".packed")) << c;
    // torch's float32 cascade mean vs ours: within two ulps.
    const float golden_offset = g.Get<float>(c + ".offset")[0];
    EXPECT_LE(std::fabs(t->offset - golden_offset),
              2 * std::nextafter(std::fabs(golden_offset), 1.0f) - 2 * std::fabs(golden_offset))
        << c;
  }
}

// Given bitsandbytes' own offset, the nested 8-bit step equals bnb's CUDA kernel (exact
// nearest code) byte for byte; bnb's CPU library rounds through a lookup table and may pick
// a code that is not the nearest, never a nearer one than ours.
TEST(Nf4Golden, NestedAbsmaxQuantizationMatchesCudaAndIsNeverWorseThanCpu) {
  GoldenFile cpu("nf4_blockwise.safetensors");
  GoldenFile cuda("nf4_blockwise_cuda.safetensors");
  const auto& map = kernels::SignedDynamicMap();
  for (const std::string c : kCases) {
    for (const GoldenFile* g : {&cpu, &cuda}) {
      const bool is_cuda = g == &cuda;
      auto absmax = g->Get<float>(c + ".plain_absmax");
      const float offset = g->Get<float>(c + ".offset")[0];
      for (float& a : absmax) a -= offset;
      std::vector<uint8_t> q(absmax.size());
      std::vector<float> nested((absmax.size() + 255) / 256);
      kernels::QuantizeBlockwise8(absmax.data(), absmax.size(), 256, map.data(), q.data(),
                                  nested.data());
      EXPECT_EQ(BitDiffs(nested, g->Get<float>(c + ".nested_absmax")), 0)
          << c << (is_cuda ? " cuda" : " cpu");
      const auto golden_q = g->Get<uint8_t>(c + ".absmax_q");
      if (is_cuda) {
        EXPECT_EQ(q, golden_q) << c;
        continue;
      }
      for (size_t i = 0; i < q.size(); ++i) {
        if (q[i] == golden_q[i]) continue;
        const float normed = absmax[i] * (1.0f / nested[i / 256]);
        EXPECT_LE(std::fabs(map[q[i]] - normed), std::fabs(map[golden_q[i]] - normed))
            << c << " block " << i;
      }
    }
  }
}

// Loading: dequantizing bitsandbytes' stored bytes gives bitsandbytes' dequantized values.
TEST(Nf4Golden, DequantizingStoredBytesIsBitExact) {
  for (const char* file : {"nf4_blockwise.safetensors", "nf4_blockwise_cuda.safetensors"}) {
    GoldenFile g(file);
    GoldenFile cpu("nf4_blockwise.safetensors");  // inputs and dequant live in the CPU file
    for (const std::string c : kCases) {
      Nf4Tensor t;
      t.numel = static_cast<int64_t>(cpu.Get<float>(c + ".input").size());
      t.shape = {t.numel};
      t.packed = g.Get<uint8_t>(c + ".packed");
      t.absmax_q = g.Get<uint8_t>(c + ".absmax_q");
      t.nested_absmax = g.Get<float>(c + ".nested_absmax");
      t.offset = g.Get<float>(c + ".offset")[0];
      ASSERT_TRUE(t.Validate().ok()) << c;
      EXPECT_EQ(BitDiffs(t.BlockAbsmax(), g.Get<float>(c + ".absmax_dq")), 0) << file << " " << c;
      if (g.Has(c + ".dequant")) {
        EXPECT_EQ(BitDiffs(t.Dequantize(), g.Get<float>(c + ".dequant")), 0) << c;
      }
    }
  }
}

TEST(Nf4Golden, Blockwise8DequantizationIsBitExact) {
  GoldenFile g("nf4_blockwise.safetensors");
  const auto& map = kernels::SignedDynamicMap();
  for (const std::string c : {"bw8.randn_1000", "bw8.decades_512", "bw8.zeroblock_600"}) {
    const auto q = g.Get<uint8_t>(c + ".q");
    const auto absmax = g.Get<float>(c + ".absmax");
    std::vector<float> out(q.size());
    // bitsandbytes adds no offset here; adding -0.0 is the exact identity (it keeps the -0.0
    // that code[0] * 0 gives in an all-zero block, which + 0.0 would turn into +0.0).
    kernels::DequantizeBlockwise8(q.data(), absmax.data(), q.size(), 256, map.data(), -0.0f,
                                  out.data());
    EXPECT_EQ(BitDiffs(out, g.Get<float>(c + ".dequant")), 0) << c;
  }
}

// A checkpoint written by transformers + bitsandbytes loads without re-quantizing and its
// weights dequantize to exactly what bitsandbytes computes.
TEST(Nf4Golden, TransformersCheckpointLoadsBitExactly) {
  auto ck = LoadNf4Checkpoint(GoldenDir() + "/tiny_llama_bnb4");
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->quantized.size(), 14u);
  GoldenFile deq("tiny_llama_bnb4_dequant.safetensors");
  for (const auto& [name, t] : ck->quantized) {
    EXPECT_EQ(BitDiffs(t.Dequantize(), deq.Get<float>(name)), 0) << name;
  }
  auto fp = LoadHfWeights(GoldenDir() + "/tiny_llama_fp");
  ASSERT_TRUE(fp.ok()) << fp.status();
  EXPECT_EQ(fp->embed_tokens, ck->weights.embed_tokens);
  EXPECT_EQ(fp->layers[1].input_layernorm, ck->weights.layers[1].input_layernorm);
  // Quantizing the float checkpoint ourselves gives transformers' packed codes exactly.
  for (const TensorSlot& slot : TensorSlots(*fp)) {
    if (!slot.is_linear) continue;
    auto t = QuantizeNf4(slot.data->data(), slot.shape);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->packed, ck->quantized.at(slot.name).packed) << slot.name;
  }
}

// What we write has the same entries, dtypes and shapes as what transformers writes.
TEST(Nf4Golden, OurCheckpointHasTransformersLayout) {
  auto fp = LoadHfWeights(GoldenDir() + "/tiny_llama_fp");
  ASSERT_TRUE(fp.ok()) << fp.status();
  const std::string dir = ::qlorad::testing::TempDir("golden_layout");
  ASSERT_TRUE(SaveNf4Checkpoint(*fp, "", dir).ok());
  auto ours = SafetensorsFile::Open(dir + "/model.safetensors");
  auto theirs = SafetensorsFile::Open(GoldenDir() + "/tiny_llama_bnb4/model.safetensors");
  ASSERT_TRUE(ours.ok() && theirs.ok());
  ASSERT_EQ((*ours)->tensors().size(), (*theirs)->tensors().size());
  for (const auto& [name, e] : (*theirs)->tensors()) {
    ASSERT_TRUE((*ours)->Has(name)) << name;
    const SafetensorsEntry& o = (*ours)->tensors().at(name);
    EXPECT_EQ(o.dtype, e.dtype) << name;
    if (name.find("quant_state") == std::string::npos) {
      EXPECT_EQ(o.shape, e.shape) << name;  // the JSON's length differs in its float digits
    }
  }
  EXPECT_EQ((*ours)->metadata(), (*theirs)->metadata());
}

}  // namespace
}  // namespace qlorad
