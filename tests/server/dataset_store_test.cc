#include "server/core/dataset_store.h"

#include <unistd.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "server/core/tenants.h"
#include "tests/server/test_dirs.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

class DatasetStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = ::qlorad::testing::FreshTestDir("ds");
    auto db = storage::KvStore::Open(dir);
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
    store_ = std::make_unique<DatasetStore>(db_.get());
  }
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<DatasetStore> store_;
};

const char kGood[] = "{\"prompt\": \"a\", \"completion\": \" b\"}\n\n{\"text\": \"hello\"}\n";

TEST_F(DatasetStoreTest, StoresCountsHashesAndReadsBack) {
  auto d = store_->Create("acme", "facts", kGood, 1 << 20);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->examples(), 2);
  EXPECT_EQ(d->bytes(), static_cast<int64_t>(sizeof(kGood) - 1));
  EXPECT_EQ(d->sha256(), Sha256Hex(kGood));
  EXPECT_EQ(d->id().rfind("ds-", 0), 0u);
  EXPECT_EQ(*store_->Content("acme", d->id()), kGood);
  EXPECT_EQ(store_->List("acme")->size(), 1u);
  EXPECT_EQ(store_->UsageOf("acme")->bytes, d->bytes());
  EXPECT_EQ(store_->UsageOf("acme")->datasets, 1);
}

TEST_F(DatasetStoreTest, EveryBadLineIsNamedAndNothingIsStored) {
  const std::string bad =
      std::string(kGood) + "{\"text\": \"ok\"}\n{\"prompt\": 3}\n{\"text\": \"ok\"}\n[]\n";
  auto d = store_->Create("acme", "bad", bad, 1 << 20);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.status().message().rfind("2 bad lines: line 5: ", 0), 0u) << d.status();
  EXPECT_NE(d.status().message().find("; line 7: not a JSON object"), std::string::npos)
      << d.status();
  EXPECT_TRUE(store_->List("acme")->empty());
  // Ten bad lines, each naming a long field, still fit the 1024 bytes a daemon's error keeps
  // (server/grpc/call.h), count first.
  std::string many;
  for (int i = 0; i < 12; ++i) many += "{\"text\": \"a\", \"" + std::string(500, 'k') + "\": 1}\n";
  auto long_keys = store_->Create("acme", "many", many, 1 << 20);
  EXPECT_EQ(long_keys.status().message().rfind("12 bad lines, the first 10: line 1: ", 0), 0u);
  EXPECT_LE(long_keys.status().message().size(), 1024u);
  EXPECT_NE(long_keys.status().message().find("; line 10: unexpected field"), std::string::npos);
  EXPECT_EQ(store_->Create("acme", "empty", "\n \n", 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DatasetStoreTest, QuotaTenantIsolationAndDelete) {
  auto d = store_->Create("acme", "a", kGood, 100);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(store_->Create("acme", "b", kGood, 100).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store_->Create("beta", "b", kGood, 100).ok());  // quotas are per tenant
  EXPECT_EQ(store_->Get("beta", d->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Content("beta", d->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("beta", d->id()).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->Delete("acme", d->id()).ok());
  EXPECT_EQ(store_->Get("acme", d->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->UsageOf("acme")->bytes, 0);
  EXPECT_EQ(store_->List("beta")->size(), 1u);
}

// The number of datasets is bounded too: each upload and quota check reads every record, and a
// listing returns them all. A tenant at its limit is refused before its upload sends a byte.
TEST_F(DatasetStoreTest, TheNumberOfDatasetsIsBounded) {
  ASSERT_TRUE(store_->Create("acme", "a", kGood, 1 << 20, 2).ok());
  ASSERT_TRUE(store_->Create("acme", "b", kGood, 1 << 20, 2).ok());
  const absl::Status third = store_->Create("acme", "c", kGood, 1 << 20, 2).status();
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted) << third;
  EXPECT_NE(third.message().find("dataset limit reached: 2 of 2"), std::string::npos) << third;
  const absl::Status upload = store_->StartUpload("acme", 1 << 20, 1 << 20, 2).status();
  EXPECT_EQ(upload.code(), absl::StatusCode::kResourceExhausted) << upload;
  EXPECT_TRUE(store_->Create("beta", "a", kGood, 1 << 20, 2).ok());  // per tenant
  EXPECT_TRUE(store_->StartUpload("acme", 1 << 20, 1 << 20, 3).ok());
}

// Uploads in progress share the tenant's quota as their bytes arrive: two that fit one at a
// time cannot both be held at once, and bytes come back when an upload goes.
TEST_F(DatasetStoreTest, UploadsInProgressShareTheQuota) {
  auto first = store_->StartUpload("acme", 1000, 800);
  auto second = store_->StartUpload("acme", 1000, 800);
  auto other_tenant = store_->StartUpload("beta", 1000, 800);
  ASSERT_TRUE(first.ok() && second.ok() && other_tenant.ok());
  ASSERT_TRUE((*first)->Grow(600).ok());
  const absl::Status refused = (*second)->Grow(600);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("400 bytes left of tenant 'acme'"), std::string::npos)
      << refused;
  EXPECT_TRUE((*second)->Grow(400).ok());        // what is left
  EXPECT_TRUE((*other_tenant)->Grow(800).ok());  // another tenant's quota
  EXPECT_EQ((*first)->Grow(300).code(), absl::StatusCode::kResourceExhausted);  // 600 + 400 taken
  first->reset();  // the first upload gives its 600 bytes back
  EXPECT_TRUE((*second)->Grow(400).ok());
  EXPECT_EQ((*second)->Grow(1).code(), absl::StatusCode::kResourceExhausted);  // 800: per upload
}

TEST_F(DatasetStoreTest, ANameWithControlCharactersOrTooLongIsRefused) {
  for (const std::string& name : {std::string("a\nb"), std::string(257, 'x')}) {
    auto d = store_->Create("acme", name, kGood, 1 << 20);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.status().message().rfind("name: ", 0), 0u) << d.status();
  }
  EXPECT_TRUE(store_->Create("acme", "caf\xC3\xA9 facts", kGood, 1 << 20).ok());
  EXPECT_TRUE(store_->List("acme")->size() == 1);
}

}  // namespace
}  // namespace qlorad::core
