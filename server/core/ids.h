// Random resource ids ("job-3f9a...", "ds-...", "ad-..."): 16 hex digits from the OS entropy
// source, so ids reveal nothing about other tenants' activity.
#pragma once

#include <random>
#include <string>

namespace qlorad::core {

inline std::string NewId(const std::string& prefix) {
  static thread_local std::random_device rd;
  static const char kHex[] = "0123456789abcdef";
  std::string id = prefix + "-";
  for (int i = 0; i < 4; ++i) {
    uint32_t v = rd();
    for (int k = 0; k < 4; ++k) {
      id.push_back(kHex[v & 15]);
      v >>= 4;
    }
  }
  return id;
}

}  // namespace qlorad::core
