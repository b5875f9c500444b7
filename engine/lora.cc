#include "engine/lora.h"

#include <cmath>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/llama_weights.h"

namespace qlorad {
namespace {

int ModuleIndex(const std::string& name) {
  for (int i = 0; i < 7; ++i) {
    if (name == kLinearModuleNames[i]) return i;
  }
  return -1;
}

}  // namespace

float LoraConfig::PlainAlpha(float rslora_alpha, int64_t rank) {
  return rslora_alpha * std::sqrt(static_cast<float>(rank));
}

float LoraConfig::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<float>(rank))
                    : alpha / static_cast<float>(rank);
}

absl::Status LoraConfig::Validate() const {
  if (rank <= 0)
    return absl::InvalidArgumentError(absl::StrCat("rank must be positive, got ", rank));
  if (!(alpha > 0.0f) || !std::isfinite(alpha)) {
    return absl::InvalidArgumentError(absl::StrCat("alpha must be positive, got ", alpha));
  }
  if (!(dropout >= 0.0f && dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("dropout must be in [0, 1), got ", dropout));
  }
  if (target_modules.empty()) return absl::InvalidArgumentError("target_modules is empty");
  std::set<std::string> seen;
  for (const std::string& m : target_modules) {
    if (ModuleIndex(m) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target module '", m,
          "' is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
    }
    if (!seen.insert(m).second)
      return absl::InvalidArgumentError(absl::StrCat("target module '", m, "' is listed twice"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ParseTargetModules(const std::string& spec) {
  if (spec == "all-linear") return LoraConfig().target_modules;
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    std::string name(absl::StripAsciiWhitespace(part));
    if (name.empty()) continue;
    if (ModuleIndex(name) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown target module '", name,
                       "' (use all-linear or a list of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                       "up_proj, down_proj)"));
    }
    out.push_back(name);
  }
  if (out.empty()) return absl::InvalidArgumentError("no target modules given");
  return out;
}

std::pair<int64_t, int64_t> LinearShape(const LlamaConfig& c, int module) {
  const int64_t h = c.hidden_size, kv = c.kv_dim(), im = c.intermediate_size;
  switch (module) {
    case 0:
      return {h, h};  // q_proj
    case 1:
      return {h, kv};  // k_proj
    case 2:
      return {h, kv};  // v_proj
    case 3:
      return {h, h};  // o_proj
    case 4:
      return {h, im};  // gate_proj
    case 5:
      return {h, im};  // up_proj
    default:
      return {im, h};  // down_proj
  }
}

LoraLayout::LoraLayout(const LlamaConfig& model, const LoraConfig& lora) {
  std::array<bool, 7> targeted{};
  for (const std::string& m : lora.target_modules) {
    if (int i = ModuleIndex(m); i >= 0) targeted[i] = true;
  }
  index_.assign(model.num_hidden_layers, std::array<int, 7>{-1, -1, -1, -1, -1, -1, -1});
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    for (int m = 0; m < 7; ++m) {
      if (!targeted[m]) continue;
      const auto [in, out] = LinearShape(model, m);
      LoraSlot s{l, m, in, out, num_params_, num_params_ + lora.rank * in};
      num_params_ += lora.rank * (in + out);
      index_[l][m] = static_cast<int>(slots_.size());
      slots_.push_back(s);
    }
  }
}

const LoraSlot* LoraLayout::Find(int64_t layer, int module) const {
  const int i = index_[layer][module];
  return i < 0 ? nullptr : &slots_[i];
}

std::vector<float> InitLoraParams(const LoraLayout& layout, const LoraConfig& lora) {
  std::vector<float> params(layout.num_params(), 0.0f);  // B = 0
  std::mt19937_64 rng(lora.seed);
  for (const LoraSlot& s : layout.slots()) {
    // Kaiming-uniform with a = sqrt(5): bound = 1/sqrt(fan_in). 24 random bits per value so
    // the stream is the same with every standard library.
    const float bound = 1.0f / std::sqrt(static_cast<float>(s.in));
    for (int64_t i = 0; i < lora.rank * s.in; ++i) {
      const float u = static_cast<float>(rng() >> 40) * (1.0f / 16777216.0f);
      params[s.a_offset + i] = (2.0f * u - 1.0f) * bound;
    }
  }
  return params;
}

}  // namespace qlorad
