#include "server/grpc/call.h"
#include "server/grpc/services.h"

namespace qlorad::server {

grpc::Status DeviceServiceImpl::ListDevices(grpc::ServerContext* c,
                                            const v1::ListDevicesRequest* /*req*/,
                                            v1::ListDevicesResponse* out) {
  Call call(c, "ListDevices", *node_);
  if (absl::Status s = call.Authenticate(); !s.ok()) return call.Finish(s);
  // Capacity and state for every key; activity (which reveals when other tenants' jobs run) for
  // admin keys only.
  const bool activity = call.tenant().admin;
  out->set_activity_shown(activity);
  for (const core::DeviceInfo& d : node_->manager->Devices()) {
    v1::Device* p = out->add_devices();
    p->set_name(d.name);
    p->set_description(d.description);
    p->set_memory_budget(d.memory_budget);
    p->set_lost(d.lost);
    p->set_lost_reason(d.lost_reason);
    p->set_inference_memory_bytes(d.inference_memory_bytes);
    if (!activity) continue;
    p->set_memory_reserved(d.memory_reserved);
    p->set_base_model_bytes(d.base_model_bytes);
    p->set_base_models_loaded(d.base_models_loaded);
    p->set_jobs_running(d.jobs_running);
    v1::DeviceMemory* m = p->mutable_memory();
    m->set_base_weights(d.usage.base_weights);
    m->set_adapters(d.usage.adapters);
    m->set_optimizer_device(d.usage.optimizer_device);
    m->set_optimizer_host(d.usage.optimizer_host);
    m->set_activations(d.usage.activations);
    m->set_workspace(d.usage.workspace);
    m->set_device_total(d.usage.device_total);
    m->set_device_free(d.usage.device_free);
  }
  out->set_max_job_bytes(node_->manager->MaxDeviceBudget());
  if (node_->inference) out->set_inference_device(node_->inference->device_name());
  return call.Finish(absl::OkStatus());
}

}  // namespace qlorad::server
