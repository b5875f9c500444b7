// How much memory this process may use: the machine's RAM, or less where a container's memory
// limit (cgroup v2 memory.max, or v1 memory.limit_in_bytes) says so. A CPU device's default
// budget is half of it: half the host's RAM in a 96 GiB pod on a 1 TiB node would admit jobs
// until the kernel's OOM killer ended the daemon.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace qlorad::core {

// The memory limit of the cgroup this process is in (the lowest of its group's and its
// parents': a systemd unit's MemoryMax= sits on the unit's group, a container's at the root it
// sees), read under `cgroup_root` for the group `proc_self_cgroup` names; nullopt where there is
// none (no file, "max", or cgroup v1's "unlimited" value).
std::optional<int64_t> CgroupMemoryLimit(const std::string& cgroup_root = "/sys/fs/cgroup",
                                         const std::string& proc_self_cgroup = "/proc/self/cgroup");

// min(physical RAM, the cgroup limit); 8 GiB where the RAM cannot be read.
int64_t UsableMemoryBytes();

}  // namespace qlorad::core
