// qlora-engine's --out checks, made before any work.
#include "engine/tools/output_path.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::TempDir;
namespace fs = std::filesystem;

TEST(CheckOutput, AcceptsANewOrExistingFolderItCanWrite) {
  const std::string root = TempDir("out_ok");
  EXPECT_TRUE(CheckOutput(root, {}).ok());
  EXPECT_TRUE(CheckOutput(root + "/new/deeper", {}).ok());
}

TEST(CheckOutput, RefusesWhatCouldNotBecomeTheFolder) {
  const std::string root = TempDir("out_bad");
  const std::string file = root + "/notes.txt";
  std::ofstream(file) << "mine";
  struct Case {
    std::string out, expected;
  };
  fs::create_symlink(root + "/gone", root + "/dangling");
  for (const Case& c :
       {Case{file, "exists and is not a folder"},
        Case{file + "/adapter", "notes.txt is not a folder"},
        Case{root + "/dangling", "which does not exist"}, Case{root, "is the input"}}) {
    const absl::Status s = CheckOutput(c.out, {root});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.out;
    EXPECT_NE(s.message().find(c.expected), std::string::npos) << s;
  }
  // Nothing was written: the file is as it was.
  std::ifstream in(file);
  std::string kept;
  in >> kept;
  EXPECT_EQ(kept, "mine");
}

}  // namespace
}  // namespace qlorad
