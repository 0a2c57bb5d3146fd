// Matmul without bias on the GPU through cuBLASLt, in the layout of torch.nn.Linear.
// CPU reference: kernels/cpu/matmul.h.
//   forward:  out (N, OC) = inp (N, C) @ W^T,   W stored row-major as (OC, C)
//   backward: dinp (N, C) += dout (N, OC) @ W;   dW (OC, C) += dout^T @ inp
// floatX in, fp32 accumulation (CUBLAS_COMPUTE_32F: true fp32 in FP32 mode, no TF32). out and dinp
// are floatX; the weight gradient dW is fp32 in both builds, so that summing it over a step's
// micro-batches through beta = 1 rounds to fp32, not to bf16, at each add (see README "Gradient
// accumulation"). Split-K algorithms may only reduce their partial sums in the compute type (fp32),
// never in a bf16 output type.
//
// cuBLAS is column-major, and a row-major (R, K) matrix is the column-major (K, R) matrix, its
// transpose. So each row-major product is computed as its transpose:
//   out^T (OC, N) = W (OC, C) . inp^T (C, N):      A = W transposed (stored C x OC),  B = inp (C x N)
//   dinp^T (C, N) = W^T (C, OC) . dout^T (OC, N):  A = W (C x OC),                    B = dout (OC x N)
//   dW^T (C, OC) = inp^T (C, N) . dout (N, OC):    A = inp (C x N),   B = dout transposed (stored OC x N)
#pragma once
#include <cstdint>
#include "common.cuh"

// The one cuBLASLt handle and workspace, made by matmul_setup() before the first matmul.
inline cublasLtHandle_t cublaslt_handle = nullptr;
inline void* cublaslt_workspace = nullptr;
constexpr size_t CUBLASLT_WORKSPACE_BYTES = 32u << 20;  // what NVIDIA recommends for Hopper

inline void matmul_setup() {
    if (cublaslt_handle) return;
    cublasCheck(cublasLtCreate(&cublaslt_handle));
    cudaCheck(cudaMalloc(&cublaslt_workspace, CUBLASLT_WORKSPACE_BYTES));
}

inline void matmul_teardown() {
    if (!cublaslt_handle) return;
    cublasCheck(cublasLtDestroy(cublaslt_handle));
    cudaCheck(cudaFree(cublaslt_workspace));
    cublaslt_handle = nullptr;
    cublaslt_workspace = nullptr;
}

// The largest power of two, up to 256, dividing the address: cuBLASLt's heuristic otherwise assumes
// 256-byte aligned matrices, and a slice of a larger buffer may not be.
inline uint32_t pointer_alignment(const void* p) {
    uint32_t alignment = 256;
    while ((uintptr_t)p % alignment) alignment /= 2;
    return alignment;
}

// Column-major D (m, n) = op(A) (m, k) . op(B) (k, n) + beta * D, with op the transpose when asked;
// each matrix is stored densely, its leading dimension the number of rows it is stored with. A and B
// are floatX; D is floatX or fp32 (OutT).
template <typename OutT>
void cublaslt_matmul(OutT* d, const floatX* a, const floatX* b, int m, int n, int k, bool transpose_a,
                     bool transpose_b, float beta, cudaStream_t stream) {
    static_assert(std::is_same<OutT, floatX>::value || std::is_same<OutT, float>::value, "D is floatX or fp32");
    const cudaDataType_t type = FLOATX_IS_FP32 ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t d_type = std::is_same<OutT, float>::value ? CUDA_R_32F : type;
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    const int a_rows = transpose_a ? k : m, b_rows = transpose_b ? n : k;
    cublasCheck(cublasLtMatrixLayoutCreate(&a_layout, type, a_rows, transpose_a ? m : k, a_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&b_layout, type, b_rows, transpose_b ? k : n, b_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&d_layout, d_type, m, n, m));

    cublasLtMatmulPreference_t preference;
    cublasCheck(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = CUBLASLT_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &workspace_bytes, sizeof(workspace_bytes)));
    // Split-K partial sums are added in fp32 (the compute type) in the workspace, or not split at all;
    // the in-place and output-type schemes would add them in D's type, bf16 for out and dinp.
    const uint32_t reduction_schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                     &reduction_schemes, sizeof(reduction_schemes)));
    const uint32_t align_a = pointer_alignment(a), align_b = pointer_alignment(b), align_d = pointer_alignment(d);
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                     &align_a, sizeof(align_a)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                     &align_b, sizeof(align_b)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                     &align_d, sizeof(align_d)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                     &align_d, sizeof(align_d)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle, desc, a_layout, b_layout, d_layout, d_layout,
                                               preference, 1, &heuristic, &found));
    if (found == 0) {
        fprintf(stderr, "cuBLASLt has no algorithm for m=%d n=%d k=%d transa=%d transb=%d\n", m, n, k,
                transpose_a, transpose_b);
        exit(EXIT_FAILURE);
    }
    // C and D are the same matrix: with beta = 1 the product is added to it.
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(cublaslt_handle, desc, &alpha, a, a_layout, b, b_layout, &beta, d, d_layout, d,
                               d_layout, &heuristic.algo, cublaslt_workspace, CUBLASLT_WORKSPACE_BYTES, stream));
    cublasCheck(cublasLtMatmulPreferenceDestroy(preference));
    cublasCheck(cublasLtMatrixLayoutDestroy(a_layout));
    cublasCheck(cublasLtMatrixLayoutDestroy(b_layout));
    cublasCheck(cublasLtMatrixLayoutDestroy(d_layout));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

// out (N, OC) = inp (N, C) @ W^T
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* W, int N, int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(out, W, inp, OC, N, C, true, false, 0.0f, stream);
}

// dinp (N, C) += dout @ W;   dW (OC, C) += dout^T @ inp, dW in fp32
inline void matmul_backward(floatX* dinp, float* dW, const floatX* dout, const floatX* inp, const floatX* W, int N,
                            int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(dinp, W, dout, C, N, OC, false, false, 1.0f, stream);
    cublaslt_matmul(dW, inp, dout, C, OC, N, false, true, 1.0f, stream);
}
