// Typed reads of a JSON object's fields for the config files other tools write (config.json,
// adapter_config.json). Absent or null reads as the default, as those tools write null for unset
// fields; any other wrong type is an error naming the file and the field, never an exception
// from the JSON library (the daemon reads these files from clients' uploads).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace qlorad {

class JsonFields {
 public:
  // `source` names the file in errors, `prefix` the object within it ("rope_parameters.");
  // `object` must outlive this reader.
  JsonFields(const nlohmann::json& object, std::string source, std::string prefix = "")
      : j_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  // Whether `key` holds a value other than null.
  bool Has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  // "<source>: field '<key>' <what>".
  absl::Status Error(const std::string& key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", prefix_, key, "' ", what));
  }

  absl::Status Int(const char* key, bool required, int64_t* out) const {
    if (!Has(key)) return Missing(key, required);
    const nlohmann::json& v = j_[key];
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
      return Error(key, "must be an integer");
    }
    *out = v.get<int64_t>();
    return absl::OkStatus();
  }

  // A number that fits a float (a larger one would become infinity).
  absl::Status Number(const char* key, bool required, float* out) const {
    if (!Has(key)) return Missing(key, required);
    const nlohmann::json& v = j_[key];
    if (!v.is_number() || !(std::fabs(v.get<double>()) <= FLT_MAX)) {
      return Error(key, "must be a finite number");
    }
    *out = v.get<float>();
    return absl::OkStatus();
  }

  // A finite number kept as a double (a learning rate read back as a float would not compare).
  absl::Status Real(const char* key, bool required, double* out) const {
    if (!Has(key)) return Missing(key, required);
    const nlohmann::json& v = j_[key];
    if (!v.is_number() || !std::isfinite(v.get<double>())) {
      return Error(key, "must be a finite number");
    }
    *out = v.get<double>();
    return absl::OkStatus();
  }

  absl::Status Text(const char* key, std::string* out) const {
    if (!Has(key)) return absl::OkStatus();
    if (!j_[key].is_string()) return Error(key, "must be a string");
    *out = j_[key].get<std::string>();
    return absl::OkStatus();
  }

  absl::Status Flag(const char* key, bool* out) const {
    if (!Has(key)) return absl::OkStatus();
    if (!j_[key].is_boolean()) return Error(key, "must be true or false");
    *out = j_[key].get<bool>();
    return absl::OkStatus();
  }

 private:
  absl::Status Missing(const char* key, bool required) const {
    return required ? Error(key, "is missing") : absl::OkStatus();
  }

  const nlohmann::json& j_;
  const std::string source_;
  const std::string prefix_;
};

}  // namespace qlorad
