// bf16 activations for the shared block programs (kernels/element.h): widened exactly on read,
// rounded to nearest even once on write.
#pragma once

#include <cuda_bf16.h>

#include "kernels/element.h"

namespace qlorad::kernels {

template <>
struct Element<__nv_bfloat16> {
  __device__ static float Load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 Round(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace qlorad::kernels
