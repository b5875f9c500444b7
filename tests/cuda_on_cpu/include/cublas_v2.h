// CPU stand-in for cuBLAS (tests/cuda_on_cpu/README.md): the handle calls and the two GEMMs the
// engine's CUDA device uses, column-major as cuBLAS is, taking the type combinations cuBLAS
// takes, with float accumulation, float operands rounded to bf16 where the compute type
// (FAST_16BF) allows cuBLAS to, C never read when beta is 0, the result rounded once to C's
// type. The math mode is recorded, not used: the compute type decides.
#pragma once

#include <cstdint>

#include "cuda_runtime.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
using cublasHandle_t = struct cublasContext*;
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2 };
enum cublasComputeType_t {
  CUBLAS_COMPUTE_32F = 68,
  CUBLAS_COMPUTE_32F_PEDANTIC = 69,
  CUBLAS_COMPUTE_32F_FAST_16BF = 75,
};
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);

// C (m x n, ldc) = alpha op(A) op(B) + beta C; op(A) m x k, op(B) k x n; A, B and C float32 or
// bf16 (CUDA_R_32F, CUDA_R_16BF); alpha and beta float.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t trans_a,
                            cublasOperation_t trans_b, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

// The same for batch i < batch_count, each operand X_i at x + i * stride_x elements.
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t trans_a,
                                          cublasOperation_t trans_b, int m, int n, int k,
                                          const void* alpha, const void* a, cudaDataType_t a_type,
                                          int lda, int64_t stride_a, const void* b,
                                          cudaDataType_t b_type, int ldb, int64_t stride_b,
                                          const void* beta, void* c, cudaDataType_t c_type, int ldc,
                                          int64_t stride_c, int batch_count,
                                          cublasComputeType_t compute, cublasGemmAlgo_t algo);
