// CPU reference: matmul without bias, the layout of torch.nn.Linear and of the GPU kernels.
//   out (N, OC) = inp (N, C) @ W^T,  with W stored row-major as (OC, C).
// matmul_backward accumulates (+=) into dinp and dW, so gradients of shared inputs add up;
// matmul_backward_input can also overwrite dinp (the model uses it where nothing is there to add to).
//
// All three products go through one blocked kernel, gemm below, which computes
//   out (M, Ncol) (+)= A (M, K) @ B (K, Ncol)
// with A and B read through strides, so that W^T, dout^T and the like need no transposed copy:
//   forward  out  = inp @ W^T      A = inp,    B = W^T   (M = N,  K = C,  Ncol = OC)
//   backward dinp += dout @ W      A = dout,   B = W     (M = N,  K = OC, Ncol = C)
//            dW   += dout^T @ inp  A = dout^T, B = inp   (M = OC, K = N,  Ncol = C)
// It differs from the textbook triple loop only in the order of the additions (it sums k in blocks
// of GEMM_KC, each block in order): float results agree with the naive loop to the rounding of a
// K-term sum (test/test_tiled_kernels.cpp states and checks the bound).
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

// The register tile: GEMM_ROWS rows of out by GEMM_VECS SIMD vectors of columns, held in registers
// while k runs. 12 x 2 vectors is 24 accumulators, which with the 2 vectors of B fits AVX-512's 32
// registers; with 32-byte vectors (AVX2, 16 registers) 6 x 2 fits.
#if defined(__AVX512F__)
constexpr int SIMD_BYTES = 64, GEMM_ROWS = 12;
#else
constexpr int SIMD_BYTES = 32, GEMM_ROWS = 6;
#endif
constexpr int GEMM_VECS = 2;
// GCC's unroll pragma, which keeps the tile's accumulators in registers (below). nvcc's front end does
// not know it; there (the GPU tests' host code) the loops stay rolled: the same sums, slower.
#define GEMM_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define GEMM_UNROLL(n)
#else
#define GEMM_UNROLL(n) GEMM_PRAGMA(GCC unroll n)
#endif
constexpr int GEMM_KC = 256;  // k per block: a block of B's panel (256 x 32 floats, 32 KiB) stays in L1

// A SIMD vector of real (GCC/Clang vector extension): arithmetic on it is elementwise.
template <typename real>
struct Simd {
    typedef real vec __attribute__((vector_size(SIMD_BYTES)));
    typedef real unaligned_vec __attribute__((vector_size(SIMD_BYTES), aligned(sizeof(real))));
    static constexpr int width = SIMD_BYTES / sizeof(real);
    static constexpr int tile_cols = GEMM_VECS * width;
};

// One register tile: out[r, 0:jn] (+)= sum_{k < K} A[r * ars + k * aks] * panel[k, :], r < R.
// panel is a packed (K, tile_cols) block of B, zero beyond its valid columns.
template <typename real, int R>
inline void gemm_tile(real* out, long ldo, const real* A, long ars, long aks, const real* panel, int K, int jn,
                      bool accumulate) {
    typedef typename Simd<real>::vec vec;
    typedef typename Simd<real>::unaligned_vec unaligned_vec;
    constexpr int W = Simd<real>::width, J = Simd<real>::tile_cols;
    // The loops over r and v are unrolled so that acc lives in registers (at -O2 GCC keeps it on the
    // stack otherwise); nothing may take acc's address.
    vec acc[R][GEMM_VECS] = {};
    for (int k = 0; k < K; k++) {
        vec b[GEMM_VECS];
        GEMM_UNROLL(4)
        for (int v = 0; v < GEMM_VECS; v++) b[v] = *(const unaligned_vec*)(panel + (long)k * J + v * W);
        GEMM_UNROLL(16)
        for (int r = 0; r < R; r++) {
            const real a = A[r * ars + k * aks];
            GEMM_UNROLL(4)
            for (int v = 0; v < GEMM_VECS; v++) acc[r][v] += a * b[v];
        }
    }
    GEMM_UNROLL(16)
    for (int r = 0; r < R; r++) {
        real* o = out + r * ldo;
        GEMM_UNROLL(4)
        for (int v = 0; v < GEMM_VECS; v++) {
            const int n = std::min(W, jn - v * W);  // valid columns in this vector
            if (n <= 0) break;
            real sum[W];
            *(unaligned_vec*)sum = acc[r][v];
            if (accumulate) for (int j = 0; j < n; j++) o[v * W + j] += sum[j];
            else            for (int j = 0; j < n; j++) o[v * W + j] = sum[j];
        }
    }
}

// The tile at the bottom edge has rn < GEMM_ROWS rows: pick the instantiation for rn.
template <typename real, int R>
inline void gemm_tile_rows(int rn, real* out, long ldo, const real* A, long ars, long aks, const real* panel, int K,
                           int jn, bool accumulate) {
    if (rn == R) gemm_tile<real, R>(out, ldo, A, ars, aks, panel, K, jn, accumulate);
    else if constexpr (R > 1) gemm_tile_rows<real, R - 1>(rn, out, ldo, A, ars, aks, panel, K, jn, accumulate);
}

// Copies columns [j0, j0 + tile_cols) of B (K, Ncol), B(k, j) = B[k * bks + j * bjs], into panel
// (K, tile_cols), contiguous, with zeros in the columns at or beyond Ncol.
template <typename real>
void pack_panel(real* panel, const real* B, long bks, long bjs, int K, int j0, int Ncol) {
    constexpr int J = Simd<real>::tile_cols;
    const int jn = std::min(J, Ncol - j0);
    for (int k = 0; k < K; k++) {
        real* dst = panel + (long)k * J;
        const real* src = B + k * bks + j0 * bjs;
        for (int j = 0; j < jn; j++) dst[j] = src[j * bjs];
        for (int j = jn; j < J; j++) dst[j] = 0;
    }
}

// out (M, Ncol), row stride ldo, (+)= A @ B with A(m, k) = A[m * ars + k * aks], B(k, j) = B[k * bks + j * bjs].
// B is first packed into column panels of tile_cols, each (K, tile_cols) contiguous and zero-padded;
// then for each panel and each block of GEMM_KC k's, the threads split the rows of out between them
// (the same rows in every block, so each tile's partial sums are added by one thread, in k order).
template <typename real>
void gemm(real* out, long ldo, const real* A, long ars, long aks, const real* B, long bks, long bjs,
          int M, int Ncol, int K, bool accumulate) {
    constexpr int J = Simd<real>::tile_cols;
    const int panels = (Ncol + J - 1) / J, row_tiles = (M + GEMM_ROWS - 1) / GEMM_ROWS;
    static thread_local std::vector<real> packed_storage;  // grows once per calling thread, then reused
    if (packed_storage.size() < (size_t)panels * K * J) packed_storage.resize((size_t)panels * K * J);
    real* packed = packed_storage.data();
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (int p = 0; p < panels; p++) pack_panel(packed + (long)p * K * J, B, bks, bjs, K, p * J, Ncol);
        for (int p = 0; p < panels; p++) {
            const int j0 = p * J, jn = std::min(J, Ncol - j0);
            for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
                const int kn = std::min(GEMM_KC, K - k0);
                const real* panel = packed + ((long)p * K + k0) * J;
                #pragma omp for schedule(static) nowait
                for (int t = 0; t < row_tiles; t++) {
                    const int r0 = t * GEMM_ROWS;
                    gemm_tile_rows<real, GEMM_ROWS>(std::min(GEMM_ROWS, M - r0), out + r0 * ldo + j0, ldo,
                                                    A + r0 * ars + k0 * aks, ars, aks, panel, kn, jn,
                                                    accumulate || k0 > 0);
                }
            }
        }
    }
}

template <typename real>
void matmul_forward(real* out, const real* inp, const real* W, int N, int C, int OC) {
    gemm(out, OC, inp, C, 1, W, 1, C, N, OC, C, false);
}

// dinp (N, C) = or += dout (N, OC) @ W.
template <typename real>
void matmul_backward_input(real* dinp, const real* dout, const real* W, int N, int C, int OC, bool accumulate) {
    gemm(dinp, C, dout, OC, 1, W, C, 1, N, C, OC, accumulate);
}

// dW (OC, C) += dout^T @ inp.
template <typename real>
void matmul_backward_weight(real* dW, const real* dout, const real* inp, int N, int C, int OC) {
    gemm(dW, C, dout, 1, OC, inp, C, 1, OC, C, N, true);
}

// dinp (N, C) += dout (N, OC) @ W;   dW (OC, C) += dout^T @ inp.
template <typename real>
void matmul_backward(real* dinp, real* dW, const real* dout, const real* inp, const real* W,
                     int N, int C, int OC) {
    matmul_backward_input(dinp, dout, W, N, C, OC, true);
    matmul_backward_weight(dW, dout, inp, N, C, OC);
}
