// The qlorad.v1 gRPC services: thin layers that authenticate, check the request's shape, call
// the core and convert the status. Tenant-scoped reads of another tenant's object are NOT_FOUND
// (the stores' keys are tenant-prefixed, so there is nothing to find).
#pragma once

#include "qlorad/v1/adapters.grpc.pb.h"
#include "qlorad/v1/admin.grpc.pb.h"
#include "qlorad/v1/datasets.grpc.pb.h"
#include "qlorad/v1/devices.grpc.pb.h"
#include "qlorad/v1/inference.grpc.pb.h"
#include "qlorad/v1/jobs.grpc.pb.h"
#include "qlorad/v1/limits.grpc.pb.h"
#include "qlorad/v1/models.grpc.pb.h"
#include "server/grpc/node.h"

namespace qlorad::server {

class ModelServiceImpl final : public v1::ModelService::Service {
 public:
  explicit ModelServiceImpl(Node* node) : node_(node) {}
  grpc::Status RegisterModel(grpc::ServerContext* c, const v1::RegisterModelRequest* req,
                             v1::Model* out) override;
  grpc::Status ListModels(grpc::ServerContext* c, const v1::ListModelsRequest* req,
                          v1::ListModelsResponse* out) override;
  grpc::Status GetModel(grpc::ServerContext* c, const v1::GetModelRequest* req,
                        v1::Model* out) override;
  grpc::Status DeleteModel(grpc::ServerContext* c, const v1::DeleteModelRequest* req,
                           v1::DeleteModelResponse* out) override;

 private:
  Node* node_;
};

class DatasetServiceImpl final : public v1::DatasetService::Service {
 public:
  explicit DatasetServiceImpl(Node* node) : node_(node) {}
  grpc::Status UploadDataset(grpc::ServerContext* c,
                             grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                             v1::Dataset* out) override;
  grpc::Status ListDatasets(grpc::ServerContext* c, const v1::ListDatasetsRequest* req,
                            v1::ListDatasetsResponse* out) override;
  grpc::Status GetDataset(grpc::ServerContext* c, const v1::GetDatasetRequest* req,
                          v1::Dataset* out) override;
  grpc::Status DeleteDataset(grpc::ServerContext* c, const v1::DeleteDatasetRequest* req,
                             v1::DeleteDatasetResponse* out) override;

 private:
  Node* node_;
};

class JobServiceImpl final : public v1::JobService::Service {
 public:
  explicit JobServiceImpl(Node* node) : node_(node) {}
  grpc::Status CreateJob(grpc::ServerContext* c, const v1::CreateJobRequest* req,
                         v1::Job* out) override;
  grpc::Status GetJob(grpc::ServerContext* c, const v1::GetJobRequest* req, v1::Job* out) override;
  grpc::Status ListJobs(grpc::ServerContext* c, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* out) override;
  grpc::Status CancelJob(grpc::ServerContext* c, const v1::CancelJobRequest* req,
                         v1::Job* out) override;
  grpc::Status ListJobEvents(grpc::ServerContext* c, const v1::ListJobEventsRequest* req,
                             v1::ListJobEventsResponse* out) override;
  grpc::Status WatchJob(grpc::ServerContext* c, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status PauseJob(grpc::ServerContext* c, const v1::PauseJobRequest* req,
                        v1::Job* out) override;
  grpc::Status ResumeJob(grpc::ServerContext* c, const v1::ResumeJobRequest* req,
                         v1::Job* out) override;
  grpc::Status DeleteJob(grpc::ServerContext* c, const v1::DeleteJobRequest* req,
                         v1::DeleteJobResponse* out) override;

 private:
  Node* node_;
};

class AdapterServiceImpl final : public v1::AdapterService::Service {
 public:
  explicit AdapterServiceImpl(Node* node) : node_(node) {}
  grpc::Status ListAdapters(grpc::ServerContext* c, const v1::ListAdaptersRequest* req,
                            v1::ListAdaptersResponse* out) override;
  grpc::Status GetAdapter(grpc::ServerContext* c, const v1::GetAdapterRequest* req,
                          v1::Adapter* out) override;
  grpc::Status DownloadAdapter(grpc::ServerContext* c, const v1::DownloadAdapterRequest* req,
                               grpc::ServerWriter<v1::AdapterFileChunk>* writer) override;
  grpc::Status DeleteAdapter(grpc::ServerContext* c, const v1::DeleteAdapterRequest* req,
                             v1::DeleteAdapterResponse* out) override;

 private:
  Node* node_;
};

class InferenceServiceImpl final : public v1::InferenceService::Service {
 public:
  explicit InferenceServiceImpl(Node* node) : node_(node) {}
  grpc::Status Generate(grpc::ServerContext* c, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Evaluate(grpc::ServerContext* c, const v1::EvaluateRequest* req,
                        v1::EvaluateResponse* out) override;

 private:
  Node* node_;
};

class AdminServiceImpl final : public v1::AdminService::Service {
 public:
  explicit AdminServiceImpl(Node* node) : node_(node) {}
  grpc::Status BackupDatabase(grpc::ServerContext* c, const v1::BackupDatabaseRequest* req,
                              v1::BackupDatabaseResponse* out) override;

 private:
  Node* node_;
};

class DeviceServiceImpl final : public v1::DeviceService::Service {
 public:
  explicit DeviceServiceImpl(Node* node) : node_(node) {}
  grpc::Status ListDevices(grpc::ServerContext* c, const v1::ListDevicesRequest* req,
                           v1::ListDevicesResponse* out) override;

 private:
  Node* node_;
};

class LimitsServiceImpl final : public v1::LimitsService::Service {
 public:
  explicit LimitsServiceImpl(Node* node) : node_(node) {}
  grpc::Status GetLimits(grpc::ServerContext* c, const v1::GetLimitsRequest* req,
                         v1::Limits* out) override;

 private:
  Node* node_;
};

}  // namespace qlorad::server
