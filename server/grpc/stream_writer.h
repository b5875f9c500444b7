// Writes a server stream's messages from a thread of its own. A synchronous gRPC Write waits
// while the client does not read (HTTP/2 flow control): the code producing the messages holds
// the node's one inference turn, which every other tenant's Generate and Evaluate wait for, so
// it must never wait on one client's reading. Messages queue here instead (a generation's are
// few: at most its max_tokens), and the call ends after a grace period if the client still has
// not taken them.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace qlorad::server {

template <typename Message>
class StreamWriter {
 public:
  // `write`: the stream's Write (false once the client is gone); `cancel`: ends the call so
  // that a Write waiting on the client returns (ServerContext::TryCancel).
  StreamWriter(std::function<bool(const Message&)> write, std::function<void()> cancel)
      : write_(std::move(write)), cancel_(std::move(cancel)), thread_([this] { Run(); }) {}
  ~StreamWriter() { (void)Finish(absl::ZeroDuration()); }
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Queues `m`; false once a write failed (the client left): the producer stops.
  bool Push(Message m) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (failed_) return false;
    queue_.push_back(std::move(m));
    return true;
  }

  // Waits up to `grace` for every queued message to be written, then cancels the call if some
  // are not (its writes return) and waits for the thread. Whether all were written.
  bool Finish(absl::Duration grace) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!thread_.joinable()) return written_all_;
    bool drained;
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return failed_ || (queue_.empty() && !writing_);
      };
      drained = mu_.AwaitWithTimeout(absl::Condition(&done), grace);
      written_all_ = drained && !failed_;
    }
    if (!drained) cancel_();
    thread_.join();
    return written_all_;
  }

 private:
  void Run() {
    while (true) {
      Message m;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || closed_; };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty() || failed_) return;  // closed and drained, or the client left
        m = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
      }
      const bool ok = write_(m);
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        failed_ = true;
        queue_.clear();
        return;
      }
    }
  }

  const std::function<bool(const Message&)> write_;
  const std::function<void()> cancel_;
  absl::Mutex mu_;
  std::deque<Message> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool written_all_ = false;  // set by Finish
  std::thread thread_;        // last: starts once the members above are made
};

}  // namespace qlorad::server
