#include "engine/hf_model_io.h"

#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace fs = std::filesystem;

absl::StatusOr<LlamaConfig> LoadHfConfig(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseLlamaConfig(text, path);
}

absl::StatusOr<std::vector<std::string>> HfSafetensorsFiles(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(single)) return std::vector<std::string>{single.string()};
  if (!fs::exists(index)) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json exists"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index.string()));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index.string(), ": missing object 'weight_map'"));
  }
  std::set<std::string> files;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string() || absl::StrContains(file.get<std::string>(), "/")) {
      return absl::InvalidArgumentError(
          absl::StrCat(index.string(), ": bad shard file for tensor '", name, "'"));
    }
    files.insert((fs::path(dir) / file.get<std::string>()).string());
  }
  return std::vector<std::string>(files.begin(), files.end());
}

absl::StatusOr<LlamaWeights> LoadHfWeights(const std::string& dir) {
  LlamaWeights w;
  ASSIGN_OR_RETURN(w.config, LoadHfConfig(dir));
  ASSIGN_OR_RETURN(std::vector<std::string> files, HfSafetensorsFiles(dir));
  std::vector<std::unique_ptr<SafetensorsFile>> opened;
  std::map<std::string, std::pair<const SafetensorsEntry*, std::string>> entries;
  for (const std::string& f : files) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(f));
    for (const auto& [name, e] : file->tensors()) {
      if (entries.count(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name, "' appears in both ", entries[name].second, " and ", f));
      }
      entries[name] = {&e, f};
    }
    opened.push_back(std::move(file));
  }
  std::set<std::string> used;
  for (const TensorSlot& slot : TensorSlots(w)) {
    auto it = entries.find(slot.name);
    if (it == entries.end()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": missing tensor '", slot.name, "'"));
    }
    const SafetensorsEntry& e = *it->second.first;
    if (e.shape != slot.shape) {
      auto fmt = [](const std::vector<int64_t>& s) {
        std::string out = "[";
        for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
        return out + "]";
      };
      return absl::InvalidArgumentError(absl::StrCat(it->second.second, ": tensor '", slot.name,
                                                     "' has shape ", fmt(e.shape),
                                                     ", config.json implies ", fmt(slot.shape)));
    }
    auto values = EntryToF32(e, slot.name);
    if (!values.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(it->second.second, ": ", values.status().message()));
    *slot.data = std::move(*values);
    used.insert(slot.name);
  }
  for (const auto& [name, where] : entries) {
    if (used.count(name) || absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && w.config.tie_word_embeddings) continue;
    return absl::InvalidArgumentError(absl::StrCat(where.second, ": unexpected tensor '", name,
                                                   "' for a LLaMA-architecture model"));
  }
  return w;
}

absl::Status SaveHfModel(LlamaWeights& weights, const std::string& tokenizer_proto,
                         const std::string& dir, DType dtype) {
  RETURN_IF_ERROR(ValidateWeights(weights));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  LlamaConfig config = weights.config;
  config.torch_dtype = dtype == DType::kF32   ? "float32"
                       : dtype == DType::kF16 ? "float16"
                                              : "bfloat16";
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (const TensorSlot& slot : TensorSlots(weights))
    writer.AddF32As(slot.name, dtype, slot.shape, *slot.data);
  RETURN_IF_ERROR(writer.WriteTo((fs::path(dir) / "model.safetensors").string()));
  RETURN_IF_ERROR(
      WriteStringToFile((fs::path(dir) / "config.json").string(), LlamaConfigToJson(config)));
  if (!tokenizer_proto.empty()) {
    RETURN_IF_ERROR(
        WriteStringToFile((fs::path(dir) / "tokenizer.model").string(), tokenizer_proto));
  }
  return absl::OkStatus();
}

}  // namespace qlorad
