// Key layout shared by the dataset and adapter stores. A tenant's metadata records live under
// "<tenant>/meta/<id>", apart from their bulky content under "<tenant>/<id>/...": a RocksDB
// iterator reads every value it passes, blob files included, so listing a tenant's adapters
// must not walk past their tensors. (Before this layout the metadata sat at "<tenant>/<id>/meta"
// and a listing read every stored byte of the tenant; MigrateRecordLayout moves such records.)
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "storage/kv_store.h"

namespace qlorad::core {

// "<tenant>/meta/<id>"; INVALID_ARGUMENT for an empty or slash-holding part.
absl::StatusOr<std::string> MetaKey(const std::string& tenant, const std::string& id);
// "<tenant>/meta/": every metadata record of the tenant, and nothing else.
absl::StatusOr<std::string> MetaPrefix(const std::string& tenant);

// Moves the metadata records of family `f` from "<tenant>/<id>/meta" to MetaKey, in atomic
// batches (each record's new key is written and its old one deleted together, so a crash
// loses nothing and a rerun finishes the move), then records that `f` is done in the meta
// family so that later starts skip the scan. Returns the number of records moved.
absl::StatusOr<int64_t> MigrateRecordLayout(storage::KvStore* db, storage::Family f);

}  // namespace qlorad::core
