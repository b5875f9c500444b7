#include "server/core/dataset_store.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/dataset.h"
#include "engine/status_macros.h"
#include "server/core/ids.h"
#include "server/core/record_layout.h"
#include "server/core/tenants.h"
#include "server/core/timestamps.h"

namespace qlorad::core {
namespace {

using storage::Family;
using storage::StoreKey;

absl::StatusOr<v1::Dataset> ParseMeta(std::string_view bytes) {
  v1::Dataset d;
  if (!d.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("a stored dataset record does not parse");
  }
  return d;
}

}  // namespace

DatasetStore::Upload::~Upload() {
  absl::MutexLock lock(&store_->upload_mu_);
  if ((store_->in_flight_[tenant_] -= taken_) <= 0) store_->in_flight_.erase(tenant_);
}

absl::Status DatasetStore::Upload::Grow(int64_t bytes) {
  absl::MutexLock lock(&store_->upload_mu_);
  int64_t& in_flight = store_->in_flight_[tenant_];
  const int64_t others = in_flight - taken_;
  const int64_t room = std::min(max_upload_bytes_, max_total_bytes_ - used_ - others);
  if (taken_ + bytes > room) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the upload exceeds the ", std::max<int64_t>(room, 0), " bytes left of tenant '", tenant_,
        "' (dataset quota ", max_total_bytes_, ", ", used_, " bytes stored, ", others,
        " in other uploads in progress; per-upload limit ", max_upload_bytes_, ")"));
  }
  taken_ += bytes;
  in_flight += bytes;
  return absl::OkStatus();
}

namespace {

absl::Status DatasetLimitReached(int64_t held, int64_t max_datasets) {
  return absl::ResourceExhaustedError(absl::StrCat("dataset limit reached: ", held, " of ",
                                                   max_datasets, "; delete a dataset first"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DatasetStore::Upload>> DatasetStore::StartUpload(
    const std::string& tenant, int64_t max_total_bytes, int64_t max_upload_bytes,
    int64_t max_datasets) {
  ASSIGN_OR_RETURN(const Usage usage, UsageOf(tenant));
  if (usage.datasets >= max_datasets) return DatasetLimitReached(usage.datasets, max_datasets);
  const int64_t used = usage.bytes;
  return std::unique_ptr<Upload>(new Upload(this, tenant, used, max_total_bytes, max_upload_bytes));
}

absl::StatusOr<v1::Dataset> DatasetStore::Create(const std::string& tenant, const std::string& name,
                                                 const std::string& content,
                                                 int64_t max_total_bytes, int64_t max_datasets) {
  if (name.size() > 256 || std::any_of(name.begin(), name.end(), [](char c) {
        return absl::ascii_iscntrl(static_cast<unsigned char>(c));
      })) {
    return absl::InvalidArgumentError(
        "name: at most 256 bytes of text, without control characters");
  }
  // Validate everything first: a bad upload stores nothing, and its error names every bad line
  // (the first ten of them).
  int64_t examples = 0, line_no = 0;
  BadLines bad("");
  for (absl::string_view raw : absl::StrSplit(content, '\n')) {
    ++line_no;
    std::string line(raw);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (auto s = ValidateExampleJson(line); !s.ok()) bad.Add(line_no, s.message());
    ++examples;
  }
  RETURN_IF_ERROR(bad.ToStatus());
  if (examples == 0) return absl::InvalidArgumentError("the dataset has no examples");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const Usage usage, UsageOf(tenant));
  if (usage.datasets >= max_datasets) return DatasetLimitReached(usage.datasets, max_datasets);
  const int64_t used = usage.bytes;
  const int64_t size = static_cast<int64_t>(content.size());
  if (used + size > max_total_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("dataset quota exceeded: ", used,
                                                     " bytes stored + ", size,
                                                     " uploaded > limit of ", max_total_bytes));
  }
  v1::Dataset d;
  d.set_id(NewId("ds"));
  d.set_name(name);
  d.set_examples(examples);
  d.set_bytes(size);
  d.set_sha256(Sha256Hex(content));
  *d.mutable_create_time() = NowTimestamp();
  ASSIGN_OR_RETURN(std::string meta_key, MetaKey(tenant, d.id()));
  ASSIGN_OR_RETURN(std::string data_key, StoreKey({tenant, d.id(), "data"}));
  storage::WriteSet w;
  w.Put(Family::kDatasets, meta_key, d.SerializeAsString());
  w.Put(Family::kDatasets, data_key, content);
  RETURN_IF_ERROR(db_->Write(w));
  return d;
}

absl::StatusOr<v1::Dataset> DatasetStore::Get(const std::string& tenant,
                                              const std::string& id) const {
  auto key = MetaKey(tenant, id);
  if (!key.ok()) return absl::NotFoundError(absl::StrCat("no dataset ", id));
  auto bytes = db_->Get(Family::kDatasets, *key);
  if (absl::IsNotFound(bytes.status())) return absl::NotFoundError(absl::StrCat("no dataset ", id));
  if (!bytes.ok()) return bytes.status();
  return ParseMeta(*bytes);
}

absl::StatusOr<std::string> DatasetStore::Content(const std::string& tenant,
                                                  const std::string& id) const {
  RETURN_IF_ERROR(Get(tenant, id).status());
  ASSIGN_OR_RETURN(std::string key, StoreKey({tenant, id, "data"}));
  return db_->Get(Family::kDatasets, key);
}

absl::StatusOr<std::vector<v1::Dataset>> DatasetStore::List(const std::string& tenant) const {
  ASSIGN_OR_RETURN(const std::string prefix, MetaPrefix(tenant));
  std::vector<v1::Dataset> out;
  absl::Status error;
  RETURN_IF_ERROR(
      db_->Scan(Family::kDatasets, prefix, [&](std::string_view, std::string_view value) {
        auto d = ParseMeta(value);
        if (!d.ok()) {
          error = d.status();
          return false;
        }
        out.push_back(std::move(*d));
        return true;
      }));
  RETURN_IF_ERROR(error);
  return out;
}

absl::Status DatasetStore::Delete(const std::string& tenant, const std::string& id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Get(tenant, id).status());
  ASSIGN_OR_RETURN(std::string prefix, StoreKey({tenant, id}));
  ASSIGN_OR_RETURN(std::string meta_key, MetaKey(tenant, id));
  storage::WriteSet w;
  w.Delete(Family::kDatasets, meta_key);
  w.DeletePrefix(Family::kDatasets, prefix + "/");
  return db_->Write(w);
}

absl::StatusOr<DatasetStore::Usage> DatasetStore::UsageOf(const std::string& tenant) const {
  ASSIGN_OR_RETURN(const std::vector<v1::Dataset> all, List(tenant));
  Usage usage;
  usage.datasets = static_cast<int64_t>(all.size());
  for (const v1::Dataset& d : all) usage.bytes += d.bytes();
  return usage;
}

}  // namespace qlorad::core
