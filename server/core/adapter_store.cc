#include "server/core/adapter_store.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
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
    int64_t part = 0;
    size_t offset = 0;
    do {  // part 0 even of an empty file, so that every stored file has one
      const size_t n = std::min(kAdapterPartBytes, data.size() - offset);
      ASSIGN_OR_RETURN(std::string key, StoreKey({tenant, meta.id(), "file", name,
                                                  storage::SequenceKeyPart(part++)}));
      w.Put(Family::kAdapters, key, std::string_view(data).substr(offset, n));
      offset += n;
    } while (offset < data.size());
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

absl::Status AdapterStore::VisitFiles(const std::string& tenant, const std::string& id,
                                      const PartVisitor& visit) const {
  ASSIGN_OR_RETURN(const v1::Adapter meta, Get(tenant, id));
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, id, "file"}));
  prefix += "/";
  // Each part is visited once the key after it is seen, which tells whether it was its file's
  // last: the part held meanwhile is the most this holds. Each key is found by a scan of its
  // own, released before the visit: a download to a slow client must not hold an iterator,
  // which keeps RocksDB from reclaiming the files of whatever is deleted meanwhile.
  std::string held_name, held_data;
  int64_t held_part = -1;          // -1: none held
  int64_t bytes = 0;               // of the parts read
  std::vector<std::string> names;  // the files seen, in order
  auto missing = [&](const std::string& what) -> absl::Status {
    RETURN_IF_ERROR(Get(tenant, id).status());  // deleted meanwhile: NOT_FOUND, not a loss
    return absl::DataLossError(absl::StrCat("adapter ", id, " has no stored ", what));
  };
  std::string after;  // the last key read
  while (true) {
    bool found = false;
    std::string key, value;
    RETURN_IF_ERROR(db_->Scan(
        Family::kAdapters, prefix,
        [&](std::string_view k, std::string_view v) {
          found = true;
          key.assign(k);
          value.assign(v);
          return false;
        },
        after));
    if (!found) break;
    after = key;
    const std::string_view rest = std::string_view(key).substr(prefix.size());
    const size_t slash = rest.find('/');
    const std::string name(rest.substr(0, slash));
    int64_t part = 0;  // an adapter stored before parts: the whole file in one value
    if (slash != std::string_view::npos &&
        !absl::SimpleAtoi(absl::string_view(rest.data() + slash + 1, rest.size() - slash - 1),
                          &part)) {
      return absl::DataLossError(
          absl::StrCat("adapter ", id, ": a stored key ", key, " is not a file part"));
    }
    const bool same_file = held_part >= 0 && name == held_name;
    if (part != (same_file ? held_part + 1 : 0)) {
      return missing(absl::StrCat("part ", same_file ? held_part + 1 : 0, " of ", name));
    }
    if (held_part >= 0) RETURN_IF_ERROR(visit(held_name, held_data, /*last=*/!same_file));
    if (!same_file) names.push_back(name);
    held_name = name;
    held_data = std::move(value);
    held_part = part;
    bytes += static_cast<int64_t>(held_data.size());
  }
  // A delete between the record's read and the scans leaves a part or nothing: never handed
  // out as the adapter (a download that ends OK with no files, or cut short).
  for (const char* name : kPeftFiles) {
    if (std::find(names.begin(), names.end(), name) == names.end()) return missing(name);
  }
  // A file's last parts gone: no gap shows it. (A record without its size has 0: not checked.)
  if (meta.bytes() > 0 && bytes != meta.bytes()) {
    return missing(absl::StrCat("part of its files: ", bytes, " bytes of ", meta.bytes()));
  }
  return visit(held_name, held_data, /*last=*/true);
}

absl::StatusOr<std::map<std::string, std::string>> AdapterStore::Files(
    const std::string& tenant, const std::string& id) const {
  std::map<std::string, std::string> files;
  RETURN_IF_ERROR(VisitFiles(tenant, id, [&](const std::string& name, std::string_view data, bool) {
    files[name].append(data);
    return absl::OkStatus();
  }));
  return files;
}

absl::Status AdapterStore::ExportToDir(const std::string& tenant, const std::string& id,
                                       const std::string& dir) const {
  RETURN_IF_ERROR(Get(tenant, id).status());
  std::error_code ec;
  const bool made = fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::ofstream out;
  std::vector<std::string> written;
  absl::Status s = VisitFiles(
      tenant, id, [&](const std::string& name, std::string_view data, bool last) -> absl::Status {
        const std::string path = (fs::path(dir) / name).string();
        if (!out.is_open()) {
          out.open(path, std::ios::binary | std::ios::trunc);
          written.push_back(path);
        }
        out.write(data.data(), static_cast<std::streamsize>(data.size()));
        if (last) out.close();
        if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
        return absl::OkStatus();
      });
  if (!s.ok()) {  // a part missing shows only once the parts before it are written
    out.close();
    for (const std::string& path : written) fs::remove(path, ec);
    if (made) fs::remove_all(dir, ec);
  }
  return s;
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
