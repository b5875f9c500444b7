// Tenants and their API keys, from a JSON file. Keys are stored only as SHA-256 hashes:
//   {"tenants": [{"name": "acme", "key_sha256": "<64 hex>", "admin": false,
//                 "limits": {"max_concurrent_jobs": 2, "max_dataset_bytes": 268435456,
//                            "max_adapters": 100, "max_datasets": 1000}}]}
// Requests carry "authorization: Bearer <key>". Immutable after loading: thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qlorad::core {

struct TenantLimits {
  int64_t max_concurrent_jobs = 2;                 // queued + running
  int64_t max_dataset_bytes = int64_t{256} << 20;  // all datasets together
  int64_t max_adapters = 100;
  // Datasets kept: each upload and quota check reads every one's record, and ListDatasets
  // returns them all.
  int64_t max_datasets = 1000;
  // The highest job priority the tenant may ask for. Priority orders the node's queue before
  // fair share, so a tenant allowed more can go ahead of every other tenant's jobs: 0 by
  // default (a tenant can still lower its own jobs'), raised per tenant by the operator.
  int64_t max_priority = 0;
};

struct Tenant {
  std::string name;  // [a-z0-9_-]{1,64}: used in storage keys
  bool admin = false;
  TenantLimits limits;
};

class TenantRegistry {
 public:
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> FromJson(const std::string& text,
                                                                  const std::string& source);
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> FromFile(const std::string& path);

  // The tenant owning the bearer key in an "authorization" header value. UNAUTHENTICATED when
  // the header is missing, malformed or carries an unknown key (the message never echoes it).
  absl::StatusOr<const Tenant*> Authenticate(std::string_view authorization) const;
  const Tenant* Find(const std::string& name) const;
  size_t size() const { return by_name_.size(); }

 private:
  TenantRegistry() = default;
  std::map<std::string, Tenant> by_name_;
  std::map<std::string, std::string> name_by_hash_;  // hex SHA-256 of the key -> tenant name
};

// Lower-case hex SHA-256.
std::string Sha256Hex(std::string_view data);

}  // namespace qlorad::core
