// qloractl jobs get|list|cancel|delete|events|watch (create: job_create.cc).
#include "client/commands/jobs.h"

#include <iostream>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status_macros.h"
#include "qlorad/v1/jobs.grpc.pb.h"

namespace qlorad::ctl {
namespace {

using v1::JobService;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// The job the command's first argument names.
absl::StatusOr<v1::Job> GetNamedJob(const Invocation& invocation) {
  v1::GetJobRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::Job job;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(
      RpcStatus(JobService::NewStub(invocation.channel)->GetJob(context.get(), request, &job)));
  return job;
}

absl::Status Get(const Invocation& invocation) {
  ASSIGN_OR_RETURN(v1::Job job, GetNamedJob(invocation));
  return Emit(invocation, job, [&] { PrintJob(job); });
}

// --state RUNNING,queued --state FAILED: any case, repeatable, comma lists.
absl::Status ParseStates(const ParsedArgs& args, v1::ListJobsRequest* request) {
  for (const std::string& name : args.GetList("state")) {
    v1::JobState state;
    if (!v1::JobState_Parse(absl::AsciiStrToUpper(name), &state) ||
        state == v1::JOB_STATE_UNSPECIFIED) {
      return UsageError(absl::StrCat(
          "--state: expected VALIDATING, QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED or "
          "CANCELLED, got '",
          name, "'"));
    }
    request->add_states(state);
  }
  return absl::OkStatus();
}

void PrintJobTable(const v1::ListJobsResponse& response) {
  Table table({"ID", "STATE", "MODEL", "STEPS", "LOSS", "CREATED", "ADAPTER"});
  for (const v1::Job& job : response.jobs()) {
    table.AddRow({job.id(), v1::JobState_Name(job.state()), job.model(), FormatSteps(job),
                  job.steps_completed() > 0 ? absl::StrFormat("%.4f", job.last_loss()) : "-",
                  FormatTime(job.create_time()),
                  job.adapter_id().empty() ? "-" : job.adapter_id()});
  }
  table.Print();
}

// One page, or with --all every page merged into one response.
absl::Status List(const Invocation& invocation) {
  const ParsedArgs& args = invocation.args;
  v1::ListJobsRequest request;
  RETURN_IF_ERROR(ParseStates(args, &request));
  ASSIGN_OR_RETURN(auto labels, args.KeyValues("label"));
  request.mutable_labels()->insert(labels.begin(), labels.end());
  ASSIGN_OR_RETURN(std::optional<int64_t> page_size, args.Int("page-size", 1, kInt32Max));
  request.set_page_size(static_cast<int32_t>(page_size.value_or(0)));
  request.set_page_token(args.Get("page-token").value_or(""));

  auto stub = JobService::NewStub(invocation.channel);
  v1::ListJobsResponse all;
  for (;;) {
    v1::ListJobsResponse page;
    auto context = invocation.Context(kUnaryTimeout);
    RETURN_IF_ERROR(RpcStatus(stub->ListJobs(context.get(), request, &page)));
    all.mutable_jobs()->MergeFrom(page.jobs());
    all.set_next_page_token(page.next_page_token());
    if (!args.Has("all") || page.next_page_token().empty()) break;
    if (page.next_page_token() == request.page_token()) {
      return absl::InternalError("the server returned the same page token twice");
    }
    request.set_page_token(page.next_page_token());
  }
  return Emit(invocation, all, [&] {
    PrintJobTable(all);
    if (!all.next_page_token().empty()) {
      std::cerr << "more jobs: --page-token " << all.next_page_token() << " (or --all)\n";
    }
  });
}

absl::Status Cancel(const Invocation& invocation) {
  v1::CancelJobRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::Job job;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(
      RpcStatus(JobService::NewStub(invocation.channel)->CancelJob(context.get(), request, &job)));
  return Emit(invocation, job, [&] {
    std::cout << "job " << job.id() << " " << v1::JobState_Name(job.state()) << "\n";
    // A step longer than the call's wait: the cancel stands, and "RUNNING" alone read as if it
    // had not been taken.
    if (job.state() == v1::RUNNING) {
      std::cerr << "cancellation requested: the job stops after its current step (qloractl jobs "
                   "watch "
                << job.id() << ")\n";
    }
    if (job.state() == v1::SUCCEEDED) {
      std::cerr << "too late to cancel: the job had stored its adapter " << job.adapter_id()
                << "\n";
    }
  });
}

// jobs pause ID / jobs resume ID: the job as the call leaves it.
absl::Status PauseOrResume(const Invocation& invocation, bool pause) {
  const std::string id = invocation.args.positionals()[0];
  v1::Job job;
  auto context = invocation.Context(kUnaryTimeout);
  auto stub = JobService::NewStub(invocation.channel);
  if (pause) {
    v1::PauseJobRequest request;
    request.set_id(id);
    RETURN_IF_ERROR(RpcStatus(stub->PauseJob(context.get(), request, &job)));
  } else {
    v1::ResumeJobRequest request;
    request.set_id(id);
    RETURN_IF_ERROR(RpcStatus(stub->ResumeJob(context.get(), request, &job)));
  }
  return Emit(invocation, job, [&] {
    std::cout << "job " << job.id() << " " << v1::JobState_Name(job.state()) << "\n";
    // A step longer than the call's wait: the pause stands, and "RUNNING" alone read as if it
    // had not been taken.
    if (pause && job.state() == v1::RUNNING) {
      std::cerr << "pause requested: the job pauses within its current step (qloractl jobs watch "
                << job.id() << ")\n";
    }
  });
}

absl::Status Pause(const Invocation& invocation) { return PauseOrResume(invocation, true); }
absl::Status Resume(const Invocation& invocation) { return PauseOrResume(invocation, false); }

absl::Status Delete(const Invocation& invocation) {
  v1::DeleteJobRequest request;
  request.set_id(invocation.args.positionals()[0]);
  v1::DeleteJobResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      JobService::NewStub(invocation.channel)->DeleteJob(context.get(), request, &response)));
  return Emit(invocation, response, [&] { std::cout << "deleted job " << request.id() << "\n"; });
}

absl::Status Events(const Invocation& invocation) {
  v1::ListJobEventsRequest request;
  request.set_id(invocation.args.positionals()[0]);
  ASSIGN_OR_RETURN(std::optional<int64_t> after, invocation.args.Int("after", 0));
  request.set_after_sequence(after.value_or(0));
  ASSIGN_OR_RETURN(std::optional<int64_t> page_size,
                   invocation.args.Int("page-size", 1, kInt32Max));
  request.set_page_size(static_cast<int32_t>(page_size.value_or(0)));
  v1::ListJobEventsResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(
      JobService::NewStub(invocation.channel)->ListJobEvents(context.get(), request, &response)));
  return Emit(invocation, response, [&] {
    for (const v1::JobEvent& event : response.events()) {
      std::cout << "#" << event.sequence() << " " << FormatTime(event.time()) << " "
                << FormatEvent(event) << "\n";
    }
    std::cout << std::flush;
    if (response.next_after_sequence() != 0) {
      std::cerr << "more events: --after " << response.next_after_sequence() << "\n";
    }
  });
}

absl::Status Watch(const Invocation& invocation) {
  ASSIGN_OR_RETURN(std::optional<int64_t> after, invocation.args.Int("after", 0));
  // One look first: an unknown job or an unreachable daemon is an error at once, and a daemon
  // reached is reconnected to if it restarts while no new event has come yet.
  ASSIGN_OR_RETURN(v1::Job job, GetNamedJob(invocation));
  return WatchJob(invocation, job.id(), after.value_or(0));
}

}  // namespace

std::vector<Command> JobCommands() {
  return {
      {"jobs", "create", {}, CreateJobFlags(), CreateJob},
      {"jobs", "get", {"ID"}, {}, Get},
      {"jobs",
       "list",
       {},
       {{"state", true, true},
        {"label", true, true},
        {"page-size"},
        {"page-token"},
        {"all", false}},
       List},
      {"jobs", "cancel", {"ID"}, {}, Cancel},
      {"jobs", "pause", {"ID"}, {}, Pause},
      {"jobs", "resume", {"ID"}, {}, Resume},
      {"jobs", "delete", {"ID"}, {}, Delete},
      {"jobs", "events", {"ID"}, {{"after"}, {"page-size"}}, Events},
      {"jobs", "watch", {"ID"}, {{"after"}}, Watch},
  };
}

}  // namespace qlorad::ctl
