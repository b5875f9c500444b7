#include "server/core/checkpoint_store.h"

#include <filesystem>
#include <fstream>

#include "engine/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/server/test_dirs.h"
#include "tests/storage/blob_read_counting_disk.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A checkpoint folder as the trainer writes it: a small config first, large files after.
std::string MakeCheckpointDir(const std::string& root, const std::string& tag) {
  const fs::path dir = fs::path(root) / tag;
  fs::create_directories(dir);
  WriteFile(dir / "adapter_config.json", "{\"r\": 4, \"tag\": \"" + tag + "\"}");
  WriteFile(dir / "adapter_model.safetensors", std::string(200000, 'a'));
  WriteFile(dir / "optimizer.safetensors", std::string(300000, 'o'));
  WriteFile(dir / "trainer_state.json", "{\"step\": 7}");
  return dir.string();
}

TEST(CheckpointStore, ListNamesEachStoredJobOnceAcrossTenants) {
  const std::string root = ::qlorad::testing::FreshTestDir("ck");
  auto db = storage::KvStore::Open(root + "/db");
  ASSERT_TRUE(db.ok()) << db.status();
  CheckpointStore store(db->get());
  // Job ids chosen to sit next to each other in key order ("j" < "j0" < "j1"), and a tenant
  // whose name extends another's.
  const std::vector<std::pair<std::string, std::string>> jobs = {
      {"acme", "j"}, {"acme", "j0"}, {"acme", "j1"}, {"acme2", "j"}, {"beta", "x"}};
  for (const auto& [tenant, job] : jobs) {
    ASSERT_TRUE(store.Save(tenant, job, MakeCheckpointDir(root, tenant + "-" + job)).ok());
  }
  auto listed = store.List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(*listed, jobs);

  // A save replaces the job's files whole; a restore gives back the last one saved.
  const std::string again = MakeCheckpointDir(root, "again");
  fs::remove(fs::path(again) / "optimizer.safetensors");
  ASSERT_TRUE(store.Save("acme", "j0", again).ok());
  const std::string out = root + "/restored";
  auto restored = store.Restore("acme", "j0", out);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(*restored);
  EXPECT_FALSE(fs::exists(fs::path(out) / "optimizer.safetensors"));
  EXPECT_EQ(*ReadFileToString(out + "/adapter_config.json"), "{\"r\": 4, \"tag\": \"again\"}");

  ASSERT_TRUE(store.Delete("acme", "j0").ok());
  listed = store.List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(*listed, (std::vector<std::pair<std::string, std::string>>{
                         {"acme", "j"}, {"acme", "j1"}, {"acme2", "j"}, {"beta", "x"}}));
  auto gone = store.Restore("acme", "j0", out);
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(*gone);
  // Neighbours in key order kept their files.
  restored = store.Restore("acme", "j", out);
  ASSERT_TRUE(restored.ok() && *restored);
  EXPECT_EQ(fs::file_size(fs::path(out) / "optimizer.safetensors"), 300000u);
}

// At startup List names every stored checkpoint's job: it reads one small file per job, never
// the large ones (it used to read every checkpoint whole).
TEST(CheckpointStore, ListReadsNoLargeFile) {
  const std::string root = ::qlorad::testing::FreshTestDir("ck");
  auto disk = std::make_shared<storage::BlobReadCountingDisk>();
  storage::KvStoreOptions o;
  o.file_system = disk;
  {
    auto db = storage::KvStore::Open(root + "/db", o);
    ASSERT_TRUE(db.ok()) << db.status();
    CheckpointStore store(db->get());
    for (const char* job : {"j1", "j2", "j3"}) {
      ASSERT_TRUE(store.Save("acme", job, MakeCheckpointDir(root, job)).ok());
    }
  }
  auto db = storage::KvStore::Open(root + "/db", o);  // reopening flushed them into blob files
  ASSERT_TRUE(db.ok()) << db.status();
  CheckpointStore store(db->get());
  disk->blob_bytes_read = 0;
  auto listed = store.List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 3u);
  EXPECT_LT(disk->blob_bytes_read, 200000);  // less than one adapter file
}

}  // namespace
}  // namespace qlorad::core
