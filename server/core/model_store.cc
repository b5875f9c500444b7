#include "server/core/model_store.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/llama_weights.h"
#include "engine/model_source.h"
#include "engine/nf4_tensor.h"
#include "engine/status_macros.h"
#include "server/core/timestamps.h"

namespace qlorad::core {
namespace {

using storage::Family;

bool ValidModelName(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace

int64_t LoadedModelBytes(const LlamaConfig& c) {
  LlamaWeights shapes;
  shapes.config = c;
  int64_t bytes = 0;
  for (const TensorSlot& slot : TensorSlots(shapes)) {
    int64_t n = 1;
    for (int64_t d : slot.shape) n *= d;
    bytes += slot.is_linear ? Nf4StorageBytes(n) : 4 * n;
  }
  return bytes;
}

absl::StatusOr<v1::Model> ModelStore::Register(const std::string& name, const std::string& path) {
  if (!ValidModelName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model name '", name, "' must match [a-zA-Z0-9._-]{1,64}"));
  }
  absl::MutexLock lock(&mu_);
  if (auto existing = Get(name); existing.ok()) {
    if (existing->source_path() == path) return *existing;
    return absl::AlreadyExistsError(
        absl::StrCat("model '", name, "' is registered from ", existing->source_path()));
  } else if (!absl::IsNotFound(existing.status())) {
    // Unreadable is not absent: writing over it would move the jobs of a registered model.
    return existing.status();
  }
  auto src = OpenModelSource(path);
  if (!src.ok())
    return absl::InvalidArgumentError(
        absl::StrCat("cannot register '", name, "': ", src.status().message()));
  if (!src->tokenizer)
    return absl::InvalidArgumentError(
        absl::StrCat("cannot register '", name, "': ", path, " has no tokenizer"));
  const LlamaConfig& c = src->weights.config;
  v1::Model m;
  m.set_name(name);
  m.set_source_path(path);
  m.set_format(src->format);
  v1::ModelArchitecture* a = m.mutable_architecture();
  a->set_hidden_size(c.hidden_size);
  a->set_intermediate_size(c.intermediate_size);
  a->set_num_hidden_layers(c.num_hidden_layers);
  a->set_num_attention_heads(c.num_attention_heads);
  a->set_num_key_value_heads(c.num_key_value_heads);
  a->set_vocab_size(c.vocab_size);
  a->set_max_position_embeddings(c.max_position_embeddings);
  a->set_tie_word_embeddings(c.tie_word_embeddings);
  a->set_rope_theta(c.rope_theta);
  a->set_rms_norm_eps(c.rms_norm_eps);
  m.set_parameter_count(c.ParameterCount());
  m.set_quantized_bytes(LoadedModelBytes(c));
  *m.mutable_create_time() = NowTimestamp();
  RETURN_IF_ERROR(db_->Put(Family::kModels, name, m.SerializeAsString()));
  return m;
}

absl::StatusOr<v1::Model> ModelStore::Get(const std::string& name) const {
  auto bytes = db_->Get(Family::kModels, name);
  if (absl::IsNotFound(bytes.status()))
    return absl::NotFoundError(absl::StrCat("no model named '", name, "'"));
  if (!bytes.ok()) return bytes.status();
  v1::Model m;
  if (!m.ParseFromString(*bytes))
    return absl::DataLossError("a stored model record does not parse");
  return m;
}

absl::StatusOr<std::vector<v1::Model>> ModelStore::List() const {
  std::vector<v1::Model> out;
  bool ok = true;
  RETURN_IF_ERROR(db_->Scan(Family::kModels, "", [&](std::string_view, std::string_view value) {
    v1::Model m;
    ok = m.ParseFromArray(value.data(), static_cast<int>(value.size()));
    if (ok) out.push_back(std::move(m));
    return ok;
  }));
  if (!ok) return absl::DataLossError("a stored model record does not parse");
  return out;
}

absl::Status ModelStore::Delete(const std::string& name) {
  absl::MutexLock lock(&mu_);
  // A damaged record can be deleted: it is how the admin registers the name again.
  if (auto existing = Get(name); !existing.ok() && !absl::IsDataLoss(existing.status())) {
    return existing.status();
  }
  storage::WriteSet w;
  w.Delete(Family::kModels, name);
  return db_->Write(w);
}

}  // namespace qlorad::core
