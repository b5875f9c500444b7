#include <algorithm>
#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/core/job_state.h"
#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {
namespace {

// How long a cancel or a pause waits for a running job to leave its device (one step): within
// the caller's deadline, leaving it time for the answer, and never past 30 s.
absl::Duration StepWait(const grpc::ServerContext& c) {
  const absl::Duration left = absl::FromChrono(c.deadline() - std::chrono::system_clock::now());
  return std::clamp(left - absl::Milliseconds(200), absl::ZeroDuration(), absl::Seconds(30));
}

}  // namespace

grpc::Status JobServiceImpl::CreateJob(grpc::ServerContext* c, const v1::CreateJobRequest* req,
                                       v1::Job* out) {
  Call call(c, "CreateJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto job = node_->manager->CreateJob(call.tenant(), *req);
  if (job.ok()) *out = *job;
  return call.Finish(job.status());
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* c, const v1::GetJobRequest* req,
                                    v1::Job* out) {
  Call call(c, "GetJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto job = node_->manager->GetJob(call.tenant().name, req->id());
  if (job.ok()) *out = *job;
  return call.Finish(job.status());
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* c, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* out) {
  Call call(c, "ListJobs", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  if (req->page_size() < 0) {
    return call.Finish(absl::InvalidArgumentError("page_size: must be >= 0"));
  }
  // Filters bounded as a job's labels are: every job listed is matched against each.
  std::vector<v1::JobState> states;
  for (int s : req->states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return call.Finish(absl::InvalidArgumentError(absl::StrCat("states: no state ", s)));
    }
    const auto state = static_cast<v1::JobState>(s);
    if (std::find(states.begin(), states.end(), state) == states.end()) states.push_back(state);
  }
  if (req->labels_size() > core::kMaxLabels) {
    return call.Finish(absl::InvalidArgumentError(
        absl::StrCat("labels: at most ", core::kMaxLabels, " label filters")));
  }
  std::map<std::string, std::string> labels(req->labels().begin(), req->labels().end());
  std::string next;
  auto jobs = node_->manager->ListJobs(call.tenant().name, states, labels, req->page_size(),
                                       req->page_token(), &next);
  if (jobs.ok()) {
    for (v1::Job& j : *jobs) *out->add_jobs() = std::move(j);
    out->set_next_page_token(next);
  }
  return call.Finish(jobs.status());
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* c, const v1::CancelJobRequest* req,
                                       v1::Job* out) {
  Call call(c, "CancelJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto job = node_->manager->CancelJob(call.tenant().name, req->id(), StepWait(*c));
  if (job.ok()) *out = *job;
  return call.Finish(job.status());
}

grpc::Status JobServiceImpl::PauseJob(grpc::ServerContext* c, const v1::PauseJobRequest* req,
                                      v1::Job* out) {
  Call call(c, "PauseJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto job = node_->manager->PauseJob(call.tenant().name, req->id(), StepWait(*c));
  if (job.ok()) *out = *job;
  return call.Finish(job.status());
}

grpc::Status JobServiceImpl::ResumeJob(grpc::ServerContext* c, const v1::ResumeJobRequest* req,
                                       v1::Job* out) {
  Call call(c, "ResumeJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto job = node_->manager->ResumeJob(call.tenant(), req->id());
  if (job.ok()) *out = *job;
  return call.Finish(job.status());
}

grpc::Status JobServiceImpl::DeleteJob(grpc::ServerContext* c, const v1::DeleteJobRequest* req,
                                       v1::DeleteJobResponse*) {
  Call call(c, "DeleteJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  return call.Finish(node_->manager->DeleteJob(call.tenant().name, req->id()));
}

grpc::Status JobServiceImpl::ListJobEvents(grpc::ServerContext* c,
                                           const v1::ListJobEventsRequest* req,
                                           v1::ListJobEventsResponse* out) {
  Call call(c, "ListJobEvents", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  if (req->page_size() < 0) {
    return call.Finish(absl::InvalidArgumentError("page_size: must be >= 0"));
  }
  const int page = req->page_size() > 0 ? std::min(req->page_size(), 1000) : 100;
  // One event past the page tells whether there are more (a job with exactly a page of events
  // pointed to an empty next page).
  auto events = node_->jobs->Events(call.tenant().name, req->id(), req->after_sequence(), page + 1);
  if (!events.ok()) return call.Finish(events.status());
  const bool more = static_cast<int>(events->size()) > page;
  if (more) events->pop_back();
  for (v1::JobEvent& e : *events) *out->add_events() = std::move(e);
  if (more) out->set_next_after_sequence(out->events(page - 1).sequence());
  return call.Finish(absl::OkStatus());
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* c, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  Call call(c, "WatchJob", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  const std::string& tenant = call.tenant().name;
  int64_t after = req->after_sequence();
  while (true) {
    // Read the change counter before the store: a write after this read wakes the wait below.
    const int64_t seen = node_->manager->ChangeCounter();
    auto job = node_->jobs->Get(tenant, req->id());
    if (!job.ok()) return call.Finish(job.status());
    // Drain every event stored so far, in pages.
    while (true) {
      auto events = node_->jobs->Events(tenant, req->id(), after, 256);
      if (!events.ok()) return call.Finish(events.status());
      for (const v1::JobEvent& e : *events) {
        if (!writer->Write(e)) {
          return call.Finish(absl::CancelledError("the client went away"));
        }
        after = e.sequence();
      }
      if (events->size() < 256) break;
    }
    // The job's final record is written with its last event, so a terminal state read above
    // means every event has been sent. A paused job ends the watch too: nothing comes until a
    // client resumes it, and a script waiting on the watch would wait for that forever.
    if (core::IsTerminal(static_cast<core::JobState>(job->state())) || job->state() == v1::PAUSED) {
      break;
    }
    if (c->IsCancelled()) return call.Finish(absl::CancelledError("the client went away"));
    if (node_->draining) {
      return call.Finish(absl::UnavailableError(absl::StrCat(
          "qlorad is shutting down; the job resumes from its checkpoint when it is back: watch "
          "again then (after_sequence ",
          after, ")")));
    }
    node_->manager->WaitForChange(seen, absl::Seconds(1));
  }
  return call.Finish(absl::OkStatus());
}

}  // namespace qlorad::server
