// Runs the qlora-engine binary as a user would.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "tests/engine/test_models.h"

namespace qlorad {
namespace {

using ::qlorad::testing::kStoriesGreedyText;
using ::qlorad::testing::Stories260kDir;
using ::qlorad::testing::Stories260kGguf;
using ::qlorad::testing::TempDir;

struct CliRun {
  int exit_code;
  std::string out;
};

CliRun RunEngine(const std::string& args, bool merge_stderr = false) {
  const std::string cmd =
      std::string(QLORAD_ENGINE_BINARY) + " " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  CliRun r{-1, ""};
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(QloraEngineCli, ConvertThenGenerateGreedyPrintsThePublishedText) {
  const std::string out = TempDir("cli_convert") + "/stories";
  const CliRun convert =
      RunEngine("convert-llama2c --checkpoint " + Stories260kDir() +
                "/stories260K.bin --tokenizer " + Stories260kDir() + "/tok512.bin --out " + out);
  ASSERT_EQ(convert.exit_code, 0);
  EXPECT_TRUE(std::filesystem::exists(out + "/tokenizer.model"));
  for (const std::string& model : {out, Stories260kGguf()}) {
    const CliRun gen =
        RunEngine("generate --model " + model + " --max-tokens 120 --temperature 0 --fp32");
    ASSERT_EQ(gen.exit_code, 0) << model;
    const std::string expected = kStoriesGreedyText;
    ASSERT_GT(gen.out.size(), 300u) << gen.out;
    EXPECT_EQ(gen.out.substr(0, 300), expected.substr(0, 300)) << model;
  }
}

TEST(QloraEngineCli, PromptIsContinuedNotEchoed) {
  const CliRun gen =
      RunEngine("generate --model " + Stories260kGguf() +
                " --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --fp32");
  ASSERT_EQ(gen.exit_code, 0);
  EXPECT_EQ(gen.out.rfind(", there was a little girl", 0), 0u) << gen.out;
}

// generate's defaults are the daemon's Generate's: 64 tokens, greedy.
TEST(QloraEngineCli, GenerateDefaultsToTheDaemonsGreedy64Tokens) {
  const std::string model = " --model " + Stories260kGguf() + " --fp32";
  const CliRun plain = RunEngine("generate" + model);
  const CliRun greedy = RunEngine("generate" + model + " --max-tokens 64 --temperature 0");
  ASSERT_EQ(plain.exit_code, 0);
  ASSERT_EQ(greedy.exit_code, 0);
  EXPECT_EQ(plain.out, greedy.out);
  EXPECT_NE(plain.out, RunEngine("generate" + model + " --max-tokens 65 --temperature 0").out);
}

TEST(QloraEngineCli, QuantizeReportsBitsAndWritesALoadableModel) {
  const std::string out = TempDir("cli_quant") + "/q";
  const CliRun q = RunEngine("quantize --model " + Stories260kGguf() + " --out " + out);
  ASSERT_EQ(q.exit_code, 0) << q.out;
  // 4.127 bits/param plus, on these small tensors, the per-tensor offset and a partial nested
  // block.
  const size_t at = q.out.find(" bits/param");
  ASSERT_NE(at, std::string::npos) << q.out;
  const double bits = std::stod(q.out.substr(q.out.rfind(' ', at - 1) + 1));
  EXPECT_GT(bits, 4.127);
  EXPECT_LT(bits, 4.15);
  EXPECT_NE(q.out.find("relative rms"), std::string::npos) << q.out;
  const CliRun gen =
      RunEngine("generate --model " + out + " --max-tokens 16 --temperature 0.8 --seed 3");
  ASSERT_EQ(gen.exit_code, 0);
  EXPECT_FALSE(gen.out.empty());
  EXPECT_NE(RunEngine("generate --model " + out + " --max-tokens 4 --fp32").exit_code, 0);
}

std::string DataFile(const std::string& name) {
  return std::string(QLORAD_TEST_DATA_DIR) + "/" + name;
}

double EvalLoss(const std::string& out) {
  const size_t at = out.find("loss ");
  return at == std::string::npos ? -1.0 : std::stod(out.substr(at + 5));
}

// --device picks where the engine runs: "cpu" and "auto" (the CPU on a machine without a GPU,
// as here and in CI) give the published greedy text; a name that is no device, or a GPU that is
// not there, stops the command with the flag named.
TEST(QloraEngineCli, DeviceFlagChoosesOrRefusesTheDevice) {
  const std::string expected = kStoriesGreedyText;
  for (const char* device : {"cpu", "auto"}) {
    const CliRun gen = RunEngine("generate --model " + Stories260kGguf() +
                                 " --max-tokens 60 --temperature 0 --fp32 --device " + device);
    ASSERT_EQ(gen.exit_code, 0) << device;
    EXPECT_EQ(gen.out.substr(0, 150), expected.substr(0, 150)) << device;
  }
  for (const char* device : {"gpu", "cuda:x", "cuda:63"}) {
    const CliRun bad = RunEngine("eval --model " + Stories260kGguf() + " --data " +
                                     DataFile("facts_valid.jsonl") + " --device " + device,
                                 /*merge_stderr=*/true);
    EXPECT_NE(bad.exit_code, 0) << device;
    EXPECT_NE(bad.out.find("--device"), std::string::npos) << bad.out;
  }
}

TEST(QloraEngineCli, TrainEvalResumeMergeAndGenerateWithTheAdapter) {
  const std::string model = ::qlorad::testing::Stories260kHf();
  const std::string dir = TempDir("cli_train");
  const std::string common =
      " --model " + model + " --data " + DataFile("facts_train.jsonl") + " --valid " +
      DataFile("facts_valid.jsonl") +
      " --rank 8 --alpha 16 --dropout 0 --lr 3e-3 --schedule constant --warmup-ratio 0"
      " --max-steps 60 --batch-size 8 --seq-len 64 --seed 3 --eval-every 20";
  CliRun train =
      RunEngine("train" + common + " --out " + dir + "/adapter --checkpoint-every 20", true);
  ASSERT_EQ(train.exit_code, 0) << train.out;
  EXPECT_NE(train.out.find("46240 trainable parameters"), std::string::npos)
      << train.out;  // r*(in+out) summed
  EXPECT_NE(train.out.find("step 60/60"), std::string::npos) << train.out;
  EXPECT_NE(train.out.find("tok/s | eta"), std::string::npos) << train.out;
  EXPECT_NE(train.out.find("| eval "), std::string::npos) << train.out;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "training_summary.json",
                        "checkpoint/optimizer.safetensors", "checkpoint/trainer_state.json"}) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/adapter/" + f)) << f;
  }
  // Resuming from the last checkpoint of a finished run has nothing left to do. The seed comes
  // from the checkpoint where none is given (a resume with another one is refused).
  std::string no_seed = common;
  no_seed.replace(no_seed.find(" --seed 3"), 9, "");
  CliRun resumed = RunEngine(
      "train" + no_seed + " --out " + dir + "/again --resume " + dir + "/adapter/checkpoint", true);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("resumed at step 60"), std::string::npos) << resumed.out;
  EXPECT_NE(resumed.out.find("seed 3,"), std::string::npos) << resumed.out;
  // A checkpoint whose last evaluation was cut (the daemon's pause or stop) is resumed with
  // that evaluation first: step 60's, the same loss as the run's own.
  const std::string pending = dir + "/pending";
  std::filesystem::copy(dir + "/adapter/checkpoint", pending);
  std::string state;
  {
    std::ifstream in(pending + "/trainer_state.json");
    state.assign(std::istreambuf_iterator<char>(in), {});
  }
  const size_t at = state.find("\"stopped_early\": false");
  ASSERT_NE(at, std::string::npos) << state;
  state.insert(at,
               "\"evaluation_pending\": true, \"pending_step\": {\"epoch\": 0, \"loss\": 1, "
               "\"learning_rate\": 0.003, \"grad_norm\": 1}, ");
  std::ofstream(pending + "/trainer_state.json") << state;
  CliRun evaluated =
      RunEngine("train" + common + " --out " + dir + "/evaluated --resume " + pending, true);
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.out;
  const size_t last_line = train.out.find("step 60/60");
  ASSERT_NE(last_line, std::string::npos);
  const size_t eval_at = train.out.find("| eval ", last_line);
  ASSERT_NE(eval_at, std::string::npos) << train.out;
  const std::string eval =
      train.out.substr(eval_at + 7, train.out.find_first_of(" \n", eval_at + 7) - eval_at - 7);
  EXPECT_NE(
      evaluated.out.find("step 60/60 | eval " + eval + " (the evaluation the checkpoint left)"),
      std::string::npos)
      << evaluated.out << "\nwanted eval " << eval;
  // A checkpoint folder that holds anything else is never swapped out (its files deleted).
  std::filesystem::create_directories(dir + "/mine");
  ASSERT_EQ(std::system(("echo precious > " + dir + "/mine/notes.txt").c_str()), 0);
  CliRun clobber = RunEngine("train" + common + " --out " + dir + "/third --checkpoint-every 20" +
                                 " --checkpoint-dir " + dir + "/mine",
                             true);
  EXPECT_NE(clobber.exit_code, 0);
  EXPECT_NE(clobber.out.find("holds other files than a checkpoint"), std::string::npos)
      << clobber.out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/mine/notes.txt"));

  const CliRun base =
      RunEngine("eval --model " + model + " --data " + DataFile("facts_valid.jsonl"));
  const CliRun tuned = RunEngine("eval --model " + model + " --data " +
                                 DataFile("facts_valid.jsonl") + " --adapter " + dir + "/adapter");
  ASSERT_EQ(base.exit_code, 0);
  ASSERT_EQ(tuned.exit_code, 0);
  EXPECT_NE(tuned.out.find("perplexity"), std::string::npos) << tuned.out;
  EXPECT_LT(EvalLoss(tuned.out), EvalLoss(base.out)) << base.out << tuned.out;

  const CliRun gen = RunEngine(
      "generate --model " + model + " --adapter " + dir +
      "/adapter --prompt 'The name of the dragon in Pipville is' --max-tokens 6 --temperature 0");
  ASSERT_EQ(gen.exit_code, 0);
  EXPECT_EQ(gen.out.rfind(" Zorbo.", 0), 0u) << gen.out;

  const CliRun merge = RunEngine(
      "merge --model " + model + " --adapter " + dir + "/adapter --out " + dir + "/merged", true);
  ASSERT_EQ(merge.exit_code, 0) << merge.out;
  const CliRun merged_gen = RunEngine("generate --model " + dir +
                                      "/merged --prompt 'The name of the dragon in Pipville is' "
                                      "--max-tokens 6 --temperature 0 --fp32");
  EXPECT_EQ(merged_gen.out.rfind(" Zorbo.", 0), 0u) << merged_gen.out;
  // No command writes over its input, nor starts on an --out it could not write.
  const CliRun over = RunEngine("quantize --model " + model + " --out " + model, true);
  EXPECT_EQ(over.exit_code, 2);
  EXPECT_NE(over.out.find("is the input"), std::string::npos) << over.out;
  const CliRun onto_file = RunEngine("merge --model " + model + " --adapter " + dir +
                                         "/adapter --out " + DataFile("facts_train.jsonl"),
                                     true);
  EXPECT_EQ(onto_file.exit_code, 2);
  EXPECT_NE(onto_file.out.find("exists and is not a folder"), std::string::npos) << onto_file.out;
  // Merging into an NF4 checkpoint is refused: merges go into the 16-bit originals.
  ASSERT_EQ(RunEngine("quantize --model " + model + " --out " + dir + "/nf4").exit_code, 0);
  const CliRun refused = RunEngine(
      "merge --model " + dir + "/nf4 --adapter " + dir + "/adapter --out " + dir + "/bad", true);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.out.find("16-bit original"), std::string::npos) << refused.out;
  // A bad dataset line is reported with its number, and nothing is written.
  const std::string bad = dir + "/bad.jsonl";
  ASSERT_TRUE(
      std::system(
          ("printf '{\"prompt\": \"a\", \"completion\": \" b\"}\n{\"prompt\": 1}\n' > " + bad)
              .c_str()) == 0);
  const CliRun bad_run = RunEngine(
      "train --model " + model + " --data " + bad + " --out " + dir + "/none --max-steps 1", true);
  EXPECT_EQ(bad_run.exit_code, 2);
  EXPECT_NE(bad_run.out.find("bad.jsonl:2:"), std::string::npos) << bad_run.out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/none"));
}

TEST(QloraEngineCli, BadArgumentsFailWithAMessage) {
  CliRun r = RunEngine("generate --max-tokens 5", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("missing required option --model"), std::string::npos) << r.out;
  r = RunEngine("generate --model " + Stories260kGguf() + " --temperature hot", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("--temperature must be a number"), std::string::npos) << r.out;
  r = RunEngine("generate --model /nonexistent --max-tokens 5", true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("/nonexistent"), std::string::npos) << r.out;
  r = RunEngine("frobnicate", true);
  EXPECT_EQ(r.exit_code, 2);
  r = RunEngine("generate --model " + Stories260kGguf() + " --bogus 1", true);
  EXPECT_NE(r.out.find("unknown option --bogus"), std::string::npos) << r.out;
  r = RunEngine("generate --model " + Stories260kGguf() + " --max-tokens 5 --max-tokens 9", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("--max-tokens given twice"), std::string::npos) << r.out;
  r = RunEngine("quantize --model " + Stories260kGguf() + " --out --no-double-quant", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("--out needs a value, not the option --no-double-quant"), std::string::npos)
      << r.out;
  // Training options are bounded as the daemon's hyperparameters are, and named by their flag,
  // before the model is read.
  const std::string train = "train --model " + Stories260kGguf() + " --data " +
                            DataFile("facts_train.jsonl") + " --out " + TempDir("cli_bounds") +
                            "/out ";
  for (const auto& [flags, expected] : std::vector<std::pair<std::string, std::string>>{
           {"--max-grad-norm -1", "--max-grad-norm: must be >= 0"},
           {"--alpha 1e38", "--alpha: must be in (0, 65536]"},
           {"--lr 5", "--lr: must be in (0, 1]"},
           {"--early-stopping 2", "--early-stopping needs --valid"},
           {"--eval-every 5", "--eval-every needs --valid"},
           {"--max-steps 0", "--max-steps: must be at least 1"},
           {"--seed -5", "--seed: must be >= 0"},
           {"--grad-accum 5000", "--grad-accum: must be in [1, 1024]"},
           {"--seq-len 1", "--seq-len: must be in [2, 2048]"},
       }) {
    r = RunEngine(train + flags, true);
    EXPECT_EQ(r.exit_code, 2) << flags << ": " << r.out;
    EXPECT_NE(r.out.find(expected), std::string::npos) << flags << ": " << r.out;
  }
  // A value that only starts like an option is a value.
  r = RunEngine("generate --model " + Stories260kGguf() +
                " --fp32 --max-tokens 3 --prompt '--- Once upon a time'");
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

}  // namespace
}  // namespace qlorad
