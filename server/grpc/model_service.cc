#include "absl/strings/str_cat.h"
#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {

grpc::Status ModelServiceImpl::RegisterModel(grpc::ServerContext* c,
                                             const v1::RegisterModelRequest* req, v1::Model* out) {
  Call call(c, "RegisterModel", *node_);
  if (absl::Status s = call.AuthenticateAdmin(); !s.ok()) return call.Finish(s);
  if (req->path().empty()) return call.Finish(absl::InvalidArgumentError("path: required"));
  auto model = node_->models->Register(req->name(), req->path());
  if (model.ok()) *out = *model;
  return call.Finish(model.status());
}

namespace {

// What a tenant sees of a base model: all but where its files lie on the server.
void ForCaller(const core::Tenant& caller, v1::Model* model) {
  if (!caller.admin) model->clear_source_path();
}

}  // namespace

// Any tenant may list and read the base models: it names one in every job and generation.
grpc::Status ModelServiceImpl::ListModels(grpc::ServerContext* c, const v1::ListModelsRequest*,
                                          v1::ListModelsResponse* out) {
  Call call(c, "ListModels", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto models = node_->models->List();
  if (models.ok()) {
    for (v1::Model& m : *models) {
      ForCaller(call.tenant(), &m);
      *out->add_models() = std::move(m);
    }
  }
  return call.Finish(models.status());
}

grpc::Status ModelServiceImpl::GetModel(grpc::ServerContext* c, const v1::GetModelRequest* req,
                                        v1::Model* out) {
  Call call(c, "GetModel", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto model = node_->models->Get(req->name());
  if (model.ok()) {
    *out = *model;
    ForCaller(call.tenant(), out);
  }
  return call.Finish(model.status());
}

grpc::Status ModelServiceImpl::DeleteModel(grpc::ServerContext* c,
                                           const v1::DeleteModelRequest* req,
                                           v1::DeleteModelResponse*) {
  Call call(c, "DeleteModel", *node_);
  if (absl::Status s = call.AuthenticateAdmin(); !s.ok()) return call.Finish(s);
  return call.Finish(node_->manager->DeleteModel(req->name()));
}

}  // namespace qlorad::server
