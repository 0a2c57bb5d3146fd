// CPU reference: causal multi-head self-attention on already-projected (and rotated) q, k, v.
//   q, k, v, out: (B, T, C) with C = NH * hd, head h in columns [h*hd, (h+1)*hd)
//   P[b,h,t,:] = softmax_{t2 <= t}(q[t] . k[t2] / sqrt(hd)),   out[t] = sum_{t2 <= t} P[t,t2] v[t2]
// The forward stores P (B, NH, T, T), zero above the diagonal, for the backward. The GPU kernel
// never materializes P; this reference does so to stay obviously correct.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>
#include "matmul.h"

// p[0, n) = softmax(p[0, n)), the maximum subtracted before exp.
template <typename real>
void softmax_in_place(real* p, int n) {
    real maxval = -INFINITY;
    for (int i = 0; i < n; i++)
        if (p[i] > maxval) maxval = p[i];
    real sum = 0;
    for (int i = 0; i < n; i++) { p[i] = std::exp(p[i] - maxval); sum += p[i]; }
    for (int i = 0; i < n; i++) p[i] /= sum;
}

template <typename real>
void attention_forward(real* out, real* probs, const real* q, const real* k, const real* v,
                       int B, int T, int C, int NH) {
    const int hd = C / NH;
    const real scale = real(1) / std::sqrt((real)hd);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const real* qt = q + ((long)b * T + t) * C + h * hd;
                real* p = probs + (((long)b * NH + h) * T + t) * T;
                for (int t2 = 0; t2 <= t; t2++) {
                    const real* kt = k + ((long)b * T + t2) * C + h * hd;
                    real s = 0;
                    for (int i = 0; i < hd; i++) s += qt[i] * kt[i];
                    p[t2] = s * scale;
                }
                softmax_in_place(p, t + 1);
                for (int t2 = t + 1; t2 < T; t2++) p[t2] = 0;
                real* ot = out + ((long)b * T + t) * C + h * hd;
                for (int i = 0; i < hd; i++) ot[i] = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const real* vt = v + ((long)b * T + t2) * C + h * hd;
                    for (int i = 0; i < hd; i++) ot[i] += p[t2] * vt[i];
                }
            }
}

// Softmax backward: dS[t2] = P[t2] * (dP[t2] - sum_j P[j] dP[j]),  with dP[t2] = dout[t] . v[t2].
// Accumulates into dq, dk, dv.
template <typename real>
void attention_backward(real* dq, real* dk, real* dv, const real* dout, const real* probs,
                        const real* q, const real* k, const real* v, int B, int T, int C, int NH) {
    const int hd = C / NH;
    const real scale = real(1) / std::sqrt((real)hd);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const real* p = probs + (((long)b * NH + h) * T + t) * T;
                const real* dot = dout + ((long)b * T + t) * C + h * hd;
                const real* qt = q + ((long)b * T + t) * C + h * hd;
                real* dqt = dq + ((long)b * T + t) * C + h * hd;
                real pdp = 0;  // sum_j P[j] dP[j]
                for (int t2 = 0; t2 <= t; t2++) {
                    const real* vt = v + ((long)b * T + t2) * C + h * hd;
                    real dp = 0;
                    for (int i = 0; i < hd; i++) dp += dot[i] * vt[i];
                    pdp += p[t2] * dp;
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    const long row = ((long)b * T + t2) * C + h * hd;
                    real dp = 0;
                    for (int i = 0; i < hd; i++) dp += dot[i] * v[row + i];
                    const real ds = p[t2] * (dp - pdp) * scale;
                    for (int i = 0; i < hd; i++) {
                        dv[row + i] += p[t2] * dot[i];
                        dqt[i] += ds * k[row + i];
                        dk[row + i] += ds * qt[i];
                    }
                }
            }
}

// ---- The same attention in register tiles: what the CPU model runs ----
// attention_forward_tiled and attention_backward_tiled take the arguments of the two functions above
// and compute the same sums, one head at a time, each product on the register tiles of
// kernels/cpu/matmul.h (the head's k, v, ... packed into panels) and restricted to the causal
// triangle row tile by row tile. Only the order of the additions differs from the reference above
// (test/test_tiled_kernels.cpp states the bound and checks it). Above the diagonal, P is written
// only inside the diagonal row tiles (as 0); the rest of that triangle is never read. P is kept for
// the backward, as the reference keeps it: at the CPU trainer's lengths (T <= 256, at most 256 KiB
// per head) storing it costs less than recomputing q k^T and its exponentials in the backward.

// For the row tile [r0, r1): the k range it sums over and the columns it writes, [0, ncol).
struct TileRange {
    int k_begin, k_end, ncol;
};

// out (M, .) (+)= A @ B with B packed into panels of K rows (pack_panel), one row tile at a time, the
// tile of rows [r0, r1) limited to range(r0, r1).
template <typename real, typename Range>
void tiled_product(real* out, long ldo, const real* A, long ars, long aks, const real* panels, int M, int K,
                   bool accumulate, Range range) {
    constexpr int J = Simd<real>::tile_cols;
    for (int r0 = 0; r0 < M; r0 += GEMM_ROWS) {
        const int r1 = std::min(M, r0 + GEMM_ROWS);
        const TileRange t = range(r0, r1);
        for (int j0 = 0; j0 < t.ncol; j0 += J)
            gemm_tile_rows<real, GEMM_ROWS>(r1 - r0, out + r0 * ldo + j0, ldo, A + r0 * ars + t.k_begin * aks, ars, aks,
                                            panels + ((long)(j0 / J) * K + t.k_begin) * J, t.k_end - t.k_begin,
                                            std::min(J, t.ncol - j0), accumulate);
    }
}

// B (K, Ncol) with B(k, j) = B[k * bks + j * bjs], packed into all its panels.
template <typename real>
void pack_panels(std::vector<real>& panels, const real* B, long bks, long bjs, int K, int Ncol) {
    constexpr int J = Simd<real>::tile_cols;
    const int n = (Ncol + J - 1) / J;
    if (panels.size() < (size_t)n * K * J) panels.resize((size_t)n * K * J);
    for (int p = 0; p < n; p++) pack_panel(panels.data() + (long)p * K * J, B, bks, bjs, K, p * J, Ncol);
}

// The end of the row tile that holds row t: entries (t, t2) with t < t2 < tile_end are read by the
// tiled products and must be 0.
inline int row_tile_end(int t, int T) { return std::min(T, (t / GEMM_ROWS + 1) * GEMM_ROWS); }

template <typename real>
void attention_forward_tiled(real* out, real* probs, const real* q, const real* k, const real* v,
                             int B, int T, int C, int NH) {
    const int hd = C / NH;
    const real scale = real(1) / std::sqrt((real)hd);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            static thread_local std::vector<real> panels;
            const long head = (long)b * T * C + h * hd;
            real* P = probs + ((long)b * NH + h) * T * T;
            // S = q k^T, up to the end of each row's tile (k^T: k = i, j = t2)
            pack_panels(panels, k + head, 1, C, hd, T);
            tiled_product(P, T, q + head, C, 1, panels.data(), T, hd, false,
                          [&](int, int r1) { return TileRange{0, hd, r1}; });
            for (int t = 0; t < T; t++) {
                real* p = P + (long)t * T;
                for (int t2 = 0; t2 <= t; t2++) p[t2] *= scale;
                softmax_in_place(p, t + 1);
                for (int t2 = t + 1; t2 < row_tile_end(t, T); t2++) p[t2] = 0;
            }
            // out = P v
            pack_panels(panels, v + head, C, 1, T, hd);
            tiled_product(out + head, C, P, T, 1, panels.data(), T, T, false,
                          [&](int, int r1) { return TileRange{0, r1, hd}; });
        }
}

// dP = dout v^T;  dS = P * (dP - rowsum(P * dP)) / sqrt(hd);  dq = dS k;  dk = dS^T q;  dv = P^T dout.
// Unlike attention_backward, writes dq, dk and dv (they need no zeroing first).
template <typename real>
void attention_backward_tiled(real* dq, real* dk, real* dv, const real* dout, const real* probs,
                              const real* q, const real* k, const real* v, int B, int T, int C, int NH) {
    const int hd = C / NH;
    const real scale = real(1) / std::sqrt((real)hd);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            static thread_local std::vector<real> panels, dS;
            if (dS.size() < (size_t)T * T) dS.resize((size_t)T * T);
            const long head = (long)b * T * C + h * hd;
            const real* P = probs + ((long)b * NH + h) * T * T;
            pack_panels(panels, v + head, 1, C, hd, T);  // v^T
            tiled_product(dS.data(), T, dout + head, C, 1, panels.data(), T, hd, false,
                          [&](int, int r1) { return TileRange{0, hd, r1}; });
            for (int t = 0; t < T; t++) {
                const real* p = P + (long)t * T;
                real* ds = dS.data() + (long)t * T;
                real pdp = 0;  // sum_j P[j] dP[j]
                for (int t2 = 0; t2 <= t; t2++) pdp += p[t2] * ds[t2];
                for (int t2 = 0; t2 <= t; t2++) ds[t2] = p[t2] * (ds[t2] - pdp) * scale;
                for (int t2 = t + 1; t2 < row_tile_end(t, T); t2++) ds[t2] = 0;
            }
            const auto below_row_end = [&](int, int r1) { return TileRange{0, r1, hd}; };
            const auto from_row_begin = [&](int r0, int) { return TileRange{r0, T, hd}; };
            pack_panels(panels, k + head, C, 1, T, hd);
            tiled_product(dq + head, C, dS.data(), T, 1, panels.data(), T, T, false, below_row_end);
            pack_panels(panels, q + head, C, 1, T, hd);
            tiled_product(dk + head, C, dS.data(), 1, T, panels.data(), T, T, false, from_row_begin);
            pack_panels(panels, dout + head, C, 1, T, hd);
            tiled_product(dv + head, C, P, 1, T, panels.data(), T, T, false, from_row_begin);
        }
}
