// Matmul without bias on the GPU through cuBLASLt, in the layout of torch.nn.Linear.
// CPU reference: kernels/cpu/matmul.h.
//   forward:  out (N, OC) = inp (N, C) @ W^T,   W stored row-major as (OC, C)
//   backward: dinp (N, C) = dout (N, OC) @ W;   dW (OC, C) += dout^T @ inp
// floatX in, fp32 accumulation (CUBLAS_COMPUTE_32F: true fp32 in FP32 mode, no TF32). out and dinp
// are floatX and written (beta = 0): where an input feeds several products (q|k|v, gate|up) they are
// one product with the weights stacked, and a residual's second gradient is added by the norm
// backward that reads it (train_mixln.cu), so nothing needs a zeroed buffer or an add in the epilogue.
// The weight gradient dW is fp32 in both builds, so that summing it over a step's micro-batches
// through beta = 1 rounds to fp32, not to bf16, at each add (see docs/gpu.md, "Gradient accumulation").
// Split-K algorithms may only reduce their partial sums in the compute type (fp32), never in a bf16
// output type.
//
// cuBLAS is column-major, and a row-major (R, K) matrix is the column-major (K, R) matrix, its
// transpose. So each row-major product is computed as its transpose:
//   out^T (OC, N) = W (OC, C) . inp^T (C, N):      A = W transposed (stored C x OC),  B = inp (C x N)
//   dinp^T (C, N) = W^T (C, OC) . dout^T (OC, N):  A = W (C x OC),                    B = dout (OC x N)
//   dW^T (C, OC) = inp^T (C, N) . dout (N, OC):    A = inp (C x N),   B = dout transposed (stored OC x N)
//
// Plans: the descriptors, the matrix layouts and the heuristic's algorithm depend only on the key
// below, so each is made once, on a key's first product, and kept until matmul_teardown(). A
// trainer uses a dozen keys; the search is linear.
#pragma once
#include <cstdint>
#include <tuple>
#include <vector>
#include "common.cuh"

// The one cuBLASLt handle and workspace, made by matmul_setup() before the first matmul.
inline cublasLtHandle_t cublaslt_handle = nullptr;
inline void* cublaslt_workspace = nullptr;
constexpr size_t CUBLASLT_WORKSPACE_BYTES = 32u << 20;  // what NVIDIA recommends for Hopper

// The largest power of two, up to 256, dividing the address: cuBLASLt's heuristic otherwise assumes
// 256-byte aligned matrices, and a slice of a larger buffer may not be.
inline uint32_t pointer_alignment(const void* p) {
    uint32_t alignment = 256;
    while ((uintptr_t)p % alignment) alignment /= 2;
    return alignment;
}

// Everything the heuristic is told: the column-major shape D (m, n) = op(A) (m, k) . op(B) (k, n),
// the transpositions, D's type, and the alignments of A, B and D (C is D). beta is not among them:
// the heuristic does not see it, and the one algorithm serves beta = 0 and beta = 1 alike.
struct MatmulKey {
    int m, n, k;
    bool transpose_a, transpose_b, d_fp32;
    uint32_t align_a, align_b, align_d;

    auto fields() const { return std::tie(m, n, k, transpose_a, transpose_b, d_fp32, align_a, align_b, align_d); }
    bool operator==(const MatmulKey& other) const { return fields() == other.fields(); }
};

struct MatmulPlan {
    MatmulKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
};

inline std::vector<MatmulPlan> matmul_plans;

inline void matmul_setup() {
    if (cublaslt_handle) return;
    cublasCheck(cublasLtCreate(&cublaslt_handle));
    cudaCheck(cudaMalloc(&cublaslt_workspace, CUBLASLT_WORKSPACE_BYTES));
}

inline void matmul_teardown() {
    if (!cublaslt_handle) return;
    for (const MatmulPlan& plan : matmul_plans) {
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.a_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.b_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.d_layout));
        cublasCheck(cublasLtMatmulDescDestroy(plan.desc));
    }
    matmul_plans.clear();
    cublasCheck(cublasLtDestroy(cublaslt_handle));
    cudaCheck(cudaFree(cublaslt_workspace));
    cublaslt_handle = nullptr;
    cublaslt_workspace = nullptr;
}

// The plan for key: the cached one, or a new one from the heuristic. Each matrix is stored densely,
// its leading dimension the number of rows it is stored with. If no algorithm satisfies the
// constraints (fp32 split-K reduction, the alignments, the workspace), exits naming the product:
// there is no fallback that would keep the fp32 reduction.
inline const MatmulPlan& matmul_plan(const MatmulKey& key) {
    for (const MatmulPlan& plan : matmul_plans)
        if (plan.key == key) return plan;
    MatmulPlan plan;
    plan.key = key;
    const cudaDataType_t type = FLOATX_IS_FP32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasCheck(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    const int a_rows = key.transpose_a ? key.k : key.m, b_rows = key.transpose_b ? key.n : key.k;
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.a_layout, type, a_rows, key.transpose_a ? key.m : key.k, a_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.b_layout, type, b_rows, key.transpose_b ? key.k : key.n, b_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.d_layout, key.d_fp32 ? CUDA_R_32F : type, key.m, key.n, key.m));

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
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attribute, bytes] : alignments)
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle, plan.desc, plan.a_layout, plan.b_layout, plan.d_layout,
                                               plan.d_layout, preference, 1, &heuristic, &found));
    cublasCheck(cublasLtMatmulPreferenceDestroy(preference));
    if (found == 0) {
        fprintf(stderr,
                "cuBLASLt has no algorithm for D (%d x %d, %s) = op(A) op(B) with k = %d, transa %d, transb %d, "
                "alignments A %u B %u D %u bytes, split-K reduced in fp32 only\n",
                key.m, key.n, key.d_fp32 || FLOATX_IS_FP32 ? "fp32" : "bf16", key.k, key.transpose_a,
                key.transpose_b, key.align_a, key.align_b, key.align_d);
        exit(EXIT_FAILURE);
    }
    plan.algo = heuristic.algo;
    matmul_plans.push_back(plan);
    return matmul_plans.back();
}

// Column-major D (m, n) = op(A) (m, k) . op(B) (k, n) + beta * D, with op the transpose when asked.
// A and B are floatX; D is floatX or fp32 (OutT).
template <typename OutT>
void cublaslt_matmul(OutT* d, const floatX* a, const floatX* b, int m, int n, int k, bool transpose_a,
                     bool transpose_b, float beta, cudaStream_t stream) {
    static_assert(std::is_same<OutT, floatX>::value || std::is_same<OutT, float>::value, "D is floatX or fp32");
    const MatmulPlan& plan = matmul_plan({m, n, k, transpose_a, transpose_b, std::is_same<OutT, float>::value,
                                          pointer_alignment(a), pointer_alignment(b), pointer_alignment(d)});
    // C and D are the same matrix: with beta = 1 the product is added to it.
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(cublaslt_handle, plan.desc, &alpha, a, plan.a_layout, b, plan.b_layout, &beta, d,
                               plan.d_layout, d, plan.d_layout, &plan.algo, cublaslt_workspace,
                               CUBLASLT_WORKSPACE_BYTES, stream));
}

// The plans made so far (for the tests).
inline size_t matmul_plan_count() { return matmul_plans.size(); }

// out (N, OC) = inp (N, C) @ W^T
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* W, int N, int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(out, W, inp, OC, N, C, true, false, 0.0f, stream);
}

// dW (OC, C) += dout^T @ inp in fp32, then dinp (N, C) = dout @ W (written). dW goes first, so dinp
// may be inp's buffer (the MLP backward writes d swiglu over swiglu).
inline void matmul_backward(floatX* dinp, float* dW, const floatX* dout, const floatX* inp, const floatX* W, int N,
                            int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(dW, inp, dout, C, OC, N, false, true, 1.0f, stream);
    cublaslt_matmul(dinp, W, dout, C, N, OC, false, false, 0.0f, stream);
}
