// CPU reference: causal multi-head self-attention on already-projected (and rotated) q, k, v.
//   q, k, v, out: (B, T, C) with C = NH * hd, head h in columns [h*hd, (h+1)*hd)
//   P[b,h,t,:] = softmax_{t2 <= t}(q[t] . k[t2] / sqrt(hd)),   out[t] = sum_{t2 <= t} P[t,t2] v[t2]
// The forward stores P (B, NH, T, T), zero above the diagonal, for the backward. The GPU kernel
// never materializes P; this reference does so to stay obviously correct.
#pragma once
#include <cmath>

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
                real maxval = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const real* kt = k + ((long)b * T + t2) * C + h * hd;
                    real s = 0;
                    for (int i = 0; i < hd; i++) s += qt[i] * kt[i];
                    p[t2] = s * scale;
                    if (p[t2] > maxval) maxval = p[t2];
                }
                real sum = 0;
                for (int t2 = 0; t2 <= t; t2++) { p[t2] = std::exp(p[t2] - maxval); sum += p[t2]; }
                for (int t2 = 0; t2 <= t; t2++) p[t2] /= sum;
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
