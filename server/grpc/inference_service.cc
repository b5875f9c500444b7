#include "absl/strings/str_cat.h"
#include "server/grpc/call.h"
#include "server/grpc/services.h"
#include "server/grpc/stream_writer.h"

namespace qlorad::server {

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* c, const v1::GenerateRequest* req,
                                            grpc::ServerWriter<v1::GenerateResponse>* writer) {
  Call call(c, "Generate", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  // Text goes out from a thread of its own: generation holds the node's inference turn and
  // must not wait on a client that does not read.
  StreamWriter<v1::GenerateResponse> out(
      [writer](const v1::GenerateResponse& r) { return writer->Write(r); },
      [c] { c->TryCancel(); });
  auto done = node_->inference->Generate(
      call.tenant().name, *req,
      [&](const std::string& text, int64_t tokens) {
        v1::GenerateResponse r;
        r.set_text(text);
        r.set_tokens(static_cast<int32_t>(tokens));
        return !c->IsCancelled() && out.Push(std::move(r));
      },
      [c] { return c->IsCancelled(); });
  if (done.ok()) {
    v1::GenerateResponse last;
    last.set_tokens(static_cast<int32_t>(done->tokens));
    last.set_finished(true);
    last.set_finish_reason(done->finish_reason);
    last.set_seed(done->seed);
    (void)out.Push(std::move(last));
  }
  // A client still not reading after this long has its call ended (the thread is the server's).
  constexpr absl::Duration kReadGrace = absl::Seconds(30);
  if (!out.Finish(kReadGrace) && done.ok()) {
    return call.Finish(absl::CancelledError("the client did not read the generated text"));
  }
  return call.Finish(done.status());
}

grpc::Status InferenceServiceImpl::Evaluate(grpc::ServerContext* c, const v1::EvaluateRequest* req,
                                            v1::EvaluateResponse* out) {
  Call call(c, "Evaluate", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto r = node_->inference->Evaluate(call.tenant().name, *req, [c] { return c->IsCancelled(); });
  if (r.ok()) *out = *r;
  return call.Finish(r.status());
}

grpc::Status LimitsServiceImpl::GetLimits(grpc::ServerContext* c, const v1::GetLimitsRequest* req,
                                          v1::Limits* out) {
  Call call(c, "GetLimits", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  std::optional<v1::Model> model;
  if (!req->model().empty()) {
    auto m = node_->models->Get(req->model());
    if (!m.ok()) {
      return call.Finish(
          absl::NotFoundError(absl::StrCat("model: no base model named '", req->model(), "'")));
    }
    model = *m;
  }
  *out = core::LimitsFor(node_->manager->options().limits, model ? &*model : nullptr);
  const core::Tenant& t = call.tenant();
  out->set_max_concurrent_jobs(t.limits.max_concurrent_jobs);
  out->set_max_dataset_bytes(t.limits.max_dataset_bytes);
  out->set_max_adapters(t.limits.max_adapters);
  out->set_max_priority(t.limits.max_priority);
  out->set_max_datasets(t.limits.max_datasets);
  auto usage = node_->datasets->UsageOf(t.name);
  if (!usage.ok()) return call.Finish(usage.status());
  out->set_dataset_bytes_used(usage->bytes);
  out->set_datasets_used(usage->datasets);
  auto adapters = node_->adapters->List(t.name);
  if (!adapters.ok()) return call.Finish(adapters.status());
  out->set_adapters_used(static_cast<int64_t>(adapters->size()));
  out->set_active_jobs(node_->manager->ActiveJobs(t.name));
  return call.Finish(absl::OkStatus());
}

}  // namespace qlorad::server
