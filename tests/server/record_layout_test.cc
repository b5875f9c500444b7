#include "server/core/record_layout.h"

#include <string>

#include "gtest/gtest.h"
#include "server/core/adapter_store.h"
#include "server/core/dataset_store.h"
#include "tests/server/test_dirs.h"

namespace qlorad::core {
namespace {

using storage::Family;

class RecordLayoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = storage::KvStore::Open(::qlorad::testing::FreshTestDir("layout"));
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
  }
  // Every key of family `f` that starts with `prefix`.
  std::vector<std::string> Keys(Family f, const std::string& prefix) {
    std::vector<std::string> keys;
    EXPECT_TRUE(db_->Scan(f, prefix,
                          [&](std::string_view k, std::string_view) {
                            keys.emplace_back(k);
                            return true;
                          })
                    .ok());
    return keys;
  }
  std::unique_ptr<storage::KvStore> db_;
};

// A database written by the earlier layout ("<tenant>/<id>/meta" beside the content) is moved
// once: the stores then find, list, read and delete its records; nothing is lost.
TEST_F(RecordLayoutTest, OldRecordsMoveAndStayUsable) {
  v1::Dataset d;
  d.set_id("ds-old1");
  d.set_name("facts");
  d.set_bytes(5);
  v1::Adapter a;
  a.set_id("ad-old1");
  a.set_name("facts-adapter");
  const std::string tensor(200000, 'w');  // a blob-sized value
  ASSERT_TRUE(db_->Put(Family::kDatasets, "acme/ds-old1/meta", d.SerializeAsString()).ok());
  ASSERT_TRUE(db_->Put(Family::kDatasets, "acme/ds-old1/data", "hello").ok());
  ASSERT_TRUE(db_->Put(Family::kAdapters, "acme/ad-old1/meta", a.SerializeAsString()).ok());
  ASSERT_TRUE(db_->Put(Family::kAdapters, "acme/ad-old1/file/adapter_config.json", "{}").ok());
  ASSERT_TRUE(
      db_->Put(Family::kAdapters, "acme/ad-old1/file/adapter_model.safetensors", tensor).ok());

  EXPECT_EQ(*MigrateRecordLayout(db_.get(), Family::kDatasets), 1);
  EXPECT_EQ(*MigrateRecordLayout(db_.get(), Family::kAdapters), 1);
  EXPECT_EQ(*MigrateRecordLayout(db_.get(), Family::kAdapters), 0);  // done once

  DatasetStore datasets(db_.get());
  AdapterStore adapters(db_.get());
  ASSERT_EQ(datasets.List("acme")->size(), 1u);
  EXPECT_EQ(datasets.Get("acme", "ds-old1")->name(), "facts");
  EXPECT_EQ(*datasets.Content("acme", "ds-old1"), "hello");
  ASSERT_EQ(adapters.List("acme")->size(), 1u);
  auto files = adapters.Files("acme", "ad-old1");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->at("adapter_model.safetensors"), tensor);
  EXPECT_TRUE(Keys(Family::kAdapters, "acme/ad-old1/meta").empty());

  ASSERT_TRUE(datasets.Delete("acme", "ds-old1").ok());
  ASSERT_TRUE(adapters.Delete("acme", "ad-old1").ok());
  EXPECT_TRUE(Keys(Family::kDatasets, "acme/").empty());
  EXPECT_TRUE(Keys(Family::kAdapters, "acme/").empty());
}

// New records keep their metadata in the tenant's metadata range only, so a listing scans
// metadata and never a dataset's content.
TEST_F(RecordLayoutTest, ListingRangeHoldsOnlyMetadata) {
  DatasetStore datasets(db_.get());
  auto d = datasets.Create("acme", "facts", "{\"text\": \"hello\"}\n", 1 << 20);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(Keys(Family::kDatasets, *MetaPrefix("acme")),
            std::vector<std::string>{"acme/meta/" + d->id()});
  EXPECT_EQ(Keys(Family::kDatasets, "acme/" + d->id() + "/"),
            std::vector<std::string>{"acme/" + d->id() + "/data"});
  // An id that names the metadata range itself is simply absent.
  EXPECT_TRUE(absl::IsNotFound(datasets.Get("acme", "meta").status()));
  EXPECT_TRUE(absl::IsNotFound(datasets.Delete("acme", "meta")));
  EXPECT_EQ(datasets.List("acme")->size(), 1u);
}

}  // namespace
}  // namespace qlorad::core
