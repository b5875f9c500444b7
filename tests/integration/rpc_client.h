// A small typed client over the generated stubs for the integration tests: one tenant's key,
// statuses as absl::Status, streams collected.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/connection.h"
#include "grpcpp/generic/generic_stub.h"
#include "qlorad/v1/adapters.grpc.pb.h"
#include "qlorad/v1/datasets.grpc.pb.h"
#include "qlorad/v1/devices.grpc.pb.h"
#include "qlorad/v1/inference.grpc.pb.h"
#include "qlorad/v1/jobs.grpc.pb.h"
#include "qlorad/v1/models.grpc.pb.h"

namespace qlorad::testing {

class RpcClient {
 public:
  RpcClient(const std::string& address, const std::string& token) {
    options_.server = address;
    options_.token = token;
    channel_ = *client::CreateChannel(options_);
  }

  absl::StatusOr<v1::Model> RegisterModel(const std::string& name, const std::string& path) {
    v1::RegisterModelRequest req;
    req.set_name(name);
    req.set_path(path);
    v1::Model out;
    auto c = Context();
    return Result(v1::ModelService::NewStub(channel_)->RegisterModel(c.get(), req, &out), out);
  }

  // With `cancel_after`, the upload is cancelled that long after the last chunk (the daemon
  // has read them) instead of finished.
  absl::StatusOr<v1::Dataset> Upload(const std::string& name, const std::string& content,
                                     std::optional<absl::Duration> cancel_after = std::nullopt) {
    auto c = Context();
    v1::Dataset out;
    auto writer = v1::DatasetService::NewStub(channel_)->UploadDataset(c.get(), &out);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name(name);
    writer->Write(header);
    for (size_t off = 0; off < content.size(); off += 4096) {
      v1::UploadDatasetRequest chunk;
      chunk.set_chunk(content.substr(off, 4096));
      if (!writer->Write(chunk)) break;  // the server ended the call (e.g. over quota)
    }
    if (cancel_after) {
      absl::SleepFor(*cancel_after);
      c->TryCancel();
    } else {
      writer->WritesDone();
    }
    return Result(writer->Finish(), out);
  }

  absl::StatusOr<std::vector<v1::Dataset>> ListDatasets() {
    auto c = Context();
    v1::ListDatasetsResponse out;
    auto s = client::ToAbslStatus(
        v1::DatasetService::NewStub(channel_)->ListDatasets(c.get(), {}, &out));
    if (!s.ok()) return s;
    return std::vector<v1::Dataset>(out.datasets().begin(), out.datasets().end());
  }

  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& req) {
    auto c = Context();
    v1::Job out;
    return Result(v1::JobService::NewStub(channel_)->CreateJob(c.get(), req, &out), out);
  }

  absl::StatusOr<v1::Job> GetJob(const std::string& id) {
    auto c = Context();
    v1::GetJobRequest req;
    req.set_id(id);
    v1::Job out;
    return Result(v1::JobService::NewStub(channel_)->GetJob(c.get(), req, &out), out);
  }

  absl::StatusOr<v1::Job> CancelJob(const std::string& id) {
    auto c = Context();
    v1::CancelJobRequest req;
    req.set_id(id);
    v1::Job out;
    return Result(v1::JobService::NewStub(channel_)->CancelJob(c.get(), req, &out), out);
  }

  // Watches until `stop` returns true for an event or the stream ends; returns what was seen.
  absl::StatusOr<std::vector<v1::JobEvent>> Watch(
      const std::string& id, const std::function<bool(const v1::JobEvent&)>& stop = {}) {
    auto c = Context();
    v1::WatchJobRequest req;
    req.set_id(id);
    auto reader = v1::JobService::NewStub(channel_)->WatchJob(c.get(), req);
    std::vector<v1::JobEvent> events;
    v1::JobEvent e;
    while (reader->Read(&e)) {
      events.push_back(e);
      if (stop && stop(e)) {
        c->TryCancel();
        break;
      }
    }
    absl::Status s = client::ToAbslStatus(reader->Finish());
    if (!s.ok() && !(stop && absl::IsCancelled(s))) return s;
    return events;
  }

  absl::StatusOr<v1::EvaluateResponse> Evaluate(const std::string& model,
                                                const std::string& adapter,
                                                const std::string& dataset) {
    auto c = Context();
    v1::EvaluateRequest req;
    req.set_model(model);
    req.set_adapter_id(adapter);
    req.set_dataset_id(dataset);
    v1::EvaluateResponse out;
    return Result(v1::InferenceService::NewStub(channel_)->Evaluate(c.get(), req, &out), out);
  }

  absl::StatusOr<v1::ListDevicesResponse> Devices() {
    auto c = Context();
    v1::ListDevicesResponse out;
    return Result(v1::DeviceService::NewStub(channel_)->ListDevices(c.get(), {}, &out), out);
  }

  // Writes the adapter's files into `dir`.
  absl::Status Download(const std::string& id, const std::string& dir) {
    auto c = Context();
    v1::DownloadAdapterRequest req;
    req.set_id(id);
    auto reader = v1::AdapterService::NewStub(channel_)->DownloadAdapter(c.get(), req);
    std::filesystem::create_directories(dir);
    std::map<std::string, std::string> files;
    v1::AdapterFileChunk chunk;
    while (reader->Read(&chunk)) files[chunk.file_name()] += chunk.data();
    absl::Status s = client::ToAbslStatus(reader->Finish());
    if (!s.ok()) return s;
    for (const auto& [name, data] : files) {
      std::ofstream(std::filesystem::path(dir) / name, std::ios::binary) << data;
    }
    return absl::OkStatus();
  }

  // The standard health check of the whole server (grpc.health.v1.Health/Check, service ""),
  // as a Kubernetes gRPC probe asks it: 1 SERVING, 2 NOT_SERVING. The messages are written by
  // hand (an empty request; the answer is field 1, a varint), there being no stub for them.
  absl::StatusOr<int> HealthStatus() {
    grpc::GenericStub stub(channel_);
    grpc::CompletionQueue cq;
    auto c = Context();
    grpc::Slice empty;
    grpc::ByteBuffer request(&empty, 1);
    auto call = stub.PrepareUnaryCall(c.get(), "/grpc.health.v1.Health/Check", request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    if (!cq.Next(&tag, &ok) || !ok) return absl::UnavailableError("the health check did not end");
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    absl::Status s = client::ToAbslStatus(status);
    if (!s.ok()) return s;
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return absl::InternalError("unreadable health answer");
    std::string bytes;
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    if (bytes.size() != 2 || bytes[0] != 0x08) {
      return absl::InternalError(
          absl::StrCat("unexpected health answer of ", bytes.size(), " bytes"));
    }
    return static_cast<int>(bytes[1]);
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context() {
    return client::MakeClientContext(options_, absl::Seconds(120));
  }
  template <typename T>
  static absl::StatusOr<T> Result(const grpc::Status& s, const T& out) {
    absl::Status a = client::ToAbslStatus(s);
    if (!a.ok()) return a;
    return out;
  }

  client::ConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace qlorad::testing
