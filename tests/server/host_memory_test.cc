// A container's memory limit bounds the CPU devices' default budget.
#include "server/core/host_memory.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/test_dirs.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// A fake /sys/fs/cgroup and /proc/self/cgroup per case.
struct Cgroups {
  fs::path root, proc;
  explicit Cgroups(const std::string& name, const std::string& proc_self_cgroup)
      : root(fs::path(::qlorad::testing::FreshTestDir(name)) / "sys"),
        proc(root.parent_path() / "proc_self_cgroup") {
    fs::create_directories(root);
    Write(proc, proc_self_cgroup);
  }
  std::optional<int64_t> Limit() const { return CgroupMemoryLimit(root.string(), proc.string()); }
};

TEST(HostMemory, AContainersLimitIsAtTheRootItSees) {
  Cgroups v2("v2_container", "0::/\n");
  Write(v2.root / "memory.max", "103079215104\n");  // a 96 GiB pod
  EXPECT_EQ(v2.Limit(), int64_t{103079215104});
  // cgroup v1 as this sandbox has it: the memory group's path is the host's, and the container
  // sees its own group at the mount's root.
  Cgroups v1("v1_namespaced", "4:memory:/process_api/52022\n0::/\n");
  Write(v1.root / "memory" / "memory.limit_in_bytes", "17179869184\n");
  EXPECT_EQ(v1.Limit(), int64_t{17179869184});
}

TEST(HostMemory, AUnitsLimitIsOnItsGroupOrAParent) {
  Cgroups unit("v2_unit", "0::/system.slice/qlorad.service\n");
  Write(unit.root / "system.slice" / "qlorad.service" / "memory.max", "17179869184\n");
  Write(unit.root / "system.slice" / "memory.max", "max\n");
  EXPECT_EQ(unit.Limit(), int64_t{17179869184});
  Write(unit.root / "system.slice" / "memory.max", "8589934592\n");  // the slice's is lower
  EXPECT_EQ(unit.Limit(), int64_t{8589934592});
  Cgroups v1("v1_docker", "7:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n");
  Write(v1.root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "4294967296\n");
  EXPECT_EQ(v1.Limit(), int64_t{4294967296});
}

TEST(HostMemory, NoLimitWhereTheGroupHasNone) {
  Cgroups v2("v2_max", "0::/\n");
  Write(v2.root / "memory.max", "max\n");
  EXPECT_EQ(v2.Limit(), std::nullopt);
  Cgroups v1("v1_unlimited", "4:memory:/\n");
  Write(v1.root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(v1.Limit(), std::nullopt);
  EXPECT_EQ(Cgroups("none", "0::/\n").Limit(), std::nullopt);
}

}  // namespace
}  // namespace qlorad::core
