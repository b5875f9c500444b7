// Times of a CUDA device's operations by name, for benchmarks (engine/cuda_device.h): each
// outermost operation is bracketed by two CUDA events recorded in stream order, so timing adds
// no waits; Take waits once and sums the event pairs. Only the CUDA device includes this.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "engine/cuda_device.h"

namespace qlorad {

class CudaOpProfiler {
 public:
  CudaOpProfiler() = default;
  CudaOpProfiler(const CudaOpProfiler&) = delete;
  CudaOpProfiler& operator=(const CudaOpProfiler&) = delete;
  ~CudaOpProfiler() {
    for (Mark& m : marks_) {
      cudaEventDestroy(m.start);
      cudaEventDestroy(m.stop);
    }
  }

  void Start() {
    enabled_ = true;
    broken_ = false;
    depth_ = 0;
    used_ = 0;
  }

  // Brackets one operation; an operation inside another (a GEMM inside GEMM attention) is
  // counted as part of the outer one only.
  class Scope {
   public:
    Scope(CudaOpProfiler* p, const char* name, cudaStream_t stream) : p_(p), stream_(stream) {
      if (!p_->enabled_ || p_->depth_++ > 0) return;
      mark_ = p_->Next(name);
      if (mark_ >= 0 && !p_->Ok(cudaEventRecord(p_->marks_[mark_].start, stream_))) mark_ = -1;
    }
    ~Scope() {
      if (!p_->enabled_) return;
      --p_->depth_;
      if (mark_ >= 0) p_->Ok(cudaEventRecord(p_->marks_[mark_].stop, stream_));
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CudaOpProfiler* p_;
    cudaStream_t stream_;
    int64_t mark_ = -1;
  };

  // Waits for `stream`, returns the times since Start by operation, longest first, and stops.
  std::vector<CudaOpTime> Take(cudaStream_t stream) {
    std::vector<CudaOpTime> out;
    const bool timed = enabled_ && !broken_;
    enabled_ = false;
    depth_ = 0;
    if (!timed || cudaStreamSynchronize(stream) != cudaSuccess) return out;
    std::map<std::string, CudaOpTime> by_name;
    for (size_t i = 0; i < used_; ++i) {
      float ms = 0.0f;
      if (!Ok(cudaEventElapsedTime(&ms, marks_[i].start, marks_[i].stop))) return {};
      CudaOpTime& t = by_name[marks_[i].name];
      t.op = marks_[i].name;
      ++t.calls;
      t.ms += ms;
    }
    for (auto& [name, t] : by_name) out.push_back(t);
    std::sort(out.begin(), out.end(),
              [](const CudaOpTime& a, const CudaOpTime& b) { return a.ms > b.ms; });
    used_ = 0;
    return out;
  }

 private:
  struct Mark {
    const char* name;
    cudaEvent_t start, stop;
  };

  // A failed event call must not surface as the next kernel's launch error (launchers return
  // cudaGetLastError): it is cleared here and the profile is abandoned, not the device.
  bool Ok(cudaError_t e) {
    if (e == cudaSuccess) return true;
    cudaGetLastError();
    broken_ = true;
    enabled_ = false;
    return false;
  }

  // The next event pair (made once, reused by later profiles); -1 if CUDA cannot make one.
  int64_t Next(const char* name) {
    if (used_ == marks_.size()) {
      Mark m{name, nullptr, nullptr};
      if (!Ok(cudaEventCreate(&m.start))) return -1;
      if (!Ok(cudaEventCreate(&m.stop))) {
        cudaEventDestroy(m.start);
        return -1;
      }
      marks_.push_back(m);
    }
    marks_[used_].name = name;
    return static_cast<int64_t>(used_++);
  }

  bool enabled_ = false, broken_ = false;
  int depth_ = 0;
  size_t used_ = 0;
  std::vector<Mark> marks_;
};

}  // namespace qlorad
