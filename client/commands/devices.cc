// qloractl devices: the node's training devices, what each holds and what a job may take.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "client/cli/command.h"
#include "engine/status_macros.h"
#include "qlorad/v1/devices.grpc.pb.h"

namespace qlorad::ctl {
namespace {

// "12.0 GiB of 139.8 GiB free" on a card; empty where the device reports none (a CPU).
std::string CardMemory(const v1::DeviceMemory& m) {
  if (m.device_total() <= 0) return "-";
  return absl::StrCat(FormatBytes(m.device_free()), " of ", FormatBytes(m.device_total()));
}

absl::Status Devices(const Invocation& invocation) {
  v1::ListDevicesResponse response;
  auto context = invocation.Context(kUnaryTimeout);
  RETURN_IF_ERROR(RpcStatus(v1::DeviceService::NewStub(invocation.channel)
                                ->ListDevices(context.get(), v1::ListDevicesRequest(), &response)));
  return Emit(invocation, response, [&] {
    if (response.activity_shown()) {
      Table table({"DEVICE", "STATE", "JOBS", "MODELS", "RESERVED", "BUDGET", "WEIGHTS", "ADAPTERS",
                   "OPTIMIZER (PAGED OUT)", "ACTIVATIONS", "WORKSPACE", "CARD FREE"});
      for (const v1::Device& d : response.devices()) {
        const v1::DeviceMemory& m = d.memory();
        table.AddRow({d.name(), d.lost() ? "LOST" : "up", absl::StrCat(d.jobs_running()),
                      absl::StrCat(d.base_models_loaded()), FormatBytes(d.memory_reserved()),
                      FormatBytes(d.memory_budget()), FormatBytes(m.base_weights()),
                      FormatBytes(m.adapters()),
                      absl::StrCat(FormatBytes(m.optimizer_device()), " (",
                                   FormatBytes(m.optimizer_host()), ")"),
                      FormatBytes(m.activations()), FormatBytes(m.workspace()), CardMemory(m)});
      }
      table.Print();
    } else {  // a tenant key: capacity and state only
      Table table({"DEVICE", "STATE", "BUDGET"});
      for (const v1::Device& d : response.devices()) {
        table.AddRow({d.name(), d.lost() ? "LOST" : "up", FormatBytes(d.memory_budget())});
      }
      table.Print();
    }
    for (const v1::Device& d : response.devices()) {
      std::printf("%s: %s\n", d.name().c_str(), d.description().c_str());
      if (d.lost()) std::printf("  lost: %s\n", d.lost_reason().c_str());
      if (d.inference_memory_bytes() > 0) {
        std::printf("  generation and evaluation share it: up to %s, outside its budget\n",
                    FormatBytes(d.inference_memory_bytes()).c_str());
      }
    }
    std::printf("largest job (with its base model): %s\n",
                FormatBytes(response.max_job_bytes()).c_str());
    std::printf("generation and evaluation: %s\n", response.inference_device().c_str());
    if (!response.activity_shown()) {
      std::printf("(what each device holds and runs is shown to admin keys)\n");
    }
  });
}

}  // namespace

std::vector<Command> DeviceCommands() { return {{"devices", "", {}, {}, Devices}}; }

}  // namespace qlorad::ctl
