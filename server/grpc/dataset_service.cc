#include "absl/strings/str_cat.h"
#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {

grpc::Status DatasetServiceImpl::UploadDataset(grpc::ServerContext* c,
                                               grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                               v1::Dataset* out) {
  Call call(c, "UploadDataset", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  const core::Tenant& tenant = call.tenant();
  v1::UploadDatasetRequest msg;
  if (!reader->Read(&msg) || !msg.has_header()) {
    return call.Finish(
        absl::InvalidArgumentError("header: the first message of an upload must be the header"));
  }
  const std::string name = msg.header().name();
  auto upload = node_->datasets->StartUpload(tenant.name, tenant.limits.max_dataset_bytes,
                                             node_->max_upload_bytes, tenant.limits.max_datasets);
  if (!upload.ok()) return call.Finish(upload.status());
  std::string content;
  while (reader->Read(&msg)) {
    if (!msg.has_chunk() && msg.has_header()) {
      return call.Finish(absl::InvalidArgumentError("header: sent twice in one upload"));
    }
    // Stop reading as soon as the upload cannot fit: nothing is stored.
    if (absl::Status s = (*upload)->Grow(static_cast<int64_t>(msg.chunk().size())); !s.ok()) {
      return call.Finish(s);
    }
    content += msg.chunk();
  }
  // The reads also end when the client cancels or goes away: what came is not the dataset.
  if (c->IsCancelled()) {
    return call.Finish(absl::CancelledError("the upload was cut off; nothing is stored"));
  }
  auto ds = node_->datasets->Create(tenant.name, name, content, tenant.limits.max_dataset_bytes,
                                    tenant.limits.max_datasets);
  if (ds.ok()) *out = *ds;
  return call.Finish(ds.status());
}

grpc::Status DatasetServiceImpl::ListDatasets(grpc::ServerContext* c,
                                              const v1::ListDatasetsRequest*,
                                              v1::ListDatasetsResponse* out) {
  Call call(c, "ListDatasets", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto list = node_->datasets->List(call.tenant().name);
  if (list.ok()) {
    for (v1::Dataset& d : *list) *out->add_datasets() = std::move(d);
  }
  return call.Finish(list.status());
}

grpc::Status DatasetServiceImpl::GetDataset(grpc::ServerContext* c,
                                            const v1::GetDatasetRequest* req, v1::Dataset* out) {
  Call call(c, "GetDataset", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto ds = node_->datasets->Get(call.tenant().name, req->id());
  if (ds.ok()) *out = *ds;
  return call.Finish(ds.status());
}

grpc::Status DatasetServiceImpl::DeleteDataset(grpc::ServerContext* c,
                                               const v1::DeleteDatasetRequest* req,
                                               v1::DeleteDatasetResponse*) {
  Call call(c, "DeleteDataset", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto ds = node_->datasets->Get(call.tenant().name, req->id());
  if (!ds.ok()) return call.Finish(ds.status());
  return call.Finish(node_->manager->DeleteDataset(call.tenant().name, req->id()));
}

}  // namespace qlorad::server
