#include "engine/peft_adapter.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/json_fields.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "kernels/cpu/gemm.h"
#include "nlohmann/json.hpp"

namespace qlorad {
namespace fs = std::filesystem;

std::string PeftKey(int64_t layer, int module, bool is_a) {
  return absl::StrCat("base_model.model.", LinearModulePath(layer, kLinearModuleNames[module]),
                      is_a ? ".lora_A.weight" : ".lora_B.weight");
}

absl::Status SavePeftAdapter(const std::string& dir, const LlamaConfig& model,
                             const LoraConfig& lora, const std::vector<float>& params,
                             const PeftExportOptions& options) {
  RETURN_IF_ERROR(lora.Validate());
  const LoraLayout layout(model, lora);
  if (static_cast<int64_t>(params.size()) != layout.num_params()) {
    return absl::InvalidArgumentError("adapter parameter count does not match its layout");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  for (const LoraSlot& s : layout.slots()) {
    const float* base = params.data();
    w.Add(PeftKey(s.layer, s.module, true), DType::kF32, {lora.rank, s.in}, base + s.a_offset,
          lora.rank * s.in * 4);
    w.Add(PeftKey(s.layer, s.module, false), DType::kF32, {s.out, lora.rank}, base + s.b_offset,
          s.out * lora.rank * 4);
  }
  float alpha = lora.alpha;
  bool rslora = lora.use_rslora;
  if (options.rewrite_rslora_alpha && rslora) {
    alpha = LoraConfig::PlainAlpha(lora.alpha, lora.rank);
    rslora = false;
  }
  nlohmann::ordered_json cfg = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", options.base_model_name_or_path},
      {"r", lora.rank},
      {"lora_alpha", alpha},
      {"lora_dropout", lora.dropout},
      {"target_modules", lora.target_modules},
      {"bias", "none"},
      {"use_rslora", rslora},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"modules_to_save", nullptr},
  };
  RETURN_IF_ERROR(w.WriteTo((fs::path(dir) / "adapter_model.safetensors").string()));
  return WriteStringToFile(
      (fs::path(dir) / "adapter_config.json").string(),
      cfg.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

absl::StatusOr<PeftAdapter> LoadPeftAdapter(const std::string& dir, const LlamaConfig& model) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(cfg_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": ", what));
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  const JsonFields f(j, cfg_path);
  std::string peft_type;
  RETURN_IF_ERROR(f.Text("peft_type", &peft_type));
  if (peft_type != "LORA") return bad("peft_type must be LORA");
  PeftAdapter a;
  RETURN_IF_ERROR(f.Int("r", true, &a.config.rank));
  RETURN_IF_ERROR(f.Number("lora_alpha", true, &a.config.alpha));
  a.config.dropout = 0.0f;  // PEFT's default
  RETURN_IF_ERROR(f.Number("lora_dropout", false, &a.config.dropout));
  RETURN_IF_ERROR(f.Flag("use_rslora", &a.config.use_rslora));
  std::string bias = "none";
  RETURN_IF_ERROR(f.Text("bias", &bias));
  if (bias != "none") return bad("only bias 'none' is supported");
  bool fan_in_fan_out = false, dora = false;
  RETURN_IF_ERROR(f.Flag("fan_in_fan_out", &fan_in_fan_out));
  if (fan_in_fan_out) return bad("fan_in_fan_out adapters are not supported");
  RETURN_IF_ERROR(f.Flag("use_dora", &dora));
  if (dora) return bad("DoRA adapters (use_dora) are not supported");
  // Per-module ranks or scales: every module here has the one r and lora_alpha. A scale pattern
  // would otherwise be read silently with the wrong scale.
  for (const char* pattern : {"rank_pattern", "alpha_pattern"}) {
    if (j.contains(pattern) && !j[pattern].is_null() && !j[pattern].empty()) {
      return bad(absl::StrCat("field '", pattern,
                              "' is not supported (one r and lora_alpha for every module)"));
    }
  }
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    return bad("field 'layers_to_transform' is not supported (every layer is adapted)");
  }
  const auto& tm = j.contains("target_modules") ? j["target_modules"] : nlohmann::json();
  if (tm.is_string()) {
    auto parsed = ParseTargetModules(tm.get<std::string>() == "all-linear" ? "all-linear"
                                                                           : tm.get<std::string>());
    if (!parsed.ok()) return bad(std::string(parsed.status().message()));
    a.config.target_modules = *parsed;
  } else if (tm.is_array()) {
    a.config.target_modules.clear();
    // Keep the canonical module order whatever order the file lists them in.
    std::set<std::string> listed;
    for (const auto& m : tm) {
      if (!m.is_string()) return bad("target_modules must hold strings");
      listed.insert(m.get<std::string>());
    }
    for (const char* name : kLinearModuleNames) {
      if (listed.erase(name)) a.config.target_modules.push_back(name);
    }
    if (!listed.empty())
      return bad(absl::StrCat("unsupported target module '", *listed.begin(), "'"));
  } else {
    return bad("field 'target_modules' must be a list");
  }
  if (auto s = a.config.Validate(); !s.ok()) return bad(std::string(s.message()));
  const LoraLayout layout(model, a.config);
  a.params.assign(layout.num_params(), 0.0f);
  ASSIGN_OR_RETURN(auto file,
                   SafetensorsFile::Open((fs::path(dir) / "adapter_model.safetensors").string()));
  std::set<std::string> used;
  for (const LoraSlot& s : layout.slots()) {
    for (const bool is_a : {true, false}) {
      const std::string key = PeftKey(s.layer, s.module, is_a);
      const std::vector<int64_t> shape = is_a ? std::vector<int64_t>{a.config.rank, s.in}
                                              : std::vector<int64_t>{s.out, a.config.rank};
      auto e = file->Get(key);
      if (!e.ok())
        return absl::InvalidArgumentError(absl::StrCat(dir, ": missing tensor '", key, "'"));
      if ((*e)->shape != shape) {
        return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor '", key,
                                                       "' has the wrong shape for rank ",
                                                       a.config.rank, " on this model"));
      }
      ASSIGN_OR_RETURN(std::vector<float> v, EntryToF32(**e, key));
      std::copy(v.begin(), v.end(), a.params.begin() + (is_a ? s.a_offset : s.b_offset));
      used.insert(key);
    }
  }
  for (const auto& [name, e] : file->tensors()) {
    if (!used.count(name))
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": unexpected tensor '", name,
                       "' (only LoRA A/B of the listed target modules are supported)"));
  }
  return a;
}

absl::Status MergeAdapter(LlamaWeights& weights, const LoraConfig& lora,
                          const std::vector<float>& params) {
  RETURN_IF_ERROR(ValidateWeights(weights));
  const LoraLayout layout(weights.config, lora);
  if (static_cast<int64_t>(params.size()) != layout.num_params()) {
    return absl::InvalidArgumentError("adapter parameter count does not match the model");
  }
  for (const LoraSlot& s : layout.slots()) {
    LlamaLayerWeights& L = weights.layers[s.layer];
    std::vector<float>* targets[7] = {&L.q_proj,    &L.k_proj,  &L.v_proj,   &L.o_proj,
                                      &L.gate_proj, &L.up_proj, &L.down_proj};
    // W [out, in] += s * B [out, r] A [r, in].
    kernels::GemmF32(false, false, s.out, s.in, lora.rank, lora.scale(), params.data() + s.b_offset,
                     lora.rank, params.data() + s.a_offset, s.in, 1.0f, targets[s.module]->data(),
                     s.in);
  }
  return absl::OkStatus();
}

}  // namespace qlorad
