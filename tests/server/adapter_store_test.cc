#include "server/core/adapter_store.h"

#include <unistd.h>

#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/gguf.h"
#include "engine/lora.h"
#include "engine/mapped_file.h"
#include "engine/peft_adapter.h"
#include "gtest/gtest.h"
#include "tests/server/test_dirs.h"
#include "tests/server/test_inputs.h"

namespace qlorad::core {
namespace {
namespace fs = std::filesystem;

class AdapterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qlorad::testing::FreshTestDir("as");
    auto db = storage::KvStore::Open(dir_ + "/db");
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
    store_ = std::make_unique<AdapterStore>(db_.get());
    auto g = LoadGgufModel(::qlorad::testing::StoriesGguf());
    ASSERT_TRUE(g.ok());
    config_ = g->weights.config;
    lora_.rank = 4;
    params_.resize(LoraLayout(config_, lora_).num_params());
    std::mt19937 rng(5);
    std::normal_distribution<float> n(0.0f, 0.1f);
    for (float& p : params_) p = n(rng);
    ASSERT_TRUE(SavePeftAdapter(dir_ + "/peft", config_, lora_, params_).ok());
  }
  v1::Adapter Meta() const {
    v1::Adapter a;
    a.set_name("facts");
    a.set_base_model("stories260K");
    a.set_rank(4);
    return a;
  }
  // Deletes one stored part of acme's adapter `id`'s adapter_model.safetensors (a damaged store).
  absl::Status DeleteModelPart(const std::string& id, int64_t part) {
    storage::WriteSet w;
    w.Delete(storage::Family::kAdapters,
             "acme/" + id + "/file/adapter_model.safetensors/" + storage::SequenceKeyPart(part));
    return db_->Write(w);
  }
  std::string dir_;
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<AdapterStore> store_;
  LlamaConfig config_;
  LoraConfig lora_;
  std::vector<float> params_;
};

TEST_F(AdapterStoreTest, StoredFilesLoadBackIntoTheEngineUnchanged) {
  auto a = store_->Create("acme", Meta(), dir_ + "/peft", 10);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id().rfind("ad-", 0), 0u);
  EXPECT_GT(a->bytes(), static_cast<int64_t>(params_.size() * 4));
  auto files = store_->Files("acme", a->id());
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(files->size(), 2u);
  ASSERT_TRUE(store_->ExportToDir("acme", a->id(), dir_ + "/out").ok());
  auto loaded = LoadPeftAdapter(dir_ + "/out", config_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->params, params_);
}

// Files read while a delete ran (the record read before, the files gone after) are not handed
// out as the adapter: a download ended OK with no files, an export made an empty folder.
TEST_F(AdapterStoreTest, AnAdapterMissingAFileIsNeverHandedOutInPart) {
  auto a = store_->Create("acme", Meta(), dir_ + "/peft", 10);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(db_->Write([&] {
                   storage::WriteSet w;
                   w.DeletePrefix(storage::Family::kAdapters,
                                  "acme/" + a->id() + "/file/adapter_model.safetensors/");
                   return w;
                 }())
                  .ok());
  auto files = store_->Files("acme", a->id());
  EXPECT_EQ(files.status().code(), absl::StatusCode::kDataLoss) << files.status();
  EXPECT_NE(files.status().message().find("adapter_model.safetensors"), std::string::npos);
  EXPECT_FALSE(store_->ExportToDir("acme", a->id(), dir_ + "/partial").ok());
  EXPECT_FALSE(fs::exists(dir_ + "/partial"));
}

// A file larger than a part is stored in parts and read back one part at a time, whole and in
// order; a part missing is DATA_LOSS found before anything after it is handed out.
TEST_F(AdapterStoreTest, ALargeFileIsStoredInPartsAndReadBackAPartAtATime) {
  const std::string peft = dir_ + "/large";
  fs::create_directories(peft);
  fs::copy_file(dir_ + "/peft/adapter_config.json", peft + "/adapter_config.json");
  std::string big(2 * kAdapterPartBytes + 5, '\0');
  std::mt19937 rng(7);
  for (char& c : big) c = static_cast<char>(rng());
  ASSERT_TRUE(WriteStringToFile(peft + "/adapter_model.safetensors", big).ok());
  auto a = store_->Create("acme", Meta(), peft, 10);
  ASSERT_TRUE(a.ok()) << a.status();

  struct Part {
    std::string name;
    size_t bytes;
    bool last;
    bool operator==(const Part&) const = default;
  };
  std::vector<Part> parts;
  std::string model;
  ASSERT_TRUE(store_
                  ->VisitFiles("acme", a->id(),
                               [&](const std::string& name, std::string_view data, bool last) {
                                 parts.push_back({name, data.size(), last});
                                 if (name == "adapter_model.safetensors") model.append(data);
                                 return absl::OkStatus();
                               })
                  .ok());
  const size_t config_bytes = fs::file_size(peft + "/adapter_config.json");
  EXPECT_EQ(parts, (std::vector<Part>{{"adapter_config.json", config_bytes, true},
                                      {"adapter_model.safetensors", kAdapterPartBytes, false},
                                      {"adapter_model.safetensors", kAdapterPartBytes, false},
                                      {"adapter_model.safetensors", 5, true}}));
  EXPECT_TRUE(model == big);
  ASSERT_TRUE(store_->ExportToDir("acme", a->id(), dir_ + "/large-out").ok());
  EXPECT_TRUE(*ReadFileToString(dir_ + "/large-out/adapter_model.safetensors") == big);

  // The middle part gone: DATA_LOSS naming it, with the part before it not handed out, and an
  // export leaves nothing behind.
  ASSERT_TRUE(DeleteModelPart(a->id(), 1).ok());
  size_t model_parts = 0;
  const absl::Status gap =
      store_->VisitFiles("acme", a->id(), [&](const std::string& name, std::string_view, bool) {
        model_parts += name == "adapter_model.safetensors";
        return absl::OkStatus();
      });
  EXPECT_EQ(gap.code(), absl::StatusCode::kDataLoss) << gap;
  EXPECT_NE(gap.message().find("part 1 of adapter_model.safetensors"), std::string::npos) << gap;
  EXPECT_EQ(model_parts, 0u);
  EXPECT_FALSE(store_->ExportToDir("acme", a->id(), dir_ + "/gap-out").ok());
  EXPECT_FALSE(fs::exists(dir_ + "/gap-out"));

  // The last part gone too (no gap left to see): the bytes fall short of the record's.
  ASSERT_TRUE(DeleteModelPart(a->id(), 2).ok());
  bool last_visited = false;
  const absl::Status short_file = store_->VisitFiles(
      "acme", a->id(), [&](const std::string& name, std::string_view, bool last) {
        last_visited |= name == "adapter_model.safetensors" && last;
        return absl::OkStatus();
      });
  EXPECT_EQ(short_file.code(), absl::StatusCode::kDataLoss) << short_file;
  EXPECT_NE(short_file.message().find(
                absl::StrCat(config_bytes + kAdapterPartBytes, " bytes of ", a->bytes())),
            std::string::npos)
      << short_file;
  EXPECT_FALSE(last_visited);
  // Deleted: NOT_FOUND, whatever was left of it.
  ASSERT_TRUE(store_->Delete("acme", a->id()).ok());
  EXPECT_EQ(
      store_
          ->VisitFiles("acme", a->id(),
                       [](const std::string&, std::string_view, bool) { return absl::OkStatus(); })
          .code(),
      absl::StatusCode::kNotFound);
}

// Adapters stored before parts hold each file in one value; they read as before.
TEST_F(AdapterStoreTest, AnAdapterStoredBeforePartsReadsBack) {
  auto a = store_->Create("acme", Meta(), dir_ + "/peft", 10);
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string files = "acme/" + a->id() + "/file/";
  storage::WriteSet w;
  w.DeletePrefix(storage::Family::kAdapters, files);
  for (const char* name : {"adapter_config.json", "adapter_model.safetensors"}) {
    w.Put(storage::Family::kAdapters, files + name, *ReadFileToString(dir_ + "/peft/" + name));
  }
  ASSERT_TRUE(db_->Write(w).ok());
  ASSERT_TRUE(store_->ExportToDir("acme", a->id(), dir_ + "/old-out").ok());
  auto loaded = LoadPeftAdapter(dir_ + "/old-out", config_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->params, params_);
}

TEST_F(AdapterStoreTest, EachAdapterIsItsOwnModuleTenantScopedAndCounted) {
  auto a1 = store_->Create("acme", Meta(), dir_ + "/peft", 2);
  auto a2 = store_->Create("acme", Meta(), dir_ + "/peft", 2);
  ASSERT_TRUE(a1.ok() && a2.ok());
  const absl::Status quota = store_->Create("acme", Meta(), dir_ + "/peft", 2).status();
  EXPECT_EQ(quota.code(), absl::StatusCode::kResourceExhausted);
  // Told apart from a full disk's RESOURCE_EXHAUSTED: a finished job waits out only the latter.
  EXPECT_TRUE(AdapterStore::IsQuotaError(quota)) << quota;
  EXPECT_FALSE(AdapterStore::IsQuotaError(absl::ResourceExhaustedError("no space left")));
  EXPECT_EQ(store_->Get("beta", a1->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Files("beta", a1->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("beta", a1->id()).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->Delete("acme", a1->id()).ok());
  EXPECT_EQ(store_->Files("acme", a1->id()).status().code(), absl::StatusCode::kNotFound);
  auto left = store_->Files("acme", a2->id());  // the other module is untouched
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->size(), 2u);
  EXPECT_EQ(store_->List("acme")->size(), 1u);
  EXPECT_EQ(store_->Create("acme", Meta(), dir_ + "/missing", 10).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qlorad::core
