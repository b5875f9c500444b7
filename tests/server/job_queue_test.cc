#include "server/core/job_queue.h"

#include "gtest/gtest.h"

namespace qlorad::core {
namespace {

QueuedJob J(const std::string& tenant, const std::string& id, int priority, int64_t arrival) {
  QueuedJob q;
  q.tenant = tenant;
  q.id = id;
  q.priority = priority;
  q.arrival = arrival;
  return q;
}

std::vector<std::string> Ids(const std::vector<QueuedJob>& q,
                             const std::map<std::string, int>& running) {
  std::vector<std::string> out;
  for (size_t i : QueueOrder(q, running)) out.push_back(q[i].id);
  return out;
}

TEST(JobQueueTest, HigherPriorityFirstThenArrival) {
  std::vector<QueuedJob> q = {J("a", "a1", 0, 0), J("a", "a2", 5, 1), J("a", "a3", 0, 2)};
  EXPECT_EQ(Ids(q, {}), (std::vector<std::string>{"a2", "a1", "a3"}));
}

TEST(JobQueueTest, TenantsInterleaveAtEqualPriority) {
  // Tenant a queued three jobs before b's two: fair share alternates them.
  std::vector<QueuedJob> q = {J("a", "a1", 0, 0), J("a", "a2", 0, 1), J("a", "a3", 0, 2),
                              J("b", "b1", 0, 3), J("b", "b2", 0, 4)};
  EXPECT_EQ(Ids(q, {}), (std::vector<std::string>{"a1", "b1", "a2", "b2", "a3"}));
}

TEST(JobQueueTest, RunningJobsCountTowardTheShare) {
  // a already runs two jobs, b none: b's later jobs go first until the shares meet.
  std::vector<QueuedJob> q = {J("a", "a1", 0, 0), J("b", "b1", 0, 1), J("b", "b2", 0, 2),
                              J("b", "b3", 0, 3)};
  EXPECT_EQ(Ids(q, {{"a", 2}}), (std::vector<std::string>{"b1", "b2", "a1", "b3"}));
}

TEST(JobQueueTest, PriorityBeatsFairShare) {
  std::vector<QueuedJob> q = {J("b", "b1", 0, 0), J("a", "a1", 1, 1)};
  EXPECT_EQ(Ids(q, {{"a", 10}}), (std::vector<std::string>{"a1", "b1"}));
}

}  // namespace
}  // namespace qlorad::core
