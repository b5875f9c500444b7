// qloractl's download writer: files move into the directory only once the whole download came.
#include "client/commands/adapter_files.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/test_dirs.h"

namespace qlorad::ctl {
namespace {
namespace fs = std::filesystem;
using ::qlorad::testing::FreshTestDir;

std::string Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

v1::AdapterFileChunk Chunk(const std::string& name, const std::string& data, bool end) {
  v1::AdapterFileChunk c;
  c.set_file_name(name);
  c.set_data(data);
  c.set_end_of_file(end);
  return c;
}

// Only what is in `dir`, by name (a staging folder left behind would show here).
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The directory holds an older adapter. A download cut inside its second file (the connection
// dropped, Ctrl-C) must leave the old adapter whole: before, the new adapter_config.json was
// already in place beside the old weights, which PEFT loads without complaint.
TEST(AdapterFileWriter, ADownloadCutShortLeavesTheDirectoryAsItWas) {
  const std::string dir = FreshTestDir("files");
  std::ofstream(fs::path(dir) / "adapter_config.json") << "old config";
  std::ofstream(fs::path(dir) / "adapter_model.safetensors") << "old weights";
  {
    auto writer = AdapterFileWriter::Create(dir);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(writer->Add(Chunk("adapter_config.json", "new config", true)).ok());
    ASSERT_TRUE(writer->Add(Chunk("adapter_model.safetensors", "new wei", false)).ok());
    EXPECT_FALSE(writer->Finish().ok());  // the stream ended inside the second file
  }                                       // the writer goes, as qloractl exits
  EXPECT_EQ(Slurp(fs::path(dir) / "adapter_config.json"), "old config");
  EXPECT_EQ(Slurp(fs::path(dir) / "adapter_model.safetensors"), "old weights");
  EXPECT_EQ(Entries(dir),
            (std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"}));
}

// A failed download into folders it made (an unknown adapter id, a dropped connection) takes
// them away again: it left an empty --out folder behind. A folder that held anything stays.
TEST(AdapterFileWriter, AFailedDownloadRemovesTheFoldersItMade) {
  const std::string root = FreshTestDir("made");
  const std::string out = root + "/new/adapter";
  {
    auto writer = AdapterFileWriter::Create(out);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(fs::is_directory(out));
  }  // no file came: the call failed
  EXPECT_FALSE(fs::exists(root + "/new"));
  EXPECT_TRUE(fs::exists(root));  // made before: not this download's
  // A whole download keeps the folders it made.
  {
    auto writer = AdapterFileWriter::Create(out);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(writer->Add(Chunk("adapter_config.json", "{}", true)).ok());
    ASSERT_TRUE(writer->Finish().ok());
  }
  EXPECT_EQ(Entries(out), (std::vector<std::string>{"adapter_config.json"}));
}

TEST(AdapterFileWriter, AWholeDownloadReplacesTheFilesAndLeavesNoStaging) {
  const std::string dir = FreshTestDir("files");
  std::ofstream(fs::path(dir) / "adapter_config.json") << "old config";
  auto writer = AdapterFileWriter::Create(dir + "/");  // a trailing slash, as users type it
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(writer->Add(Chunk("adapter_config.json", "new config", true)).ok());
  ASSERT_TRUE(writer->Add(Chunk("adapter_model.safetensors", "new ", false)).ok());
  ASSERT_TRUE(writer->Add(Chunk("", "weights", true)).ok());
  ASSERT_TRUE(writer->Finish().ok());
  ASSERT_EQ(writer->files().size(), 2u);
  EXPECT_EQ(fs::path(writer->files()[1].path).filename(), "adapter_model.safetensors");
  EXPECT_EQ(writer->files()[1].bytes, 11);
  EXPECT_EQ(Slurp(fs::path(dir) / "adapter_config.json"), "new config");
  EXPECT_EQ(Slurp(fs::path(dir) / "adapter_model.safetensors"), "new weights");
  EXPECT_EQ(Entries(dir),
            (std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"}));
}

// A download killed outright (Ctrl-C) leaves its staging folder; the next download into the
// folder removes one an hour old, and leaves a younger one (a download in progress) alone.
TEST(AdapterFileWriter, AbandonedStagingFoldersAreRemovedOnceStale) {
  const std::string dir = FreshTestDir("files");
  const fs::path stale = fs::path(dir) / ".qlorad-download-OLD123";
  const fs::path fresh = fs::path(dir) / ".qlorad-download-NEW123";
  fs::create_directories(stale);
  fs::create_directories(fresh);
  std::ofstream(stale / "adapter_model.safetensors") << "cut";
  const auto two_hours_ago = fs::file_time_type::clock::now() - std::chrono::hours(2);
  fs::last_write_time(stale / "adapter_model.safetensors", two_hours_ago);
  fs::last_write_time(stale, two_hours_ago);
  // A slow download: its folder untouched for two hours, its file written to just now.
  const fs::path slow = fs::path(dir) / ".qlorad-download-SLOW12";
  fs::create_directories(slow);
  std::ofstream(slow / "adapter_model.safetensors") << "streaming";
  fs::last_write_time(slow, two_hours_ago);
  {
    auto writer = AdapterFileWriter::Create(dir);
    ASSERT_TRUE(writer.ok()) << writer.status();
  }
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh));
  EXPECT_TRUE(fs::exists(slow));
}

TEST(AdapterFileWriter, UnsafeNamesAndRepeatsAreRefused) {
  const std::string dir = FreshTestDir("files");
  auto writer = AdapterFileWriter::Create(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_FALSE(writer->Add(Chunk("../escape", "x", true)).ok());
  ASSERT_TRUE(writer->Add(Chunk("a.json", "x", true)).ok());
  EXPECT_FALSE(writer->Add(Chunk("a.json", "y", true)).ok());
  writer->Abandon();
  EXPECT_TRUE(Entries(dir).empty());
  EXPECT_FALSE(fs::exists(fs::path(dir).parent_path() / "escape"));
}

}  // namespace
}  // namespace qlorad::ctl
