#include "engine/nf4_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/hf_model_io.h"
#include "engine/json_fields.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "kernels/cpu/nf4.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace fs = std::filesystem;
namespace {

constexpr char kQuantStateSuffix[] = ".quant_state.bitsandbytes__nf4";

absl::StatusOr<nlohmann::json> ReadConfigJson(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  return j;
}

// Finds a tensor in any shard.
class ShardSet {
 public:
  absl::Status Open(const std::string& dir) {
    ASSIGN_OR_RETURN(std::vector<std::string> files, HfSafetensorsFiles(dir));
    for (const std::string& f : files) {
      ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(f));
      files_.push_back(std::move(file));
    }
    return absl::OkStatus();
  }
  const SafetensorsEntry* Find(const std::string& name, std::string* where = nullptr) const {
    for (const auto& f : files_) {
      if (auto it = f->tensors().find(name); it != f->tensors().end()) {
        if (where) *where = f->path();
        return &it->second;
      }
    }
    return nullptr;
  }
  absl::StatusOr<const SafetensorsEntry*> Need(const std::string& name, DType dtype) const {
    const SafetensorsEntry* e = Find(name);
    if (e == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("4-bit checkpoint lacks tensor '", name, "'"));
    if (e->dtype != dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' has dtype ", DTypeName(e->dtype), ", expected ", DTypeName(dtype)));
    }
    return e;
  }
  std::set<std::string> AllNames() const {
    std::set<std::string> out;
    for (const auto& f : files_)
      for (const auto& [n, e] : f->tensors()) out.insert(n);
    return out;
  }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
};

template <typename T>
std::vector<T> Copy(const SafetensorsEntry& e) {
  std::vector<T> v(e.bytes / sizeof(T));
  std::memcpy(v.data(), e.data, e.bytes);
  return v;
}

absl::StatusOr<Nf4Tensor> LoadQuantized(const ShardSet& shards, const std::string& name,
                                        const std::vector<int64_t>& expected_shape) {
  ASSIGN_OR_RETURN(const SafetensorsEntry* state_e,
                   shards.Need(name + kQuantStateSuffix, DType::kU8));
  const std::string state_text(reinterpret_cast<const char*>(state_e->data), state_e->bytes);
  nlohmann::json st = nlohmann::json::parse(state_text, nullptr, false);
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(name, kQuantStateSuffix, ": ", what));
  };
  if (st.is_discarded() || !st.is_object()) return bad("not JSON");
  const JsonFields f(st, name + kQuantStateSuffix);
  std::string quant_type;
  RETURN_IF_ERROR(f.Text("quant_type", &quant_type));
  if (quant_type != "nf4") return bad("quant_type must be 'nf4'");
  int64_t blocksize = 0, nested_blocksize = 256;
  RETURN_IF_ERROR(f.Int("blocksize", true, &blocksize));
  if (blocksize <= 0 || blocksize > 4096) return bad("blocksize must be from 1 to 4096");
  // The shape is compared with the one config.json implies, not read: any other is refused.
  if (!st.contains("shape") || st["shape"] != nlohmann::json(expected_shape)) {
    return bad("shape differs from what config.json implies");
  }
  Nf4Tensor t;
  t.shape = expected_shape;
  t.numel = 1;
  for (int64_t d : t.shape) t.numel *= d;
  t.blocksize = static_cast<int>(blocksize);
  ASSIGN_OR_RETURN(const SafetensorsEntry* packed, shards.Need(name, DType::kU8));
  t.packed = Copy<uint8_t>(*packed);
  ASSIGN_OR_RETURN(const SafetensorsEntry* qmap, shards.Need(name + ".quant_map", DType::kF32));
  const std::vector<float> code = Copy<float>(*qmap);
  if (code.size() != 16 || std::memcmp(code.data(), kernels::kNf4Code.data(), 64) != 0) {
    return bad("quant_map is not the NF4 code");
  }
  t.double_quant = f.Has("nested_offset");
  if (t.double_quant) {
    RETURN_IF_ERROR(f.Number("nested_offset", true, &t.offset));
    RETURN_IF_ERROR(f.Int("nested_blocksize", false, &nested_blocksize));
    if (nested_blocksize <= 0 || nested_blocksize > 4096) {
      return bad("nested_blocksize must be from 1 to 4096");
    }
    t.nested_blocksize = static_cast<int>(nested_blocksize);
    ASSIGN_OR_RETURN(const SafetensorsEntry* aq, shards.Need(name + ".absmax", DType::kU8));
    t.absmax_q = Copy<uint8_t>(*aq);
    ASSIGN_OR_RETURN(const SafetensorsEntry* na, shards.Need(name + ".nested_absmax", DType::kF32));
    t.nested_absmax = Copy<float>(*na);
    ASSIGN_OR_RETURN(const SafetensorsEntry* nmap,
                     shards.Need(name + ".nested_quant_map", DType::kF32));
    const std::vector<float> map8 = Copy<float>(*nmap);
    if (map8.size() != 256 ||
        std::memcmp(map8.data(), kernels::SignedDynamicMap().data(), 1024) != 0) {
      return bad("nested_quant_map is not bitsandbytes' signed dynamic map");
    }
  } else {
    ASSIGN_OR_RETURN(const SafetensorsEntry* am, shards.Need(name + ".absmax", DType::kF32));
    t.absmax = Copy<float>(*am);
  }
  if (auto s = t.Validate(); !s.ok()) return bad(std::string(s.message()));
  return t;
}

}  // namespace

absl::StatusOr<bool> IsNf4Checkpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(nlohmann::json j, ReadConfigJson(dir));
  if (!j.contains("quantization_config")) return false;
  const auto& q = j["quantization_config"];
  if (!q.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/config.json: quantization_config is not an object"));
  }
  const JsonFields f(q, dir + "/config.json", "quantization_config.");
  std::string method, quant_type = "nf4";
  bool four_bit = false;
  RETURN_IF_ERROR(f.Text("quant_method", &method));
  RETURN_IF_ERROR(f.Flag("load_in_4bit", &four_bit));
  RETURN_IF_ERROR(f.Text("bnb_4bit_quant_type", &quant_type));
  if (method != "bitsandbytes") {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/config.json: quantization_config is not a bitsandbytes one"));
  }
  if (!four_bit || quant_type != "nf4") {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/config.json: only bitsandbytes 4-bit NF4 checkpoints are supported"));
  }
  return true;
}

absl::StatusOr<Nf4Checkpoint> LoadNf4Checkpoint(const std::string& dir) {
  Nf4Checkpoint ck;
  ASSIGN_OR_RETURN(ck.weights.config, LoadHfConfig(dir));
  ShardSet shards;
  RETURN_IF_ERROR(shards.Open(dir));
  std::set<std::string> used;
  for (const TensorSlot& slot : TensorSlots(ck.weights)) {
    if (slot.is_linear) {
      auto t = LoadQuantized(shards, slot.name, slot.shape);
      if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(dir, ": ", t.status().message()));
      for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                 kQuantStateSuffix}) {
        used.insert(slot.name + suffix);
      }
      ck.quantized[slot.name] = std::move(*t);
      continue;
    }
    std::string where;
    const SafetensorsEntry* e = shards.Find(slot.name, &where);
    if (e == nullptr)
      return absl::InvalidArgumentError(absl::StrCat(dir, ": missing tensor '", slot.name, "'"));
    if (e->shape != slot.shape)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor '", slot.name, "' has the wrong shape"));
    ASSIGN_OR_RETURN(*slot.data, EntryToF32(*e, slot.name));
    used.insert(slot.name);
  }
  for (const std::string& name : shards.AllNames()) {
    if (used.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == "lm_head.weight" && ck.weights.config.tie_word_embeddings) continue;
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": unexpected tensor '", name, "' in a 4-bit LLaMA checkpoint"));
  }
  return ck;
}

absl::StatusOr<std::map<std::string, Nf4Tensor>> SaveNf4Checkpoint(
    LlamaWeights& weights, const std::string& tokenizer_proto, const std::string& dir,
    const Nf4Options& options) {
  RETURN_IF_ERROR(ValidateWeights(weights));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::map<std::string, Nf4Tensor> quantized;
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  for (const TensorSlot& slot : TensorSlots(weights)) {
    if (!slot.is_linear) {
      w.AddF32(slot.name, slot.shape, *slot.data);
      continue;
    }
    ASSIGN_OR_RETURN(Nf4Tensor t, QuantizeNf4(slot.data->data(), slot.shape, options));
    const std::string& n = slot.name;
    w.Add(n, DType::kU8, {static_cast<int64_t>(t.packed.size()), 1}, t.packed.data(),
          t.packed.size());
    nlohmann::ordered_json state = {{"quant_type", "nf4"},
                                    {"blocksize", t.blocksize},
                                    {"dtype", "float32"},
                                    {"shape", t.shape}};
    if (t.double_quant) {
      w.Add(n + ".absmax", DType::kU8, {static_cast<int64_t>(t.absmax_q.size())}, t.absmax_q.data(),
            t.absmax_q.size());
      state["nested_blocksize"] = t.nested_blocksize;
      state["nested_dtype"] = "float32";
      state["nested_offset"] = t.offset;
    } else {
      w.Add(n + ".absmax", DType::kF32, {static_cast<int64_t>(t.absmax.size())}, t.absmax.data(),
            t.absmax.size() * 4);
    }
    w.Add(n + ".quant_map", DType::kF32, {16}, kernels::kNf4Code.data(), 64);
    if (t.double_quant) {
      w.Add(n + ".nested_absmax", DType::kF32, {static_cast<int64_t>(t.nested_absmax.size())},
            t.nested_absmax.data(), t.nested_absmax.size() * 4);
      w.Add(n + ".nested_quant_map", DType::kF32, {256}, kernels::SignedDynamicMap().data(), 1024);
    }
    const std::string json = state.dump();
    w.Add(n + kQuantStateSuffix, DType::kU8, {static_cast<int64_t>(json.size())}, json.data(),
          json.size());
    quantized[n] = std::move(t);
  }
  RETURN_IF_ERROR(w.WriteTo((fs::path(dir) / "model.safetensors").string()));
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(LlamaConfigToJson(weights.config));
  config["quantization_config"] = {
      {"quant_method", "bitsandbytes"},
      {"load_in_4bit", true},
      {"load_in_8bit", false},
      {"bnb_4bit_quant_type", "nf4"},
      {"bnb_4bit_use_double_quant", options.double_quant},
      {"bnb_4bit_compute_dtype", "float32"},
      {"bnb_4bit_quant_storage", "uint8"},
      {"llm_int8_skip_modules", {"lm_head"}},
  };
  RETURN_IF_ERROR(
      WriteStringToFile((fs::path(dir) / "config.json").string(), config.dump(2) + "\n"));
  if (!tokenizer_proto.empty()) {
    RETURN_IF_ERROR(
        WriteStringToFile((fs::path(dir) / "tokenizer.model").string(), tokenizer_proto));
  }
  return quantized;
}

}  // namespace qlorad
