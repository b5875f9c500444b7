// Runs the qlora-engine binary as a user would.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
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
}

}  // namespace
}  // namespace qlorad
