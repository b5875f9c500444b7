#include "server/grpc/stream_writer.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace qlorad::server {
namespace {

TEST(StreamWriter, WritesEveryMessageInOrder) {
  std::vector<int> written;  // only the writer's thread touches it until Finish
  StreamWriter<int> out(
      [&](const int& m) {
        written.push_back(m);
        return true;
      },
      [] { ADD_FAILURE() << "nothing to cancel"; });
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(out.Push(i));
  EXPECT_TRUE(out.Finish(absl::Seconds(10)));
  ASSERT_EQ(written.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(written[i], i);
}

// A client that does not read: its Write waits until the call is cancelled. The producer (which
// holds the inference turn) queues on regardless, and Finish ends the call after its grace.
TEST(StreamWriter, AClientThatDoesNotReadNeverHoldsTheProducer) {
  absl::Notification cancelled;
  std::atomic<int> writes{0};
  StreamWriter<int> out(
      [&](const int&) {
        ++writes;
        cancelled.WaitForNotification();  // as a Write on a full flow-control window
        return false;                     // the call is cancelled: the write fails
      },
      [&] { cancelled.Notify(); });
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(out.Push(i));  // never waits on the writes
  EXPECT_FALSE(cancelled.HasBeenNotified());
  EXPECT_FALSE(out.Finish(absl::Milliseconds(50)));
  EXPECT_TRUE(cancelled.HasBeenNotified());
  EXPECT_EQ(writes.load(), 1);
}

// A write that fails (the client left) stops the stream: later pushes say so, and no more
// writes are made.
TEST(StreamWriter, AFailedWriteStopsTheProducer) {
  std::atomic<int> writes{0};
  absl::Notification failed;
  StreamWriter<int> out(
      [&](const int&) {
        if (++writes < 3) return true;
        failed.Notify();
        return false;
      },
      [] {});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(out.Push(i));
  failed.WaitForNotification();
  bool refused = false;
  for (int i = 0; i < 1000 && !refused; ++i) {
    refused = !out.Push(i);
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(refused);
  EXPECT_FALSE(out.Finish(absl::Seconds(10)));
  EXPECT_EQ(writes.load(), 3);
}

}  // namespace
}  // namespace qlorad::server
