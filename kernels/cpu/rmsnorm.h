// CPU reference: RMSNorm (Zhang & Sennrich, 2019), the "LN" of the paper's eq. 1 and 2.
//   rstd = 1 / sqrt(mean(x^2) + eps),   y = x * rstd * w
// The forward saves rstd (one value per row); it is all the backward needs besides x and w.
#pragma once
#include <cmath>

template <typename real>
void rmsnorm_forward(real* out, real* rstd, const real* inp, const real* w, int N, int C, real eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real* x = inp + (long)n * C;
        real ss = 0;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        const real r = real(1) / std::sqrt(ss / C + eps);
        rstd[n] = r;
        for (int c = 0; c < C; c++) out[(long)n * C + c] = x[c] * r * w[c];
    }
}

// With xhat = x * rstd and g = dy * w:  dx = rstd * (g - xhat * mean(g * xhat)),  dw = sum_n dy * xhat.
// Accumulates (+=) into dinp and dw.
template <typename real>
void rmsnorm_backward(real* dinp, real* dw, const real* dout, const real* inp, const real* w,
                      const real* rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const real* x = inp + (long)n * C;
        const real* dy = dout + (long)n * C;
        const real r = rstd[n];
        real dot = 0;  // sum_c g_c * xhat_c
        for (int c = 0; c < C; c++) dot += dy[c] * w[c] * x[c] * r;
        const real mean_dot = dot / C;
        for (int c = 0; c < C; c++) {
            const real xhat = x[c] * r;
            dinp[(long)n * C + c] += r * (dy[c] * w[c] - xhat * mean_dot);
            dw[c] += dy[c] * xhat;
        }
    }
}
