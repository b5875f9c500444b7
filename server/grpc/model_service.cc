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

grpc::Status ModelServiceImpl::ListModels(grpc::ServerContext* c, const v1::ListModelsRequest*,
                                          v1::ListModelsResponse* out) {
  Call call(c, "ListModels", *node_);
  if (absl::Status s = call.AuthenticateAdmin(); !s.ok()) return call.Finish(s);
  auto models = node_->models->List();
  if (models.ok()) {
    for (v1::Model& m : *models) *out->add_models() = std::move(m);
  }
  return call.Finish(models.status());
}

grpc::Status ModelServiceImpl::GetModel(grpc::ServerContext* c, const v1::GetModelRequest* req,
                                        v1::Model* out) {
  Call call(c, "GetModel", *node_);
  if (absl::Status s = call.AuthenticateAdmin(); !s.ok()) return call.Finish(s);
  auto model = node_->models->Get(req->name());
  if (model.ok()) *out = *model;
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
