// The training semantics users rely on (REFERENCE.md), one by one, plus resume equivalence.
#include "engine/trainer.h"

#include <cmath>
#include <filesystem>
#include <functional>

#include "engine/device.h"
#include "engine/evaluate.h"
#include "engine/mapped_file.h"
#include "engine/model_source.h"
#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::Stories260kHf;
using ::qlorad::testing::TempDir;

std::string DataFile(const std::string& name) {
  return std::string(QLORAD_TEST_DATA_DIR) + "/" + name;
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto src = OpenModelSource(Stories260kHf());
    ASSERT_TRUE(src.ok()) << src.status();
    tok_ = std::move(src->tokenizer);
    device_ = CreateCpuDevice();
    auto model = LlamaModel::Create(std::move(src->weights), device_.get(), {});
    ASSERT_TRUE(model.ok());
    model_ = std::move(*model);
    auto text = ReadFileToString(DataFile("facts_train.jsonl"));
    ASSERT_TRUE(text.ok());
    auto ex = TokenizeJsonl(*text, *tok_, "facts_train.jsonl");
    ASSERT_TRUE(ex.ok()) << ex.status();
    examples_ = *ex;
  }
  std::vector<TrainingRow> Rows(bool packing = false, int64_t seq_len = 48) {
    auto rows = BuildRows(examples_, {seq_len, packing}, "facts");
    EXPECT_TRUE(rows.ok());
    return *rows;
  }
  // facts_valid.jsonl: the training facts reworded.
  std::vector<TrainingRow> ValidRows() {
    auto text = ReadFileToString(DataFile("facts_valid.jsonl"));
    EXPECT_TRUE(text.ok());
    auto ex = TokenizeJsonl(text.ok() ? *text : "", *tok_, "facts_valid.jsonl");
    EXPECT_TRUE(ex.ok()) << ex.status();
    auto rows = BuildRows(ex.ok() ? *ex : std::vector<TokenizedExample>{}, {48, false}, "valid");
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? *rows : std::vector<TrainingRow>{};
  }
  // A run that overfits the training prompts (lr 1e-2): the reworded validation prompts' loss
  // falls, then rises. Evaluated every 5 steps; the losses go to `evals`. Null if it failed.
  std::unique_ptr<Trainer> RunOverfitting(int64_t max_steps, int64_t patience,
                                          const std::vector<TrainingRow>& valid,
                                          std::vector<double>* evals) {
    TrainerOptions o = Small();
    o.learning_rate = 1e-2;
    o.max_steps = max_steps;
    o.eval_every = 5;
    o.early_stopping_patience = patience;
    auto t = Make(o, Rows(), valid);
    const absl::Status run = t->Run([&](const StepReport& r) {
      if (r.eval_loss) evals->push_back(*r.eval_loss);
      return true;
    });
    EXPECT_TRUE(run.ok()) << run;
    return run.ok() ? std::move(t) : nullptr;
  }
  static TrainerOptions Small() {
    TrainerOptions o;
    o.lora.rank = 4;
    o.lora.alpha = 8;
    o.lora.dropout = 0.05f;
    o.learning_rate = 3e-3;
    o.batch_size = 4;
    o.grad_accum = 2;
    o.max_steps = 20;
    o.seed = 17;
    return o;
  }
  std::unique_ptr<Trainer> Make(const TrainerOptions& o, std::vector<TrainingRow> rows = {},
                                std::vector<TrainingRow> valid = {}) {
    auto t = Trainer::Create(model_.get(), rows.empty() ? Rows() : rows, std::move(valid), o);
    EXPECT_TRUE(t.ok()) << t.status();
    return std::move(*t);
  }

  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<LlamaModel> model_;
  std::vector<TokenizedExample> examples_;
};

// A device whose reads fail (as a CUDA device's do after an error: NaN) makes the step return
// the device's error, not "loss became nan; lower the learning rate", and nothing of it is
// stored: the checkpoint refuses to write. A lost device stays lost; one that recovered (out
// of memory) trains on.
TEST_F(TrainerTest, DeviceFailuresAreReportedAndNeverStored) {
  for (const absl::Status& fault :
       {absl::UnavailableError("lost (injected)"), absl::ResourceExhaustedError("no memory")}) {
    SCOPED_TRACE(fault.ToString());
    auto src = OpenModelSource(Stories260kHf());
    ASSERT_TRUE(src.ok()) << src.status();
    // One read a step: step 1 reads fine, step 2 meets the fault.
    auto device = CreateCpuDevice(0, CpuDeviceFaults{1, fault});
    auto model = LlamaModel::Create(std::move(src->weights), device.get(), {});
    ASSERT_TRUE(model.ok());
    auto t = Trainer::Create(model->get(), Rows(), {}, Small());
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->RunUntil(1).ok());
    const absl::Status failed = (*t)->RunUntil(2);
    EXPECT_EQ(failed.code(), fault.code()) << failed;
    EXPECT_EQ((*t)->step(), 1);  // the optimizer did not step on NaN
    const std::string dir = TempDir("faulty") + "/ckpt";
    if (absl::IsUnavailable(fault)) {
      EXPECT_TRUE(absl::IsUnavailable((*t)->SaveCheckpoint(dir)));
      EXPECT_FALSE(std::filesystem::exists(dir + ".partial/adapter_model.safetensors"));
      EXPECT_FALSE(std::filesystem::exists(dir));
      EXPECT_TRUE(absl::IsUnavailable((*t)->ReadParams().status()));
    } else {
      EXPECT_TRUE((*t)->RunUntil(3).ok());  // the error was taken: the device works again
      EXPECT_EQ((*t)->step(), 3);
      EXPECT_TRUE((*t)->SaveCheckpoint(dir).ok());
    }
  }
}

TEST_F(TrainerTest, TenStepsSaveRestoreTenStepsEqualsTwentyStraight) {
  const std::string dir = TempDir("resume") + "/ckpt";
  auto straight = Make(Small());
  ASSERT_TRUE(straight->RunUntil(20).ok());
  auto first = Make(Small());
  ASSERT_TRUE(first->RunUntil(10).ok());
  ASSERT_TRUE(first->SaveCheckpoint(dir).ok());
  first.reset();
  auto resumed = Make(Small());
  ASSERT_TRUE(resumed->LoadCheckpoint(dir).ok());
  EXPECT_EQ(resumed->step(), 10);
  ASSERT_TRUE(resumed->RunUntil(20).ok());
  EXPECT_EQ(resumed->params(), straight->params());  // bitwise
  // A checkpoint from other options is refused rather than silently mixed.
  TrainerOptions other = Small();
  other.seed = 18;
  auto mismatched = Make(other);
  const absl::Status s = mismatched->LoadCheckpoint(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  // So is one from other data with as many rows (one token of one row differs).
  std::vector<TrainingRow> edited = Rows();
  edited[0].tokens[1] = edited[0].tokens[1] == 5 ? 6 : 5;
  auto other_data = Make(Small(), edited);
  const absl::Status d = other_data->LoadCheckpoint(dir);
  EXPECT_EQ(d.code(), absl::StatusCode::kFailedPrecondition) << d;
  EXPECT_NE(d.message().find("training set"), std::string::npos) << d;
  // And one resumed with another learning rate or alpha, named with both values: the same step
  // count, seed and rows would otherwise go on as another run.
  TrainerOptions other_lr = Small();
  other_lr.learning_rate = 1e-3;
  const absl::Status lr = Make(other_lr)->LoadCheckpoint(dir);
  EXPECT_EQ(lr.code(), absl::StatusCode::kFailedPrecondition) << lr;
  EXPECT_NE(lr.message().find("learning_rate (0.003, now 0.001)"), std::string::npos) << lr;
  TrainerOptions other_alpha = Small();
  other_alpha.lora.alpha = 16;
  const absl::Status alpha = Make(other_alpha)->LoadCheckpoint(dir);
  EXPECT_NE(alpha.message().find("alpha (8.0, now 16.0)"), std::string::npos) << alpha;
}

// A step interrupted between its micro-batches (a stop, a cancel) ends unapplied: the trainer
// goes on as if it had never begun it, bitwise.
TEST_F(TrainerTest, AnInterruptedStepLeavesNoTrace) {
  auto straight = Make(Small());
  ASSERT_TRUE(straight->RunUntil(3).ok());
  auto t = Make(Small());
  ASSERT_TRUE(t->RunUntil(1).ok());
  const std::vector<float> before = t->params();
  int asked = 0;
  t->set_interrupt([&] { return ++asked == 2; });  // after the first of step 2's 2 micro-batches
  const absl::Status s = t->RunUntil(3);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(t->step(), 1);
  EXPECT_EQ(t->params(), before);
  t->set_interrupt(nullptr);
  ASSERT_TRUE(t->RunUntil(3).ok());
  EXPECT_EQ(t->params(), straight->params());
}

// An evaluation cut by the interrupt (a stop, a pause, a cancel during up to 8M validation
// tokens) keeps the step before it: RunUntil reports that step without its evaluation and
// returns ABORTED, and the evaluation is pending, kept in a checkpoint. The next run does it
// first, reporting the step again with the same loss, and goes on to the same adapter and the
// same evaluations as a run never interrupted.
TEST_F(TrainerTest, AnEvaluationCutByTheInterruptIsDoneFirstWhenTheRunGoesOn) {
  TrainerOptions o = Small();
  o.max_steps = 4;
  o.eval_every = 2;
  struct Seen {
    int64_t step;
    std::optional<double> eval;
    bool repeated;
  };
  auto record = [](std::vector<Seen>* seen) {
    return [seen](const StepReport& r) {
      seen->push_back({r.step, r.eval_loss, r.repeated});
      return true;
    };
  };
  std::vector<Seen> straight_seen;
  auto straight = Make(o, Rows(), ValidRows());
  ASSERT_TRUE(straight->Run(record(&straight_seen)).ok());
  ASSERT_EQ(straight_seen.size(), 4u);
  ASSERT_TRUE(straight_seen[1].eval.has_value());

  for (const bool through_a_checkpoint : {false, true}) {
    SCOPED_TRACE(through_a_checkpoint ? "through a checkpoint" : "on the same trainer");
    auto t = Make(o, Rows(), ValidRows());
    int asked = 0;
    // Steps 1 and 2 ask twice each (two micro-batches); the 5th asks before step 2's
    // evaluation's first batch.
    t->set_interrupt([&] { return ++asked == 5; });
    std::vector<Seen> seen;
    const absl::Status s = t->RunUntil(4, record(&seen));
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
    EXPECT_EQ(t->step(), 2);
    EXPECT_TRUE(t->evaluation_pending());
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[1].step, 2);
    EXPECT_FALSE(seen[1].eval.has_value());
    t->set_interrupt(nullptr);
    if (through_a_checkpoint) {
      const std::string dir = TempDir("cut-evaluation") + "/ckpt";
      ASSERT_TRUE(t->SaveCheckpoint(dir).ok());
      t = Make(o, Rows(), ValidRows());
      ASSERT_TRUE(t->LoadCheckpoint(dir).ok());
      EXPECT_TRUE(t->evaluation_pending());
      EXPECT_EQ(t->step(), 2);
    }
    seen.clear();
    ASSERT_TRUE(t->Run(record(&seen)).ok());
    ASSERT_EQ(seen.size(), 3u);  // step 2 again, with its evaluation; then steps 3 and 4
    EXPECT_EQ(seen[0].step, 2);
    EXPECT_TRUE(seen[0].repeated);
    ASSERT_TRUE(seen[0].eval.has_value());
    EXPECT_EQ(*seen[0].eval, *straight_seen[1].eval);
    EXPECT_FALSE(seen[1].repeated);
    EXPECT_EQ(seen[2].eval, straight_seen[3].eval);
    EXPECT_FALSE(t->evaluation_pending());
    EXPECT_EQ(t->params(), straight->params());
  }
}

// A damaged trainer_state.json (a field of the wrong type, a step past the end) is an error that
// names the field, never an exception, and leaves the trainer as it was.
TEST_F(TrainerTest, ADamagedCheckpointIsRefusedNamingTheField) {
  const std::string dir = TempDir("damaged") + "/ckpt";
  auto first = Make(Small());
  ASSERT_TRUE(first->RunUntil(2).ok());
  ASSERT_TRUE(first->SaveCheckpoint(dir).ok());
  const std::string state_path = dir + "/trainer_state.json";
  auto state = ReadFileToString(state_path);
  ASSERT_TRUE(state.ok());
  struct Case {
    std::string from, to, field;
  };
  for (const Case& c :
       {Case{"\"step\": 2", "\"step\": \"2\"", "'step'"},
        Case{"\"step\": 2", "\"step\": 21", "'step'"},
        Case{"\"num_params\": ", "\"num_params\": [], \"x\": ", "'num_params'"},
        Case{"\"seed\": 17", "\"seed\": -17", "'seed'"},
        Case{"\"stopped_early\": false", "\"stopped_early\": 0", "'stopped_early'"},
        Case{"\"stopped_early\": false", "\"stopped_early\": false, \"evaluation_pending\": 1",
             "'evaluation_pending'"},
        Case{"\"stopped_early\": false", "\"stopped_early\": false, \"evaluation_pending\": true",
             "'pending_step'"},
        Case{"\"stopped_early\": false",
             "\"stopped_early\": false, \"evaluation_pending\": true, \"pending_step\": "
             "{\"epoch\": -1, \"loss\": 1, \"learning_rate\": 0, \"grad_norm\": 0}",
             "'pending_step.epoch'"}}) {
    std::string damaged = *state;
    const size_t at = damaged.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from << " in " << damaged;
    damaged.replace(at, c.from.size(), c.to);
    ASSERT_TRUE(WriteStringToFile(state_path, damaged).ok());
    auto t = Make(Small());
    const absl::Status s = t->LoadCheckpoint(dir);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.to << ": " << s;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
    EXPECT_EQ(t->step(), 0);
  }
}

// A save replaces its folder and deletes the folder's .partial and .old siblings: never one
// holding anything but a checkpoint of ours (a user's backup, another tool's checkpoint).
TEST_F(TrainerTest, ASaveNeverReplacesAFolderThatIsNotOurCheckpoint) {
  auto t = Make(Small());
  ASSERT_TRUE(t->RunUntil(1).ok());
  const std::string root = TempDir("ckpt_guard");
  for (const char* taken : {"/ckpt", "/ckpt.old", "/ckpt.partial"}) {
    SCOPED_TRACE(taken);
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(root + taken);
    ASSERT_TRUE(WriteStringToFile(root + taken + "/notes.txt", "mine").ok());
    const absl::Status s = t->SaveCheckpoint(root + "/ckpt");
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_TRUE(std::filesystem::exists(root + taken + "/notes.txt"));
  }
  // Another tool's checkpoint (a trainer_state.json, no optimizer.safetensors) is not ours.
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root + "/ckpt");
  ASSERT_TRUE(WriteStringToFile(root + "/ckpt/trainer_state.json", "{}").ok());
  EXPECT_FALSE(t->SaveCheckpoint(root + "/ckpt").ok());
  // Ours is replaced, as is an empty folder.
  std::filesystem::remove_all(root + "/ckpt");
  std::filesystem::create_directories(root + "/ckpt");
  ASSERT_TRUE(t->SaveCheckpoint(root + "/ckpt").ok());
  ASSERT_TRUE(t->RunUntil(2).ok());
  ASSERT_TRUE(t->SaveCheckpoint(root + "/ckpt").ok());
}

TEST_F(TrainerTest, SameSeedSameAdapterOtherSeedOtherAdapter) {
  auto a = Make(Small()), b = Make(Small());
  ASSERT_TRUE(a->RunUntil(3).ok());
  ASSERT_TRUE(b->RunUntil(3).ok());
  EXPECT_EQ(a->params(), b->params());
  TrainerOptions o = Small();
  o.seed = 99;
  auto c = Make(o);
  ASSERT_TRUE(c->RunUntil(3).ok());
  EXPECT_NE(a->params(), c->params());
}

// With accumulation the loss is normalised by the target tokens of the whole accumulated
// batch, so 4 x 2 gives the gradient (and the update) of one batch of 8.
TEST_F(TrainerTest, GradientAccumulationEqualsOneLargeBatch) {
  TrainerOptions big = Small(), acc = Small();
  big.lora.dropout = acc.lora.dropout = 0.0f;
  big.max_grad_norm = acc.max_grad_norm = 0.0;  // compare raw updates
  big.batch_size = 8;
  big.grad_accum = 1;
  acc.batch_size = 2;
  acc.grad_accum = 4;
  auto a = Make(big), b = Make(acc);
  std::vector<StepReport> ra, rb;
  ASSERT_TRUE(a->RunUntil(2, [&](const StepReport& r) {
                 ra.push_back(r);
                 return true;
               }).ok());
  ASSERT_TRUE(b->RunUntil(2, [&](const StepReport& r) {
                 rb.push_back(r);
                 return true;
               }).ok());
  EXPECT_NEAR(ra[0].loss, rb[0].loss, 1e-5);
  EXPECT_NEAR(ra[0].grad_norm, rb[0].grad_norm, 1e-4 * ra[0].grad_norm);
  const auto pa = a->params(), pb = b->params();
  double max_diff = 0;
  for (size_t i = 0; i < pa.size(); ++i)
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(pa[i]) - pb[i]));
  EXPECT_LT(max_diff, 1e-5);
}

// The micro-batches of one step draw their own dropout masks. They used to share the step's:
// two micro-batches of the same row then gave exactly the gradient of one, as if with one.
TEST_F(TrainerTest, EachMicroBatchOfAStepDrawsItsOwnDropoutMasks) {
  const TrainingRow row = Rows()[0];
  for (const float dropout : {0.0f, 0.1f}) {
    SCOPED_TRACE(dropout);
    TrainerOptions twice = Small(), once = Small();
    twice.lora.dropout = once.lora.dropout = dropout;
    twice.batch_size = once.batch_size = 1;
    twice.grad_accum = 2;  // the row twice, in two micro-batches
    once.grad_accum = 1;
    auto a = Make(twice, {row, row}), b = Make(once, {row});
    // Three steps: the first one's update is about lr * sign(gradient) (AdamW's first step), and
    // B = 0 keeps A's gradient at 0 until then.
    ASSERT_TRUE(a->RunUntil(3).ok());
    ASSERT_TRUE(b->RunUntil(3).ok());
    if (dropout == 0.0f) {
      EXPECT_EQ(a->params(), b->params());  // the setup differs in nothing else
    } else {
      EXPECT_NE(a->params(), b->params());
    }
  }
}

// Packed examples never attend to each other: the loss of a packed set equals the unpacked one.
TEST_F(TrainerTest, PackingDoesNotLetExamplesAttendToEachOther) {
  auto t = Make(Small());
  ASSERT_TRUE(t->RunUntil(2).ok());  // a non-trivial adapter
  const auto unpacked = Rows(false, 96), packed = Rows(true, 96);
  EXPECT_LT(packed.size(), unpacked.size());
  auto lu = t->EvaluateLoss(unpacked), lp = t->EvaluateLoss(packed);
  ASSERT_TRUE(lu.ok() && lp.ok());
  EXPECT_NEAR(*lu, *lp, 1e-5);
  // And the training graph's loss equals the inference forward pass's.
  auto adapter_params = t->params();
  LoraWeights lw{&t->layout(), adapter_params.data(), t->options().lora.rank,
                 t->options().lora.scale()};
  auto inference = EvaluateExamples(*model_, examples_, 96, &lw);
  ASSERT_TRUE(inference.ok());
  EXPECT_NEAR(inference->loss, *lu, 1e-4);
}

TEST_F(TrainerTest, ScheduleFollowsTransformers) {
  // cosine, 100 steps, 3% warmup -> 3 warmup steps.
  EXPECT_EQ(WarmupSteps(0.03, 100), 3);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kCosine, 1.0, 0, 3, 100), 0.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kCosine, 1.0, 1, 3, 100), 1.0 / 3);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kCosine, 1.0, 3, 3, 100), 1.0);
  EXPECT_NEAR(LearningRateAt(LrSchedule::kCosine, 1.0, 3 + 97 / 2.0, 3, 100), 0.5, 0.02);
  EXPECT_NEAR(LearningRateAt(LrSchedule::kCosine, 1.0, 99, 3, 100),
              0.5 * (1 + std::cos(M_PI * 96 / 97)), 1e-12);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kLinear, 2.0, 50, 0, 100), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(LrSchedule::kConstant, 2.0, 99, 10, 100), 2.0);
}

TEST_F(TrainerTest, DefaultsAreTheCommonOnes) {
  const TrainerOptions o;
  EXPECT_EQ(o.lora.rank, 16);
  EXPECT_EQ(o.lora.alpha, 32.0f);
  EXPECT_FLOAT_EQ(o.lora.dropout, 0.05f);
  EXPECT_EQ(o.lora.target_modules.size(), 7u);
  EXPECT_DOUBLE_EQ(o.learning_rate, 2e-4);
  EXPECT_EQ(o.schedule, LrSchedule::kCosine);
  EXPECT_DOUBLE_EQ(o.warmup_ratio, 0.03);
  EXPECT_DOUBLE_EQ(o.max_grad_norm, 1.0);
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.0);
}

TEST_F(TrainerTest, WatchdogFailsABlowUpWithAClearReason) {
  TrainerOptions o = Small();
  o.learning_rate = 1.0;  // the largest a job may ask for, and absurd
  o.max_grad_norm = 0.0;
  o.blowup_ratio = 0.2;  // stricter than the default, so that 20 steps show it
  o.blowup_margin = 1.0;
  auto t = Make(o);
  absl::Status s = t->RunUntil(20);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("loss blew up at step"), std::string::npos) << s;
  EXPECT_NE(s.message().find("lower the learning rate"), std::string::npos) << s;
  // Weights that overflow make the loss NaN: named as such.
  o = Small();
  o.learning_rate = 1.0;
  o.weight_decay = 10.0;   // both the largest allowed: p *= 1 - lr*wd = -9 every step
  o.blowup_margin = 1e30;  // the rise alone would be named first
  auto u = Make(o);
  s = u->RunUntil(40);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s.message().find("loss became nan") != std::string::npos ||
              s.message().find("loss became inf") != std::string::npos ||
              s.message().find("gradient norm became") != std::string::npos)
      << s;
}

TEST_F(TrainerTest, EarlyStoppingKeepsTheBestAdapter) {
  const std::vector<TrainingRow> vrows = ValidRows();
  ASSERT_FALSE(vrows.empty());
  std::vector<double> evals;
  auto t = RunOverfitting(200, 2, vrows, &evals);
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(t->stopped_early());
  EXPECT_LT(t->step(), 200);
  ASSERT_TRUE(t->best_eval_loss().has_value());
  EXPECT_EQ(*t->best_eval_loss(), *std::min_element(evals.begin(), evals.end()));
  auto now = t->EvaluateLoss(vrows);
  ASSERT_TRUE(now.ok());
  EXPECT_NEAR(*now, *t->best_eval_loss(), 1e-9);  // the kept adapter is the best one
}

// Early stopping keeps the best adapter also where the last step comes before the patience runs
// out. It used to keep the last one, labelled with the best loss. Without early stopping the
// last adapter is kept, labelled with its own loss.
TEST_F(TrainerTest, TheBestAdapterIsKeptWhenTrainingEndsBeforeThePatience) {
  const std::vector<TrainingRow> vrows = ValidRows();
  ASSERT_FALSE(vrows.empty());
  for (const int64_t patience : {int64_t{1000}, int64_t{0}}) {
    SCOPED_TRACE(patience);
    std::vector<double> evals;
    auto t = RunOverfitting(60, patience, vrows, &evals);
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(evals.size(), 12u);
    const auto best = std::min_element(evals.begin(), evals.end());
    ASSERT_GT(evals.back(), *best) << "the setup must overfit before its last step";
    EXPECT_FALSE(t->stopped_early());
    EXPECT_EQ(t->step(), 60);
    auto now = t->EvaluateLoss(vrows);
    ASSERT_TRUE(now.ok());
    ASSERT_TRUE(t->kept_eval_loss().has_value());
    EXPECT_NEAR(*now, *t->kept_eval_loss(), 1e-9);  // the label is the kept adapter's loss
    if (patience > 0) {
      EXPECT_EQ(*t->kept_eval_loss(), *best);
      EXPECT_EQ(t->kept_step(), 5 * (best - evals.begin() + 1));
    } else {
      EXPECT_EQ(*t->kept_eval_loss(), evals.back());
      EXPECT_EQ(t->kept_step(), 60);
    }
  }
}

TEST_F(TrainerTest, CancellationStopsWithinOneStep) {
  auto t = Make(Small());
  int seen = 0;
  const absl::Status s = t->Run([&](const StepReport&) { return ++seen < 3; });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(t->step(), 3);
}

TEST_F(TrainerTest, BadOptionsAreRejected) {
  TrainerOptions o = Small();
  o.batch_size = 0;
  EXPECT_EQ(Trainer::Create(model_.get(), Rows(), {}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Small();
  o.lora.target_modules = {"q_proj", "lm_head"};
  EXPECT_EQ(Trainer::Create(model_.get(), Rows(), {}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (const bool evals : {false, true}) {  // evaluations without a validation set
    o = Small();
    (evals ? o.eval_every : o.early_stopping_patience) = 2;
    EXPECT_EQ(Trainer::Create(model_.get(), Rows(), {}, o).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Trainer::Create(model_.get(), Rows(false, 600), {}, Small()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// One set of bounds serves the daemon and qlora-engine, each naming the field its own way.
TEST(TrainerOptionsTest, BoundsNameTheFieldAsTheCallerSpellsIt) {
  struct Case {
    std::function<void(TrainerOptions&)> set;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](auto& o) { o.lora.rank = 0; }, "rank"},
      {[](auto& o) { o.lora.alpha = 1e38f; }, "alpha"},
      {[](auto& o) { o.lora.dropout = 1.0f; }, "dropout"},
      {[](auto& o) { o.lora.target_modules = {"lm_head"}; }, "target_modules"},
      {[](auto& o) { o.learning_rate = 2.0; }, "learning_rate"},
      {[](auto& o) { o.learning_rate = std::nan(""); }, "learning_rate"},
      {[](auto& o) { o.warmup_ratio = 1.0; }, "warmup_ratio"},
      {[](auto& o) { o.epochs = 1001; }, "epochs"},
      {[](auto& o) { o.max_steps = -1; }, "max_steps"},
      {[](auto& o) { o.batch_size = 0; }, "batch_size"},
      {[](auto& o) { o.grad_accum = 1025; }, "grad_accum"},
      {[](auto& o) { o.weight_decay = 11; }, "weight_decay"},
      {[](auto& o) { o.max_grad_norm = -1; }, "max_grad_norm"},
      {[](auto& o) { o.max_grad_norm = INFINITY; }, "max_grad_norm"},
      {[](auto& o) { o.eval_every = -1; }, "eval_every"},
      {[](auto& o) { o.early_stopping_patience = -1; }, "early_stopping_patience"},
  };
  EXPECT_TRUE(TrainerOptions().Validate().ok());
  for (const Case& c : cases) {
    TrainerOptions o;
    c.set(o);
    const absl::Status plain = o.Validate();
    EXPECT_EQ(plain.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(std::string(plain.message()).rfind(c.field + ": ", 0), 0u) << plain;
    const absl::Status named = o.Validate([](const std::string& f) { return "<" + f + ">"; });
    EXPECT_EQ(std::string(named.message()).rfind("<" + c.field + ">: ", 0), 0u) << named;
  }
}

}  // namespace
}  // namespace qlorad
