// `jobs watch` (and `jobs create --watch`): WatchJob until the job ends, then its outcome.
#include <algorithm>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/commands/jobs.h"
#include "engine/status_macros.h"
#include "qlorad/v1/jobs.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::JobService;

// A stream that ends cleanly while the job still runs (the daemon handing over, say) is resumed
// from the last event seen; this many resumes in a row without a new event give up.
constexpr int kMaxIdleResumes = 3;
constexpr absl::Duration kResumePause = absl::Seconds(1);
// A daemon restarting (SIGTERM ends its watches with UNAVAILABLE; the jobs resume after the
// start) or out of reach for a while does not end the watch: it starts again from the last event
// seen, after a pause that doubles up to kMaxReconnectPause, until the daemon has been out of
// reach for kReconnectFor.
constexpr absl::Duration kReconnectFor = absl::Minutes(10);
constexpr absl::Duration kMaxReconnectPause = absl::Seconds(10);

class Reconnection {
 public:
  // After a call that reached the daemon.
  void Reached() {
    since_ = absl::InfiniteFuture();
    pause_ = absl::Seconds(1);
  }
  // After `why` (UNAVAILABLE): false once the daemon has been out of reach for kReconnectFor,
  // else waits for the next try.
  bool WaitToTryAgain(const absl::Status& why) {
    const absl::Time now = absl::Now();
    if (since_ == absl::InfiniteFuture()) since_ = now;
    if (now - since_ >= kReconnectFor) return false;
    std::cerr << "qloractl: " << why.message() << "\nqloractl: watching again in "
              << absl::FormatDuration(pause_) << "\n"
              << std::flush;
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(pause_));
    pause_ = std::min(pause_ * 2, kMaxReconnectPause);
    return true;
  }

 private:
  absl::Time since_ = absl::InfiniteFuture();
  absl::Duration pause_ = absl::Seconds(1);
};

// Text mode: events as lines on stdout; progress on stderr, as one line rewritten in place
// when stderr is a terminal, else one line per event.
class EventPrinter {
 public:
  explicit EventPrinter(bool live) : live_(live) {}
  ~EventPrinter() { EndLiveLine(); }

  void Print(const v1::JobEvent& event) {
    if (event.has_progress()) {
      if (live_) {
        std::cerr << "\r" << FormatProgress(event.progress()) << "\x1b[K" << std::flush;
        live_line_shown_ = true;
      } else {
        std::cerr << FormatProgress(event.progress()) << "\n" << std::flush;
      }
      return;
    }
    EndLiveLine();
    std::cout << FormatEvent(event) << "\n" << std::flush;
  }

  // Keeps the last progress line on screen and moves below it.
  void EndLiveLine() {
    if (!live_line_shown_) return;
    std::cerr << "\n" << std::flush;
    live_line_shown_ = false;
  }

 private:
  const bool live_;
  bool live_line_shown_ = false;
};

// Where a watch ends: the job ended, or waits paused for a client to resume it.
bool WatchEnds(v1::JobState state) {
  return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED ||
         state == v1::PAUSED;
}

absl::Status Conclude(const Invocation& invocation, const v1::Job& job) {
  if (invocation.json()) RETURN_IF_ERROR(PrintJson(job));
  switch (job.state()) {
    case v1::SUCCEEDED:
      if (!invocation.json()) std::cout << "adapter: " << job.adapter_id() << "\n" << std::flush;
      return absl::OkStatus();
    case v1::FAILED:
      return ExitError(kExitJobFailed,
                       absl::StrCat("job ", job.id(), " FAILED: ", FormatJobError(job.error())));
    case v1::PAUSED:
      return ExitError(kExitJobPaused, absl::StrCat("job ", job.id(),
                                                    " is PAUSED; it goes on after qloractl jobs "
                                                    "resume ",
                                                    job.id()));
    default:
      return ExitError(kExitJobCancelled, absl::StrCat("job ", job.id(), " was CANCELLED"));
  }
}

}  // namespace

absl::Status WatchJob(const Invocation& invocation, const std::string& id, int64_t after_sequence) {
  auto stub = JobService::NewStub(invocation.channel);
  EventPrinter printer(!invocation.json() && StderrIsTerminal());
  int idle_resumes = 0;
  Reconnection reconnection;
  for (;;) {
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(after_sequence);
    auto context = invocation.Context(std::nullopt);
    auto reader = stub->WatchJob(context.get(), request);
    v1::JobEvent event;
    bool new_events = false;
    while (reader->Read(&event)) {
      new_events = true;
      reconnection.Reached();
      after_sequence = std::max(after_sequence, event.sequence());
      if (!invocation.json()) {
        printer.Print(event);
        continue;
      }
      if (absl::Status printed = PrintJson(event); !printed.ok()) {
        context->TryCancel();
        (void)reader->Finish();
        return printed;
      }
    }
    printer.EndLiveLine();
    absl::Status watched = RpcStatus(reader->Finish());
    v1::Job job;
    if (watched.ok()) {
      v1::GetJobRequest get;
      get.set_id(id);
      auto get_context = invocation.Context(kUnaryTimeout);
      watched = RpcStatus(stub->GetJob(get_context.get(), get, &job));
    }
    // A daemon stopping refuses new calls with CANCELLED before its port closes (then
    // UNAVAILABLE); qloractl cancels none of these calls itself.
    if (absl::IsUnavailable(watched) || absl::IsCancelled(watched)) {
      if (reconnection.WaitToTryAgain(watched)) continue;
      return absl::UnavailableError(
          absl::StrCat("qlorad has been out of reach for ", absl::FormatDuration(kReconnectFor),
                       " while watching job ", id, ": ", watched.message()));
    }
    // --timeout bounds the watch too: the job trains on, and the message says how to go on.
    if (absl::IsDeadlineExceeded(watched) && invocation.timeout.has_value()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "stopped watching job ", id, " after --timeout ",
          absl::FormatDuration(*invocation.timeout), "; the job goes on (qloractl jobs watch ", id,
          " --after ", after_sequence, ")"));
    }
    RETURN_IF_ERROR(watched);
    reconnection.Reached();
    if (WatchEnds(job.state())) return Conclude(invocation, job);
    idle_resumes = new_events ? 0 : idle_resumes + 1;
    if (idle_resumes >= kMaxIdleResumes) {
      return absl::UnavailableError(absl::StrCat("the event stream of job ", id,
                                                 " keeps ending while the job is ",
                                                 v1::JobState_Name(job.state())));
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(kResumePause));
  }
}

}  // namespace qlorad::ctl
