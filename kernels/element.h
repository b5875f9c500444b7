// How the block programs shared by the GPU and the CPU block emulator
// (kernels/flash_attention_body.h, kernels/lora_dropout_body.h) read and write activations of
// element type X: float32 here; kernels/cuda/bf16_element.cuh adds bf16 (__nv_bfloat16) for
// the CUDA kernels. Load widens to float (exact for bf16); Round makes the stored value
// (nearest even for bf16).
#pragma once

#if defined(__CUDACC__)
#define QLORAD_ELEMENT_FN __host__ __device__ inline
#else
#define QLORAD_ELEMENT_FN inline
#endif

namespace qlorad::kernels {

template <typename X>
struct Element;

template <>
struct Element<float> {
  QLORAD_ELEMENT_FN static float Load(float v) { return v; }
  QLORAD_ELEMENT_FN static float Round(float v) { return v; }
};

}  // namespace qlorad::kernels
