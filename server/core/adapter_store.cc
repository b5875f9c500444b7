#include "server/core/adapter_store.h"

#include <filesystem>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"
#include "server/core/ids.h"
#include "server/core/record_layout.h"
#include "server/core/timestamps.h"

namespace qlorad::core {
namespace fs = std::filesystem;
namespace {

using storage::Family;
using storage::StoreKey;

constexpr const char* kPeftFiles[] = {"adapter_config.json", "adapter_model.safetensors"};
// Marks the quota's RESOURCE_EXHAUSTED apart from the store's (a full disk).
constexpr const char kQuotaPayload[] = "qlorad.dev/quota";

absl::StatusOr<v1::Adapter> ParseMeta(std::string_view bytes) {
  v1::Adapter a;
  if (!a.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("a stored adapter record does not parse");
  }
  return a;
}

}  // namespace

absl::StatusOr<v1::Adapter> AdapterStore::Create(const std::string& tenant, v1::Adapter meta,
                                                 const std::string& peft_dir,
                                                 int64_t max_adapters) {
  std::map<std::string, std::string> files;
  int64_t bytes = 0;
  for (const char* name : kPeftFiles) {
    ASSIGN_OR_RETURN(files[name], ReadFileToString((fs::path(peft_dir) / name).string()));
    bytes += static_cast<int64_t>(files[name].size());
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::vector<v1::Adapter> existing, List(tenant));
  if (static_cast<int64_t>(existing.size()) >= max_adapters) {
    absl::Status quota = absl::ResourceExhaustedError(
        absl::StrCat("adapter quota reached: ", existing.size(), " of ", max_adapters,
                     "; delete an adapter first"));
    quota.SetPayload(kQuotaPayload, absl::Cord("max_adapters"));
    return quota;
  }
  meta.set_id(NewId("ad"));
  meta.set_bytes(bytes);
  *meta.mutable_create_time() = NowTimestamp();
  storage::WriteSet w;
  ASSIGN_OR_RETURN(std::string meta_key, MetaKey(tenant, meta.id()));
  w.Put(Family::kAdapters, meta_key, meta.SerializeAsString());
  for (const auto& [name, data] : files) {
    ASSIGN_OR_RETURN(std::string key, StoreKey({tenant, meta.id(), "file", name}));
    w.Put(Family::kAdapters, key, data);
  }
  RETURN_IF_ERROR(db_->Write(w));
  return meta;
}

bool AdapterStore::IsQuotaError(const absl::Status& s) {
  return absl::IsResourceExhausted(s) && s.GetPayload(kQuotaPayload).has_value();
}

absl::StatusOr<v1::Adapter> AdapterStore::Get(const std::string& tenant,
                                              const std::string& id) const {
  auto key = MetaKey(tenant, id);
  if (!key.ok()) return absl::NotFoundError(absl::StrCat("no adapter ", id));
  auto bytes = db_->Get(Family::kAdapters, *key);
  if (absl::IsNotFound(bytes.status())) return absl::NotFoundError(absl::StrCat("no adapter ", id));
  if (!bytes.ok()) return bytes.status();
  return ParseMeta(*bytes);
}

absl::StatusOr<std::vector<v1::Adapter>> AdapterStore::List(const std::string& tenant) const {
  ASSIGN_OR_RETURN(const std::string prefix, MetaPrefix(tenant));
  std::vector<v1::Adapter> out;
  absl::Status error;
  RETURN_IF_ERROR(
      db_->Scan(Family::kAdapters, prefix, [&](std::string_view, std::string_view value) {
        auto a = ParseMeta(value);
        if (!a.ok()) {
          error = a.status();
          return false;
        }
        out.push_back(std::move(*a));
        return true;
      }));
  RETURN_IF_ERROR(error);
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> AdapterStore::Files(
    const std::string& tenant, const std::string& id) const {
  RETURN_IF_ERROR(Get(tenant, id).status());
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, id, "file"}));
  prefix += "/";
  std::map<std::string, std::string> files;
  RETURN_IF_ERROR(
      db_->Scan(Family::kAdapters, prefix, [&](std::string_view key, std::string_view value) {
        files[std::string(key.substr(prefix.size()))] = std::string(value);
        return true;
      }));
  // A delete between the record's read and the scan leaves a part or nothing: never handed out
  // as the adapter (a download that ends OK with no files).
  for (const char* name : kPeftFiles) {
    if (files.count(name) == 0) {
      RETURN_IF_ERROR(Get(tenant, id).status());
      return absl::DataLossError(absl::StrCat("adapter ", id, " has no stored ", name));
    }
  }
  return files;
}

absl::Status AdapterStore::ExportToDir(const std::string& tenant, const std::string& id,
                                       const std::string& dir) const {
  ASSIGN_OR_RETURN(auto files, Files(tenant, id));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  for (const auto& [name, data] : files) {
    RETURN_IF_ERROR(WriteStringToFile((fs::path(dir) / name).string(), data));
  }
  return absl::OkStatus();
}

absl::Status AdapterStore::Delete(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Get(tenant, id).status());
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, id}));
  ASSIGN_OR_RETURN(std::string meta_key, MetaKey(tenant, id));
  storage::WriteSet w;
  w.Delete(Family::kAdapters, meta_key);
  w.DeletePrefix(Family::kAdapters, prefix + "/");
  return db_->Write(w);
}

}  // namespace qlorad::core
