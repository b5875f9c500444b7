#include "absl/strings/str_cat.h"
#include "engine/lora.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"
#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

// For serving stacks that ignore rsLoRA: the plain alpha with the same scale and use_rslora
// false, the number the engine's exporter writes (LoraConfig::PlainAlpha).
absl::StatusOr<std::string> RsloraAsPlain(const std::string& config_json) {
  nlohmann::json j = nlohmann::json::parse(config_json, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError("stored adapter_config.json does not parse");
  if (j.value("use_rslora", false)) {
    j["lora_alpha"] = LoraConfig::PlainAlpha(j.value("lora_alpha", 0.0f), j.value("r", 0));
    j["use_rslora"] = false;
  }
  return j.dump(2);
}

}  // namespace

grpc::Status AdapterServiceImpl::ListAdapters(grpc::ServerContext* c,
                                              const v1::ListAdaptersRequest*,
                                              v1::ListAdaptersResponse* out) {
  Call call(c, "ListAdapters", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto list = node_->adapters->List(call.tenant().name);
  if (list.ok()) {
    for (v1::Adapter& a : *list) *out->add_adapters() = std::move(a);
  }
  return call.Finish(list.status());
}

grpc::Status AdapterServiceImpl::GetAdapter(grpc::ServerContext* c,
                                            const v1::GetAdapterRequest* req, v1::Adapter* out) {
  Call call(c, "GetAdapter", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto a = node_->adapters->Get(call.tenant().name, req->id());
  if (a.ok()) *out = *a;
  return call.Finish(a.status());
}

grpc::Status AdapterServiceImpl::DownloadAdapter(grpc::ServerContext* c,
                                                 const v1::DownloadAdapterRequest* req,
                                                 grpc::ServerWriter<v1::AdapterFileChunk>* writer) {
  Call call(c, "DownloadAdapter", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  // Sends each stored part as it is read (adapter_config.json first, as the API promises): the
  // call holds one part, never the whole adapter.
  std::string config;  // gathered whole where it is rewritten (a few hundred bytes)
  auto send = [&](const std::string& name, std::string_view data, bool last) -> absl::Status {
    size_t offset = 0;
    do {
      v1::AdapterFileChunk chunk;
      chunk.set_file_name(name);
      const size_t n = std::min(kChunkBytes, data.size() - offset);
      chunk.set_data(std::string(data.substr(offset, n)));
      offset += n;
      chunk.set_end_of_file(last && offset == data.size());
      if (!writer->Write(chunk)) return absl::CancelledError("the client went away");
    } while (offset < data.size());
    return absl::OkStatus();
  };
  return call.Finish(node_->adapters->VisitFiles(
      call.tenant().name, req->id(),
      [&](const std::string& name, std::string_view data, bool last) -> absl::Status {
        if (name != "adapter_config.json" || !req->rslora_as_plain()) return send(name, data, last);
        config.append(data);
        if (!last) return absl::OkStatus();
        ASSIGN_OR_RETURN(const std::string rewritten, RsloraAsPlain(config));
        return send(name, rewritten, true);
      }));
}

grpc::Status AdapterServiceImpl::DeleteAdapter(grpc::ServerContext* c,
                                               const v1::DeleteAdapterRequest* req,
                                               v1::DeleteAdapterResponse*) {
  Call call(c, "DeleteAdapter", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  auto a = node_->adapters->Get(call.tenant().name, req->id());
  if (!a.ok()) return call.Finish(a.status());
  return call.Finish(node_->adapters->Delete(call.tenant().name, req->id()));
}

}  // namespace qlorad::server
