#include "server/core/job_state.h"

#include <set>
#include <utility>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "qlorad/v1/jobs.pb.h"

namespace qlorad::core {
namespace {

constexpr JobState kAll[] = {JobState::kValidating, JobState::kQueued, JobState::kRunning,
                             JobState::kSucceeded,  JobState::kFailed, JobState::kCancelled,
                             JobState::kPaused};

TEST(JobState, ExactlyTheDocumentedEdgesAreLegal) {
  using S = JobState;
  const std::set<std::pair<S, S>> legal = {
      {S::kValidating, S::kQueued}, {S::kValidating, S::kFailed}, {S::kValidating, S::kCancelled},
      {S::kQueued, S::kRunning},    {S::kQueued, S::kFailed},     {S::kQueued, S::kCancelled},
      {S::kRunning, S::kSucceeded}, {S::kRunning, S::kFailed},    {S::kRunning, S::kCancelled},
      {S::kRunning, S::kQueued},    {S::kQueued, S::kPaused},     {S::kRunning, S::kPaused},
      {S::kPaused, S::kQueued},     {S::kPaused, S::kCancelled},  {S::kPaused, S::kFailed},
  };
  for (S from : kAll) {
    for (S to : kAll) {
      const absl::Status s = CheckTransition(from, to);
      EXPECT_EQ(s.ok(), legal.count({from, to}) > 0)
          << JobStateName(from) << " -> " << JobStateName(to);
      if (!s.ok()) {
        EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
        EXPECT_NE(s.message().find(JobStateName(from)), std::string::npos);
      }
    }
  }
  for (S s : {S::kSucceeded, S::kFailed, S::kCancelled}) EXPECT_TRUE(IsTerminal(s));
  for (S s : {S::kValidating, S::kQueued, S::kRunning, S::kPaused}) EXPECT_FALSE(IsTerminal(s));
}

TEST(JobState, NumbersAndNamesMatchTheApi) {
  for (JobState s : kAll) {
    EXPECT_EQ(v1::JobState_Name(static_cast<v1::JobState>(static_cast<int>(s))), JobStateName(s));
  }
}

// The daemon loads the engine (tokenizer included) and libprotobuf into one process; with
// Debian's libsentencepiece this crashed before main (docs/engine.md).
TEST(DaemonProcess, EngineTokenizerAndProtobufLiveTogether) {
  auto tok =
      Tokenizer::FromModelFile(std::string(QLORAD_TEST_MODELS_DIR) + "/stories260K/tok512.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("Once upon a time"), (std::vector<int32_t>{403, 407, 261, 378}));
  v1::Job job;
  job.set_id("j");
  v1::Job parsed;
  ASSERT_TRUE(parsed.ParseFromString(job.SerializeAsString()));
  EXPECT_EQ(parsed.id(), "j");
}

}  // namespace
}  // namespace qlorad::core
