#include "engine/mapped_file.h"

#include <sys/stat.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {
using ::qlorad::testing::TempDir;

TEST(MappedFile, RegularFilesReadWhole) {
  const std::string path = TempDir("mapped_regular") + "/bytes";
  std::string bytes(10000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(WriteStringToFile(path, bytes).ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, bytes);
  auto mapped = MappedFile::Open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*mapped)->data()), (*mapped)->size()),
            bytes);
  ASSERT_TRUE(WriteStringToFile(path, "").ok());
  EXPECT_EQ(*ReadFileToString(path), "");
  EXPECT_EQ(ReadFileToString(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

// A model registration names paths on the daemon's host: a FIFO blocked the open for ever
// (holding the model store's lock), /dev/zero read until memory ran out.
TEST(MappedFile, OnlyRegularFilesAreRead) {
  const std::string dir = TempDir("mapped_special");
  const std::string fifo = dir + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, std::string("/dev/zero"), dir}) {
    SCOPED_TRACE(path);
    const absl::Status read = ReadFileToString(path).status();
    EXPECT_EQ(read.code(), absl::StatusCode::kInvalidArgument) << read;
    EXPECT_NE(read.message().find("is not a regular file"), std::string::npos) << read;
    EXPECT_EQ(MappedFile::Open(path).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace qlorad
