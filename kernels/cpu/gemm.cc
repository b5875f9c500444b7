#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/parallel.h"

#ifdef QLORAD_HAVE_CBLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace qlorad::kernels {

void GemmF32Portable(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                     int64_t ldc) {
  // Rows of C are independent; each row accumulates in a local buffer so that the innermost
  // loop runs over contiguous memory of B (or over a contiguous row of B^T as a dot product).
#pragma omp parallel for schedule(static) if ((m * n * k) >= kMinParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> acc(n, 0.0f);
    if (!trans_b) {
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a ? a[p * lda + i] : a[i * lda + p];
        if (av == 0.0f) continue;
        const float* brow = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) acc[j] += av * brow[j];
      }
    } else if (!trans_a) {
      const float* arow = a + i * lda;
      for (int64_t j = 0; j < n; ++j) {
        const float* brow = b + j * ldb;
        float s = 0.0f;
        for (int64_t p = 0; p < k; ++p) s += arow[p] * brow[p];
        acc[j] = s;
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        float s = 0.0f;
        for (int64_t p = 0; p < k; ++p) s += a[p * lda + i] * b[j * ldb + p];
        acc[j] = s;
      }
    }
    float* crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) {
      crow[j] = alpha * acc[j] + (beta == 0.0f ? 0.0f : beta * crow[j]);
    }
  }
}

#ifdef QLORAD_HAVE_CBLAS
namespace {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

}  // namespace
#endif

void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
             int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef QLORAD_HAVE_CBLAS
    // One thread pool, not two: OpenBLAS runs single-threaded and the output is split across
    // the OpenMP threads the other kernels use. Two pools that each spin while waiting for
    // work (OpenMP's default) fight over the cores: measured 2.5x slower training steps.
#if defined(OPENBLAS_VERSION)
  static const bool single_threaded_blas = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)single_threaded_blas;
#endif
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = omp_get_max_threads();
#endif
  const bool split_m = m >= n;
  const int64_t dim = split_m ? m : n;
  if (threads <= 1 || m * n * k < (int64_t{1} << 18) || dim < 32) {
    Sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const int64_t chunk = ((dim + threads - 1) / threads + 15) / 16 * 16;
  const int64_t chunks = (dim + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < chunks; ++t) {
    const int64_t begin = t * chunk;
    const int64_t len = std::min(chunk, dim - begin);
    if (split_m) {  // rows of op(A) and C
      const float* a_part = trans_a ? a + begin : a + begin * lda;
      Sgemm(trans_a, trans_b, len, n, k, alpha, a_part, lda, b, ldb, beta, c + begin * ldc, ldc);
    } else {  // columns of op(B) and C
      const float* b_part = trans_b ? b + begin * ldb : b + begin;
      Sgemm(trans_a, trans_b, m, len, k, alpha, a, lda, b_part, ldb, beta, c + begin, ldc);
    }
  }
#else
  GemmF32Portable(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

const char* GemmBackendName() {
#ifdef QLORAD_HAVE_CBLAS
  return "cblas";
#else
  return "portable";
#endif
}

}  // namespace qlorad::kernels
