// Single-precision GEMM on the CPU, row-major: C = alpha * op(A) * op(B) + beta * C, with
// op(A) of shape [m, k] and op(B) of shape [k, n]. Uses the system CBLAS when the build found
// one (QLORAD_HAVE_CBLAS) and a portable blocked loop otherwise, so that machines without a
// system BLAS (the GPU machine) still build the CPU reference backend.
#pragma once

#include <cstdint>

namespace qlorad::kernels {

void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
             int64_t ldc);

// The portable implementation, always built, so tests can compare it with the BLAS one.
void GemmF32Portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                     int64_t ldc);

// "cblas" or "portable": which implementation GemmF32 uses in this build.
const char* GemmBackendName();

}  // namespace qlorad::kernels
