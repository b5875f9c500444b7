// The per-device model pool against the real stories260K model: loaded once and shared, loaded
// anew when its name is registered again, and the replaced weights still counted while a job
// holds them (admission must not hand out memory they still take).
#include "server/core/model_pool.h"

#include <filesystem>
#include <memory>

#include "gtest/gtest.h"
#include "server/core/model_store.h"
#include "storage/kv_store.h"
#include "tests/server/test_dirs.h"
#include "tests/server/test_inputs.h"

namespace qlorad::core {
namespace {

TEST(ModelPoolTest, AReplacedModelCountsUntilTheLastJobLetsGo) {
  const std::string dir = ::qlorad::testing::FreshTestDir("pool");
  auto db = storage::KvStore::Open(dir + "/db");
  ASSERT_TRUE(db.ok()) << db.status();
  ModelStore models(db->get());
  auto first = models.Register("stories", ::qlorad::testing::StoriesGguf());
  ASSERT_TRUE(first.ok()) << first.status();
  const std::unique_ptr<Device> device = CreateCpuDevice(1);
  ModelPool pool(device.get());

  auto held = pool.Acquire(*first);  // a job trains on it
  ASSERT_TRUE(held.ok()) << held.status();
  auto again = pool.Acquire(*first);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *held);  // shared, not loaded twice
  again->reset();
  const int64_t bytes = (*held)->bytes;
  ASSERT_GT(bytes, 0);
  EXPECT_EQ(pool.ResidentBytes(), bytes);

  // Registered anew under the same name (another checkpoint: here a copy of the file): the
  // next job gets new weights, the old stay counted.
  const std::string copy = dir + "/stories260K.gguf";
  std::filesystem::copy_file(::qlorad::testing::StoriesGguf(), copy);
  ASSERT_TRUE(models.Delete("stories").ok());
  auto second = models.Register("stories", copy);
  ASSERT_TRUE(second.ok()) << second.status();
  auto fresh = pool.Acquire(*second);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(*fresh, *held);
  EXPECT_EQ(pool.ResidentBytes(), bytes + (*fresh)->bytes);
  EXPECT_EQ(pool.LoadedCount(), 2);

  held->reset();  // the old job ends: its weights go, and so does their count
  EXPECT_EQ(pool.ResidentBytes(), (*fresh)->bytes);
  EXPECT_EQ(pool.LoadedCount(), 1);
}

}  // namespace
}  // namespace qlorad::core
