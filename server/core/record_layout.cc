#include "server/core/record_layout.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/status_macros.h"

namespace qlorad::core {
namespace {

using storage::Family;
using storage::StoreKey;

constexpr const char* kLayoutVersion = "2";
constexpr size_t kBatch = 256;

absl::StatusOr<std::string> MarkerKey(Family f) {
  return StoreKey({"record-layout", storage::FamilyName(f)});
}

}  // namespace

absl::StatusOr<std::string> MetaKey(const std::string& tenant, const std::string& id) {
  return StoreKey({tenant, "meta", id});
}

absl::StatusOr<std::string> MetaPrefix(const std::string& tenant) {
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, "meta"}));
  return prefix + "/";
}

absl::StatusOr<int64_t> MigrateRecordLayout(storage::KvStore* db, Family f) {
  ASSIGN_OR_RETURN(const std::string marker, MarkerKey(f));
  auto done = db->Get(Family::kMeta, marker);
  if (done.ok() && *done == kLayoutVersion) return 0;
  if (!done.ok() && !absl::IsNotFound(done.status())) return done.status();
  // The old layout's metadata keys: exactly "<tenant>/<id>/meta".
  std::vector<std::pair<std::string, std::string>> old;
  RETURN_IF_ERROR(db->Scan(f, "", [&](std::string_view key, std::string_view value) {
    const std::vector<std::string> parts = absl::StrSplit(std::string(key), '/');
    if (parts.size() == 3 && parts[2] == "meta" && parts[1] != "meta") {
      old.emplace_back(std::string(key), std::string(value));
    }
    return true;
  }));
  int64_t moved = 0;
  for (size_t begin = 0; begin < old.size(); begin += kBatch) {
    storage::WriteSet w;
    for (size_t i = begin; i < old.size() && i < begin + kBatch; ++i) {
      const std::vector<std::string> parts = absl::StrSplit(old[i].first, '/');
      ASSIGN_OR_RETURN(std::string key, MetaKey(parts[0], parts[1]));
      w.Put(f, key, old[i].second);
      w.Delete(f, old[i].first);
      ++moved;
    }
    RETURN_IF_ERROR(db->Write(w));
  }
  RETURN_IF_ERROR(db->Put(Family::kMeta, marker, kLayoutVersion));
  return moved;
}

}  // namespace qlorad::core
