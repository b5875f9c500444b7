#include "server/core/job_queue.h"

namespace qlorad::core {

std::vector<size_t> QueueOrder(const std::vector<QueuedJob>& queue,
                               const std::map<std::string, int>& running) {
  std::map<std::string, int> share = running;
  std::vector<bool> placed(queue.size(), false);
  std::vector<size_t> order;
  order.reserve(queue.size());
  // Quadratic, which is fine for queues of thousands; each pick counts toward its tenant's
  // share so that a tenant with many queued jobs cannot take every next slot.
  for (size_t n = 0; n < queue.size(); ++n) {
    size_t best = queue.size();
    for (size_t i = 0; i < queue.size(); ++i) {
      if (placed[i]) continue;
      if (best == queue.size()) {
        best = i;
        continue;
      }
      const QueuedJob& a = queue[i];
      const QueuedJob& b = queue[best];
      if (a.priority != b.priority) {
        if (a.priority > b.priority) best = i;
        continue;
      }
      const int sa = share[a.tenant], sb = share[b.tenant];
      if (sa != sb) {
        if (sa < sb) best = i;
        continue;
      }
      if (a.arrival < b.arrival) best = i;
    }
    placed[best] = true;
    ++share[queue[best].tenant];
    order.push_back(best);
  }
  return order;
}

}  // namespace qlorad::core
