// The inference runner against the real stories260K model: a tenant's adapter is read from the
// store once and then served from the device cache, yet a deleted adapter is never served and
// another tenant never sees it; base models beyond the runner's room are dropped, least
// recently served first.
#include "server/core/inference_runner.h"

#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/dataset.h"
#include "engine/device.h"
#include "engine/generate.h"
#include "engine/llama_model.h"
#include "engine/lora.h"
#include "engine/model_source.h"
#include "engine/peft_adapter.h"
#include "gtest/gtest.h"
#include "server/core/job_spec.h"
#include "tests/server/test_dirs.h"
#include "tests/server/test_inputs.h"

namespace qlorad::core {
namespace {

using ::qlorad::testing::FactsJsonl;
using ::qlorad::testing::StoriesGguf;

class InferenceRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::qlorad::testing::FreshTestDir("infer");
    auto db = storage::KvStore::Open(dir_ + "/db");
    ASSERT_TRUE(db.ok());
    db_ = std::move(*db);
    models_ = std::make_unique<ModelStore>(db_.get());
    datasets_ = std::make_unique<DatasetStore>(db_.get());
    adapters_ = std::make_unique<AdapterStore>(db_.get());
    auto model = models_->Register("stories", StoriesGguf());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    auto ds = datasets_->Create("a", "facts", FactsJsonl(), 1 << 20);
    ASSERT_TRUE(ds.ok());
    dataset_ = ds->id();
  }

  // A rank-4 adapter on every linear layer with random B (so it changes the model's output),
  // stored for `tenant`.
  std::string StoreRandomAdapter(const std::string& tenant, uint64_t seed,
                                 const std::string& base_model = "stories") {
    const LlamaConfig c = ConfigFromModel(model_);
    LoraConfig lora;
    lora.rank = 4;
    lora.alpha = 8.0f;
    const LoraLayout layout(c, lora);
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.3f);
    std::vector<float> params(layout.num_params());
    for (float& p : params) p = normal(rng);
    const std::string peft = dir_ + "/peft" + std::to_string(seed);
    EXPECT_TRUE(SavePeftAdapter(peft, c, lora, params).ok());
    v1::Adapter meta;
    meta.set_name("random");
    meta.set_base_model(base_model);
    auto stored = adapters_->Create(tenant, meta, peft, 10);
    EXPECT_TRUE(stored.ok()) << stored.status();
    return stored.ok() ? stored->id() : "";
  }

  absl::StatusOr<double> Loss(InferenceRunner& runner, const std::string& tenant,
                              const std::string& adapter_id, const std::string& model = "stories") {
    v1::EvaluateRequest req;
    req.set_model(model);
    req.set_dataset_id(dataset_);
    req.set_adapter_id(adapter_id);
    auto r = runner.Evaluate(tenant, req);
    if (!r.ok()) return r.status();
    return r->loss();
  }

  std::string dir_;
  std::unique_ptr<storage::KvStore> db_;
  std::unique_ptr<ModelStore> models_;
  std::unique_ptr<DatasetStore> datasets_;
  std::unique_ptr<AdapterStore> adapters_;
  v1::Model model_;
  std::string dataset_;
};

TEST_F(InferenceRunnerTest, AdapterIsReadOnceThenServedFromTheCache) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1,
                         /*cached_adapters=*/1);
  const std::string id = StoreRandomAdapter("a", 1);
  auto base = Loss(runner, "a", "");
  auto first = Loss(runner, "a", id);
  auto second = Loss(runner, "a", id);
  ASSERT_TRUE(base.ok() && first.ok() && second.ok());
  EXPECT_NE(*first, *base);    // the adapter is applied...
  EXPECT_EQ(*second, *first);  // ...the same way from the cache
  EXPECT_EQ(runner.adapter_loads(), 1);

  // Capacity 1: a second adapter evicts the first, which is then read again.
  const std::string other = StoreRandomAdapter("a", 2);
  ASSERT_TRUE(Loss(runner, "a", other).ok());
  EXPECT_EQ(*Loss(runner, "a", id), *first);
  EXPECT_EQ(runner.adapter_loads(), 3);
}

// An adapter answers only for the base model it was trained on: another one of the same shape
// (here the same file registered as "stories-copy", as a chat variant would be) is refused,
// naming the model to ask for, where it used to load and answer wrongly without a word.
TEST_F(InferenceRunnerTest, AnAdapterServesOnlyItsOwnBaseModel) {
  ASSERT_TRUE(models_->Register("stories-copy", StoriesGguf()).ok());
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1,
                         /*cached_adapters=*/2);
  const std::string id = StoreRandomAdapter("a", 1);
  ASSERT_TRUE(Loss(runner, "a", id).ok());  // cached now: the check is not the store's alone
  auto other = Loss(runner, "a", id, "stories-copy");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_NE(other.status().message().find("trained on base model 'stories'"), std::string::npos)
      << other.status();
  v1::GenerateRequest gen;
  gen.set_model("stories-copy");
  gen.set_adapter_id(id);
  gen.set_prompt("Once");
  gen.set_max_tokens(2);
  auto generated = runner.Generate("a", gen, [](const std::string&, int64_t) { return true; });
  EXPECT_EQ(generated.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(runner.model_loads(), 1);  // refused before the other model was loaded
  // Without the adapter the other model serves as before.
  EXPECT_TRUE(Loss(runner, "a", "", "stories-copy").ok());
  EXPECT_EQ(runner.model_loads(), 2);
}

// Least recently used goes first: with room for two, A B A C keeps A (used last but one) and
// drops B, so A is not read again (a first-in-first-out cache would drop A).
TEST_F(InferenceRunnerTest, TheLeastRecentlyUsedAdapterIsDropped) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1,
                         /*cached_adapters=*/2);
  const std::string a = StoreRandomAdapter("a", 4), b = StoreRandomAdapter("a", 5),
                    c = StoreRandomAdapter("a", 6);
  for (const std::string& id : {a, b, a, c, a}) ASSERT_TRUE(Loss(runner, "a", id).ok());
  EXPECT_EQ(runner.adapter_loads(), 3);
  ASSERT_TRUE(Loss(runner, "a", b).ok());  // dropped when C came in
  EXPECT_EQ(runner.adapter_loads(), 4);
}

// Base models served least recently go once more were asked for than there is room for: with
// room for two, S M2 S M3 keeps S (used last but one) and M3, so S is not loaded again, and M2
// is; at no time are more than two loaded.
TEST_F(InferenceRunnerTest, TheLeastRecentlyServedBaseModelIsDropped) {
  for (const char* name : {"m2", "m3"}) {
    ASSERT_TRUE(models_->Register(name, StoriesGguf()).ok());
  }
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1,
                         /*cached_adapters=*/4, /*cached_models=*/2);
  for (const char* m : {"stories", "m2", "stories", "m3", "stories"}) {
    ASSERT_TRUE(Loss(runner, "a", "", m).ok()) << m;
    EXPECT_LE(runner.models_loaded(), 2) << m;
  }
  EXPECT_EQ(runner.model_loads(), 3);
  ASSERT_TRUE(Loss(runner, "a", "", "m2").ok());  // dropped when m3 came in
  EXPECT_EQ(runner.model_loads(), 4);
  EXPECT_EQ(runner.models_loaded(), 2);
}

// A model deleted and registered again under its name is another copy: loaded anew (counted as
// a load), in place of the old one, which no request can reach any more.
TEST_F(InferenceRunnerTest, AModelRegisteredAgainIsLoadedAgainInPlaceOfTheOldCopy) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1,
                         /*cached_adapters=*/4, /*cached_models=*/2);
  auto before = Loss(runner, "a", "");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(Loss(runner, "a", "").ok());
  EXPECT_EQ(runner.model_loads(), 1);
  ASSERT_TRUE(models_->Delete("stories").ok());
  ASSERT_TRUE(models_->Register("stories", StoriesGguf()).ok());
  auto after = Loss(runner, "a", "");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *before);  // the same file
  EXPECT_EQ(runner.model_loads(), 2);
  EXPECT_EQ(runner.models_loaded(), 1);
}

// Requests take turns on the device; one whose client left gives up its wait, and an evaluation
// stops between examples once its client leaves.
TEST_F(InferenceRunnerTest, ARequestWhoseClientLeftStopsWaitingAndEvaluating) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  absl::Notification streaming, release;
  std::thread holder([&] {
    v1::GenerateRequest g;
    g.set_model("stories");
    g.set_max_tokens(8);
    auto r = runner.Generate("a", g, [&](const std::string&, int64_t) {
      if (!streaming.HasBeenNotified()) streaming.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(20));  // holds the device meanwhile
      return true;
    });
    EXPECT_TRUE(r.ok()) << r.status();
  });
  ASSERT_TRUE(streaming.WaitForNotificationWithTimeout(absl::Seconds(20)));
  v1::EvaluateRequest req;
  req.set_model("stories");
  req.set_dataset_id(dataset_);
  const absl::Time asked = absl::Now();
  auto waited = runner.Evaluate("a", req, [] { return true; });
  const absl::Duration took = absl::Now() - asked;
  release.Notify();
  holder.join();
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kCancelled) << waited.status();
  EXPECT_LT(took, absl::Seconds(5));  // not after the generation, which waits 20 s for us

  int asked_times = 0;  // the turn is free now: asked once before each example
  auto stopped = runner.Evaluate("a", req, [&] { return ++asked_times == 3; });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
  EXPECT_NE(stopped.status().message().find("stopped after 2 of 40 examples"), std::string::npos)
      << stopped.status();
  EXPECT_TRUE(Loss(runner, "a", "").ok());  // the device serves the next request
}

// Tenants take turns on the device: with a's three requests waiting before b's one, b's goes
// next, and a tenant's requests past the waiting bound are refused at once.
TEST_F(InferenceRunnerTest, TenantsTakeTurnsOnTheDevice) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  absl::Notification streaming, release;
  auto generate = [&](const std::string& tenant, const std::function<void()>& on_first) {
    v1::GenerateRequest g;
    g.set_model("stories");
    g.set_max_tokens(2);
    bool first = true;
    return runner.Generate(tenant, g, [&](const std::string&, int64_t) {
      if (first) on_first();
      first = false;
      return true;
    });
  };
  std::thread holder([&] {
    auto r = generate("a", [&] {
      streaming.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(20));  // holds the device meanwhile
    });
    EXPECT_TRUE(r.ok()) << r.status();
  });
  ASSERT_TRUE(streaming.WaitForNotificationWithTimeout(absl::Seconds(20)));
  absl::Mutex order_mu;
  std::vector<std::string> order;
  std::vector<std::thread> waiting;
  auto wait_for = [&](int n) {
    for (int i = 0; i < 2000 && runner.waiting_requests() < n; ++i) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_EQ(runner.waiting_requests(), n);
  };
  for (const std::string tenant : {"a", "a", "a", "b"}) {
    waiting.emplace_back([&, tenant] {
      auto r = generate(tenant, [&] {
        absl::MutexLock lock(&order_mu);
        order.push_back(tenant);
      });
      EXPECT_TRUE(r.ok()) << r.status();
    });
    wait_for(static_cast<int>(waiting.size()));  // in this order
  }
  std::vector<std::thread> more;
  for (int i = 0; i < InferenceRunner::kMaxWaitingPerTenant - 3; ++i) {
    more.emplace_back([&] { EXPECT_TRUE(generate("a", [] {}).ok()); });
  }
  wait_for(InferenceRunner::kMaxWaitingPerTenant + 1);
  auto refused = generate("a", [] {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  release.Notify();
  holder.join();
  for (auto& t : waiting) t.join();
  for (auto& t : more) t.join();
  ASSERT_GE(order.size(), 2u);
  EXPECT_EQ(order[0], "b");  // before a's, which came first: a had the last turn
}

// Sampling options out of range are refused naming the field, not silently replaced; a prompt
// that could never fit the context is refused before it is tokenized.
TEST_F(InferenceRunnerTest, BadGenerationRequestsNameTheField) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  auto generate = [&](const std::function<void(v1::GenerateRequest&)>& set) {
    v1::GenerateRequest g;
    g.set_model("stories");
    g.set_max_tokens(4);
    set(g);
    return runner.Generate("a", g, [](const std::string&, int64_t) { return true; }).status();
  };
  const struct {
    std::function<void(v1::GenerateRequest&)> set;
    std::string needle;
  } cases[] = {
      {[](v1::GenerateRequest& g) { g.set_max_tokens(-1); }, "max_tokens"},
      {[](v1::GenerateRequest& g) { g.set_top_p(std::nanf("")); }, "top_p"},
      {[](v1::GenerateRequest& g) { g.set_top_p(-0.5f); }, "top_p"},
      {[](v1::GenerateRequest& g) { g.set_temperature(-1.0f); }, "temperature"},
      {[](v1::GenerateRequest& g) { g.set_prompt(std::string(64 * 512 + 1, 'a')); }, "prompt"},
      {[](v1::GenerateRequest& g) {
         g.set_prompt("Hi");
         g.add_messages()->set_role("user");
       },
       "messages"},
      {[](v1::GenerateRequest& g) {
         auto* m = g.add_messages();
         m->set_role("narrator");
         m->set_content("Hi");
       },
       "messages[0].role"},
  };
  for (const auto& c : cases) {
    const absl::Status s = generate(c.set);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message().rfind(c.needle, 0), 0u) << s;
  }
  EXPECT_TRUE(generate([](v1::GenerateRequest&) {}).ok());  // unset top_p and temperature
}

// Each message carries the number of tokens generated so far; the end, all of them.
TEST_F(InferenceRunnerTest, GenerationCountsTokensNotMessages) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  v1::GenerateRequest g;
  g.set_model("stories");
  g.set_prompt("Once upon a time");
  g.set_max_tokens(24);
  g.set_temperature(0.8f);
  g.set_seed(3);
  std::vector<int64_t> counts;
  std::string text;
  auto done = runner.Generate("a", g, [&](const std::string& t, int64_t tokens) {
    text += t;
    counts.push_back(tokens);
    return true;
  });
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_FALSE(counts.empty());
  for (size_t i = 1; i < counts.size(); ++i) EXPECT_GT(counts[i], counts[i - 1]);
  EXPECT_LE(counts.back(), done->tokens);
  if (done->finish_reason == "max_tokens") {
    EXPECT_EQ(done->tokens, 24);
  }
  EXPECT_LE(done->tokens, 24);
  EXPECT_FALSE(text.empty());
}

// A conversation is answered from the chat layout jobs train on (ChatPromptTokens): the text is
// the engine's own greedy continuation of those tokens, which a prompt typed as the template
// would not give (its parts are tokenized apart in training).
TEST_F(InferenceRunnerTest, MessagesAreAnsweredInTheChatLayoutJobsTrainOn) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  v1::GenerateRequest g;
  g.set_model("stories");
  g.set_max_tokens(12);
  g.set_temperature(0.0f);
  auto* system = g.add_messages();
  system->set_role("system");
  system->set_content("You tell short stories.");
  auto* user = g.add_messages();
  user->set_role("user");
  user->set_content("Tell me about a cat.");
  std::string text;
  auto done = runner.Generate("a", g, [&](const std::string& t, int64_t) {
    text += t;
    return true;
  });
  ASSERT_TRUE(done.ok()) << done.status();

  auto source = OpenModelSource(StoriesGguf());
  ASSERT_TRUE(source.ok()) << source.status();
  std::unique_ptr<Device> cpu = CreateCpuDevice(1);
  auto model = LlamaModel::Create(std::move(source->weights), cpu.get(), {});
  ASSERT_TRUE(model.ok()) << model.status();
  auto prompt =
      ChatPromptTokens({{"system", "You tell short stories."}, {"user", "Tell me about a cat."}},
                       *source->tokenizer);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  SamplingOptions greedy;
  greedy.max_new_tokens = 12;
  auto expected = Generate(**model, *prompt, greedy);
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::vector<int32_t> all = *prompt;
  all.insert(all.end(), expected->tokens.begin(), expected->tokens.end());
  const std::string before = *source->tokenizer->Decode(*prompt);
  const std::string whole = *source->tokenizer->Decode(all);
  EXPECT_EQ(text, whole.substr(before.size()));
  EXPECT_EQ(done->tokens, static_cast<int64_t>(expected->tokens.size()));
}

// Evaluate holds the device for every tenant: a dataset past the bounds is refused naming the
// field (the bytes before waiting for the device, the tokens once counted), and the device
// serves the next request.
TEST_F(InferenceRunnerTest, EvaluateRefusesDatasetsPastItsBounds) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  const int64_t bytes = static_cast<int64_t>(FactsJsonl().size());
  runner.set_evaluate_limits(bytes - 1, InferenceRunner::kMaxEvaluateTokens);
  auto too_big = Loss(runner, "a", "");
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument) << too_big.status();
  EXPECT_NE(too_big.status().message().find("dataset_id: " + std::to_string(bytes) +
                                            " bytes; Evaluate reads at most"),
            std::string::npos)
      << too_big.status();
  runner.set_evaluate_limits(bytes, 100);
  auto too_long = Loss(runner, "a", "");
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument) << too_long.status();
  EXPECT_NE(too_long.status().message().find("tokens; Evaluate reads at most 100"),
            std::string::npos)
      << too_long.status();
  runner.set_evaluate_limits(bytes, InferenceRunner::kMaxEvaluateTokens);
  EXPECT_TRUE(Loss(runner, "a", "").ok());
}

TEST_F(InferenceRunnerTest, DeletedOrForeignAdaptersAreNeverServed) {
  InferenceRunner runner(models_.get(), datasets_.get(), adapters_.get(), dir_ + "/scratch", 1);
  const std::string id = StoreRandomAdapter("a", 3);
  ASSERT_TRUE(Loss(runner, "a", id).ok());  // now cached
  // Another tenant asking for it (with its own copy of the dataset) finds no such adapter.
  auto ds_b = datasets_->Create("b", "facts", FactsJsonl(), 1 << 20);
  ASSERT_TRUE(ds_b.ok());
  v1::EvaluateRequest req;
  req.set_model("stories");
  req.set_dataset_id(ds_b->id());
  req.set_adapter_id(id);
  EXPECT_TRUE(absl::IsNotFound(runner.Evaluate("b", req).status()));
  ASSERT_TRUE(adapters_->Delete("a", id).ok());
  auto gone = Loss(runner, "a", id);
  EXPECT_TRUE(absl::IsNotFound(gone.status())) << gone.status();
}

}  // namespace
}  // namespace qlorad::core
