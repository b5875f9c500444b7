#include "server/core/model_store.h"

#include <unistd.h>

#include <filesystem>

#include "engine/device.h"
#include "engine/gguf.h"
#include "engine/nf4_checkpoint.h"
#include "gtest/gtest.h"
#include "server/core/model_pool.h"
#include "tests/server/test_dirs.h"
#include "tests/server/test_inputs.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

using ::qlorad::testing::StoriesGguf;

class ModelStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qlorad::testing::FreshTestDir("ms");
    auto db = storage::KvStore::Open(dir_ + "/db");
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
    store_ = std::make_unique<ModelStore>(db_.get());
  }
  std::string dir_;
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<ModelStore> store_;
};

TEST_F(ModelStoreTest, RegistersAValidatedModelIdempotently) {
  auto m = store_->Register("stories260K", StoriesGguf());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->format(), "gguf");
  EXPECT_EQ(m->parameter_count(), 260032);
  EXPECT_EQ(m->architecture().num_key_value_heads(), 4);
  auto again = store_->Register("stories260K", StoriesGguf());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->create_time().seconds(), m->create_time().seconds());
  EXPECT_EQ(store_->Register("stories260K", "/elsewhere").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->List()->size(), 1u);
  ASSERT_TRUE(store_->Delete("stories260K").ok());
  EXPECT_EQ(store_->Get("stories260K").status().code(), absl::StatusCode::kNotFound);
}

// A record that cannot be read is not written over as if absent (the jobs of that model would
// move to another file); the error says what is wrong, and the record stays for the admin.
TEST_F(ModelStoreTest, AnUnreadableRecordIsNotOverwritten) {
  ASSERT_TRUE(db_->Put(storage::Family::kModels, "stories260K", "\xff\xff damaged").ok());
  auto m = store_->Register("stories260K", StoriesGguf());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  EXPECT_EQ(*db_->Get(storage::Family::kModels, "stories260K"), "\xff\xff damaged");
  ASSERT_TRUE(store_->Delete("stories260K").ok());
  EXPECT_TRUE(store_->Register("stories260K", StoriesGguf()).ok());
}

// The size the scheduler counts per device equals what quantizing the model really stores.
TEST_F(ModelStoreTest, LoadedBytesMatchTheQuantizedModel) {
  auto g = LoadGgufModel(StoriesGguf());
  ASSERT_TRUE(g.ok());
  const int64_t estimate = LoadedModelBytes(g->weights.config);
  auto q = SaveNf4Checkpoint(g->weights, "", dir_ + "/q");
  ASSERT_TRUE(q.ok());
  int64_t actual = 0;
  for (const auto& [name, t] : *q) actual += t.StorageBytes();
  actual += 4 * (512 * 64 + 5 * 2 * 64 + 64);  // float32 embedding (tied head) and norms
  EXPECT_EQ(estimate, actual);
}

TEST_F(ModelStoreTest, BadNamesAndBadModelsAreRejectedWithReasons) {
  EXPECT_EQ(store_->Register("bad/name", StoriesGguf()).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto missing = store_->Register("ghost", "/nonexistent/model");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("/nonexistent/model"), std::string::npos)
      << missing.status();
  EXPECT_TRUE(store_->List()->empty());
}

// A device's pool serves a model once loaded, but a model deleted and registered again under the
// same name (possibly another checkpoint) is loaded anew rather than served from the old weights,
// which count as loaded until the last job holding them lets go.
TEST_F(ModelStoreTest, APoolLoadsAModelRegisteredAnewUnderTheSameName) {
  auto device = CreateCpuDevice(1);
  ModelPool pool(device.get());
  auto first = store_->Register("stories", StoriesGguf());
  ASSERT_TRUE(first.ok()) << first.status();
  auto a = pool.Acquire(*first);
  auto b = pool.Acquire(*first);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  ASSERT_TRUE(store_->Delete("stories").ok());
  const std::string copy = dir_ + "/stories-copy.gguf";
  std::filesystem::copy_file(StoriesGguf(), copy);
  auto second = store_->Register("stories", copy);
  ASSERT_TRUE(second.ok()) << second.status();
  auto c = pool.Acquire(*second);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->get(), a->get());
  EXPECT_EQ(pool.Acquire(*second)->get(), c->get());
  // The replaced weights are still on the device while jobs hold them: admission counts them
  // until the last lets go.
  EXPECT_EQ(pool.LoadedCount(), 2);
  EXPECT_EQ(pool.ResidentBytes(), (*a)->bytes + (*c)->bytes);
  a->reset();
  EXPECT_EQ(pool.LoadedCount(), 2);  // b still holds it
  b->reset();
  EXPECT_EQ(pool.LoadedCount(), 1);
  EXPECT_EQ(pool.ResidentBytes(), (*c)->bytes);
}

}  // namespace
}  // namespace qlorad::core
