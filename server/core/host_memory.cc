#include "server/core/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace qlorad::core {
namespace {

// The number in a cgroup file, or nullopt ("max", missing, garbage).
std::optional<int64_t> ReadLimit(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!in || !std::getline(in, text)) return std::nullopt;
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &value) || value <= 0) {
    return std::nullopt;
  }
  return value;
}

// The lowest limit in `file` of the folder `root`/`group` and each folder above it up to `root`.
std::optional<int64_t> LowestLimit(const std::string& root, std::string group,
                                   const std::string& file, int64_t unlimited_from) {
  std::optional<int64_t> lowest;
  while (true) {
    std::optional<int64_t> limit = ReadLimit(root + group + "/" + file);
    if (limit && *limit < unlimited_from && (!lowest || *limit < *lowest)) lowest = limit;
    if (group.empty() || group == "/") break;
    group.resize(group.rfind('/'));  // the parent ("/a/b" -> "/a" -> "")
  }
  return lowest;
}

}  // namespace

std::optional<int64_t> CgroupMemoryLimit(const std::string& cgroup_root,
                                         const std::string& proc_self_cgroup) {
  // Lines "hierarchy:controllers:/path": v2's is "0::/path"; v1's memory one names "memory".
  std::ifstream in(proc_self_cgroup);
  std::string v2_group, v1_group;
  bool v2 = false, v1 = false;
  for (std::string line; std::getline(in, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string group = line.substr(second + 1);
    if (line.substr(0, first) == "0" && controllers.empty()) {
      v2 = true;
      v2_group = group;
    }
    for (absl::string_view c : absl::StrSplit(controllers, ',')) {
      if (c == "memory") {
        v1 = true;
        v1_group = group;
      }
    }
  }
  if (!v1 && !v2) v2 = true;  // no file to read: a container's own root, as it sees it
  if (v1) {
    // "No limit" is the largest page-aligned int64 (9223372036854771712).
    if (auto limit = LowestLimit(cgroup_root + "/memory", v1_group == "/" ? "" : v1_group,
                                 "memory.limit_in_bytes", int64_t{1} << 62)) {
      return limit;
    }
  }
  if (v2) {
    return LowestLimit(cgroup_root, v2_group == "/" ? "" : v2_group, "memory.max",
                       std::numeric_limits<int64_t>::max());
  }
  return std::nullopt;
}

int64_t UsableMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const int64_t physical =
      pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : int64_t{8} << 30;
  const std::optional<int64_t> limit = CgroupMemoryLimit();
  return limit ? std::min(physical, *limit) : physical;
}

}  // namespace qlorad::core
