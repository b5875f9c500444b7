// The per-call log lines' limiter: a flood of one key's calls is cut to its rate, the count of
// what was left out comes with its next line, and other keys keep theirs.
#include "server/grpc/log_limiter.h"

#include "gtest/gtest.h"

namespace qlorad::server {
namespace {

using std::chrono::milliseconds;

TEST(LogLimiter, AFloodIsCutToTheRateAndTheCountComesWithTheNextLine) {
  LogLimiter limiter(/*rate=*/10.0, /*burst=*/5.0);
  const auto t0 = LogLimiter::Clock::now();
  int64_t dropped = -1;
  int written = 0;
  for (int i = 0; i < 1000; ++i) written += limiter.Allow("-", t0, &dropped);  // one instant
  EXPECT_EQ(written, 5);                                                       // the burst
  // Another key (a tenant) is not held back by the flood of calls with no known key.
  EXPECT_TRUE(limiter.Allow("acme", t0, &dropped));
  EXPECT_EQ(dropped, 0);
  // 100 ms later one more line of the flooding key, saying how many were left out.
  EXPECT_TRUE(limiter.Allow("-", t0 + milliseconds(100), &dropped));
  EXPECT_EQ(dropped, 995);
  EXPECT_FALSE(limiter.Allow("-", t0 + milliseconds(100), &dropped));
  // Over a second, at most the rate (10) more.
  written = 0;
  for (int ms = 101; ms <= 1100; ++ms)
    written += limiter.Allow("-", t0 + milliseconds(ms), &dropped);
  EXPECT_GE(written, 9);
  EXPECT_LE(written, 11);
}

TEST(LogLimiter, ACallerWithinTheRateLosesNoLine) {
  LogLimiter limiter(/*rate=*/10.0, /*burst=*/5.0);
  const auto t0 = LogLimiter::Clock::now();
  int64_t dropped = -1;
  for (int i = 0; i < 100; ++i) {  // 5 a second
    ASSERT_TRUE(limiter.Allow("acme", t0 + milliseconds(200 * i), &dropped)) << i;
    EXPECT_EQ(dropped, 0);
  }
}

}  // namespace
}  // namespace qlorad::server
