// The CPU stand-in's cuBLAS (include/cublas_v2.h): a plain GEMM, one dot product per output,
// for the small models the GPU tests train.
#include <cstdio>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"

// A handle belongs to the card current when it was made: cuBLAS runs its GEMMs there, into its
// stream, and fails (CUBLAS_STATUS_EXECUTION_FAILED) where another card is current, the stream
// is another card's, the card has faulted, or an operand is memory the card cannot reach.
struct cublasContext {
  int card = 0;
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

size_t ElementBytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

float Read(const void* p, cudaDataType_t t, int64_t i) {
  if (t == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

void Write(void* p, cudaDataType_t t, int64_t i, float v) {
  if (t == CUDA_R_16BF) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

bool Supported(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

// One column-major GEMM. op(A) is gathered into rows of k (row i: A(i, :) or A(:, i)) and
// op(B) into columns of k, so that each output is one contiguous dot product in k order.
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const void* a,
          cudaDataType_t a_type, int lda, const void* b, cudaDataType_t b_type, int ldb, float beta,
          void* c, cudaDataType_t c_type, int ldc, bool operands_bf16) {
  auto operand = [&](const void* p, cudaDataType_t t, int64_t i) {
    const float v = Read(p, t, i);
    return operands_bf16 ? __bfloat162float(__float2bfloat16_rn(v)) : v;
  };
  std::vector<float> rows(static_cast<size_t>(m) * k), cols(static_cast<size_t>(n) * k);
  for (int i = 0; i < m; ++i) {
    for (int l = 0; l < k; ++l) {
      rows[static_cast<size_t>(i) * k + l] =
          operand(a, a_type,
                  trans_a ? static_cast<int64_t>(i) * lda + l : static_cast<int64_t>(l) * lda + i);
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int l = 0; l < k; ++l) {
      cols[static_cast<size_t>(j) * k + l] =
          operand(b, b_type,
                  trans_b ? static_cast<int64_t>(l) * ldb + j : static_cast<int64_t>(j) * ldb + l);
    }
  }
  for (int j = 0; j < n; ++j) {
    const float* col = &cols[static_cast<size_t>(j) * k];
    for (int i = 0; i < m; ++i) {
      const float* row = &rows[static_cast<size_t>(i) * k];
      float acc = 0.0f;
      for (int l = 0; l < k; ++l) acc += row[l] * col[l];
      const int64_t at = static_cast<int64_t>(j) * ldc + i;
      // beta 0: C is not read, so NaN in fresh memory does not leak into the result.
      Write(c, c_type, at, beta == 0.0f ? alpha * acc : alpha * acc + beta * Read(c, c_type, at));
    }
  }
}

cublasStatus_t Check(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m,
                     int n, int k, cudaDataType_t at, int lda, cudaDataType_t bt, int ldb,
                     cudaDataType_t ct, int ldc, int batch, cublasComputeType_t compute) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  // The combinations cuBLAS takes (cublasGemmEx's table): float32 in and out, under any of
  // the three compute types; bf16 in, bf16 or float32 out, under CUBLAS_COMPUTE_32F only.
  const bool f32 = at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F;
  const bool bf16 = at == CUDA_R_16BF && bt == CUDA_R_16BF && Supported(ct);
  if (!(f32 || (bf16 && compute == CUBLAS_COMPUTE_32F))) return CUBLAS_STATUS_NOT_SUPPORTED;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (a_rows > 1 ? a_rows : 1) ||
      ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  cudaGetDevice(&(*handle)->card);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t trans_a,
                            cublasOperation_t trans_b, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo) {
  return cublasGemmStridedBatchedEx(handle, trans_a, trans_b, m, n, k, alpha, a, a_type, lda, 0, b,
                                    b_type, ldb, 0, beta, c, c_type, ldc, 0, 1, compute, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t trans_a,
                                          cublasOperation_t trans_b, int m, int n, int k,
                                          const void* alpha, const void* a, cudaDataType_t a_type,
                                          int lda, int64_t stride_a, const void* b,
                                          cudaDataType_t b_type, int ldb, int64_t stride_b,
                                          const void* beta, void* c, cudaDataType_t c_type, int ldc,
                                          int64_t stride_c, int batch_count,
                                          cublasComputeType_t compute, cublasGemmAlgo_t) {
  const cublasStatus_t s = Check(handle, trans_a, trans_b, m, n, k, a_type, lda, b_type, ldb,
                                 c_type, ldc, batch_count, compute);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  int current = -1;
  cudaGetDevice(&current);
  const int stream_card = qlorad::cuda_on_cpu::StreamCard(handle->stream);
  if (current != handle->card || stream_card != handle->card) {
    std::fprintf(stderr,
                 "cuda_on_cpu: cuBLAS handle of card %d used with card %d current and a "
                 "stream of card %d\n",
                 handle->card, current, stream_card);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  // As a kernel launch: not on a faulted card, and only on memory the card reaches. A fault not
  // yet shown leaves the GEMM queued as far as the host knows; it never runs.
  switch (qlorad::cuda_on_cpu::AdmitWork("cublasGemmEx",
                                         {{a, 0, nullptr}, {b, 1, nullptr}, {c, 2, nullptr}})) {
    case qlorad::cuda_on_cpu::Admission::kFaulted:
      return CUBLAS_STATUS_EXECUTION_FAILED;
    case qlorad::cuda_on_cpu::Admission::kPending:
      return CUBLAS_STATUS_SUCCESS;
    case qlorad::cuda_on_cpu::Admission::kRun:
      break;
  }
  // FAST_16BF lets cuBLAS round float operands to bf16 for the tensor cores; here they always
  // are, the coarser of what the card may do.
  const bool operands_bf16 = compute == CUBLAS_COMPUTE_32F_FAST_16BF;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int i = 0; i < batch_count; ++i) {
    Gemm(trans_a == CUBLAS_OP_T, trans_b == CUBLAS_OP_T, m, n, k, al,
         static_cast<const char*>(a) + i * stride_a * ElementBytes(a_type), a_type, lda,
         static_cast<const char*>(b) + i * stride_b * ElementBytes(b_type), b_type, ldb, be,
         static_cast<char*>(c) + i * stride_c * ElementBytes(c_type), c_type, ldc, operands_bf16);
  }
  return CUBLAS_STATUS_SUCCESS;
}
