#include "server/core/tenants.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/mapped_file.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlorad::core {
namespace {

bool ValidTenantName(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-' || c == '_')) return false;
  }
  return true;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  }
  return true;
}

}  // namespace

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::FromJson(
    const std::string& text, const std::string& source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("tenants") || !j["tenants"].is_array()) {
    return bad("expected {\"tenants\": [...]}");
  }
  auto reg = std::unique_ptr<TenantRegistry>(new TenantRegistry());
  for (size_t i = 0; i < j["tenants"].size(); ++i) {
    const auto& t = j["tenants"][i];
    const std::string where = absl::StrCat("tenants[", i, "]");
    if (!t.is_object()) return bad(absl::StrCat(where, " is not an object"));
    // Every field checked for its type (the JSON library would throw, ending the daemon without
    // naming the line) and unknown ones refused: a misspelt "is_admin" or a limit put beside
    // "limits" rather than in it would otherwise be ignored without a word.
    for (const auto& [key, value] : t.items()) {
      if (key != "name" && key != "key_sha256" && key != "admin" && key != "limits") {
        return bad(absl::StrCat(where, " has unknown field '", key,
                                "' (name, key_sha256, admin, limits)"));
      }
    }
    Tenant tenant;
    if (t.contains("name") && t["name"].is_string()) tenant.name = t["name"].get<std::string>();
    if (!ValidTenantName(tenant.name))
      return bad(absl::StrCat(where, ".name must be a string matching [a-z0-9_-]{1,64}"));
    const std::string hash = absl::AsciiStrToLower(
        t.contains("key_sha256") && t["key_sha256"].is_string() ? t["key_sha256"].get<std::string>()
                                                                : "");
    if (!IsHex64(hash))
      return bad(absl::StrCat(
          where, ".key_sha256 must be 64 hex digits (the key itself is never stored)"));
    if (t.contains("admin") && !t["admin"].is_boolean())
      return bad(absl::StrCat(where, ".admin must be true or false"));
    tenant.admin = t.contains("admin") && t["admin"].get<bool>();
    if (t.contains("limits")) {
      const auto& l = t["limits"];
      if (!l.is_object()) return bad(absl::StrCat(where, ".limits is not an object"));
      for (const auto& [key, value] : l.items()) {
        if (!value.is_number_integer() || value.get<int64_t>() < 0)
          return bad(absl::StrCat(where, ".limits.", key, " must be a non-negative integer"));
        if (key == "max_concurrent_jobs")
          tenant.limits.max_concurrent_jobs = value;
        else if (key == "max_dataset_bytes")
          tenant.limits.max_dataset_bytes = value;
        else if (key == "max_adapters")
          tenant.limits.max_adapters = value;
        else if (key == "max_datasets")
          tenant.limits.max_datasets = value;
        else if (key == "max_priority")
          tenant.limits.max_priority = value;
        else
          return bad(absl::StrCat(where, ".limits has unknown field '", key, "'"));
      }
    }
    if (reg->by_name_.count(tenant.name))
      return bad(absl::StrCat("tenant '", tenant.name, "' is listed twice"));
    if (reg->name_by_hash_.count(hash))
      return bad(absl::StrCat(where, " reuses another tenant's key"));
    reg->name_by_hash_[hash] = tenant.name;
    reg->by_name_[tenant.name] = std::move(tenant);
  }
  return reg;
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return FromJson(text, path);
}

absl::StatusOr<const Tenant*> TenantRegistry::Authenticate(std::string_view authorization) const {
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.empty())
    return absl::UnauthenticatedError("missing 'authorization: Bearer <key>' metadata");
  if (authorization.substr(0, kBearer.size()) != kBearer ||
      authorization.size() == kBearer.size()) {
    return absl::UnauthenticatedError("the authorization metadata must be 'Bearer <key>'");
  }
  const std::string hash = Sha256Hex(authorization.substr(kBearer.size()));
  // Compare against every stored hash in constant time, so timing reveals nothing.
  const Tenant* found = nullptr;
  for (const auto& [stored, name] : name_by_hash_) {
    if (CRYPTO_memcmp(stored.data(), hash.data(), hash.size()) == 0) found = &by_name_.at(name);
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown API key");
  return found;
}

const Tenant* TenantRegistry::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &it->second;
}

}  // namespace qlorad::core
