// The node's standard gRPC health (grpc.health.v1, which the Kubernetes probes ask) follows its
// training devices: NOT_SERVING once every one is lost (a GPU fault poisons the process's CUDA
// context, and a lost device takes no job until a restart), so that a liveness probe restarts
// the node rather than leave it Ready while it can train nothing. Looks once a second on a
// thread of its own; RAII: the thread ends with the object.
#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "server/core/job_manager.h"

namespace qlorad::server {

class DeviceHealth {
 public:
  // Both must outlive this object.
  DeviceHealth(core::JobManager* manager, grpc::HealthCheckServiceInterface* health)
      : manager_(manager), health_(health), thread_([this] { Watch(); }) {}
  ~DeviceHealth() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    stopped_.notify_all();
    thread_.join();
  }
  DeviceHealth(const DeviceHealth&) = delete;
  DeviceHealth& operator=(const DeviceHealth&) = delete;

 private:
  void Watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      bool all_lost = true;
      for (const core::DeviceInfo& d : manager_->Devices()) all_lost &= d.lost;
      if (all_lost) {  // for good: a lost device stays lost until the restart
        health_->SetServingStatus(false);
        std::fprintf(stderr, "qlorad: every training device is lost: health NOT_SERVING\n");
        return;
      }
      stopped_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
    }
  }

  core::JobManager* const manager_;
  grpc::HealthCheckServiceInterface* const health_;
  std::mutex mu_;
  std::condition_variable stopped_;
  bool stop_ = false;   // guarded by mu_
  std::thread thread_;  // last: starts once the members above are made
};

}  // namespace qlorad::server
