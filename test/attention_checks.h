// The checks of the flash attention kernels against the double reference (kernels/cpu/attention.h):
// the error metrics and their bounds, in one place for the CPU calibration test
// (test/test_attention_numerics.cpp), the GPU tests (test/test_gpu_attention.cu) and the benchmark
// (dev/attention.cu). The bounds come from the CPU emulation of the kernels' rounding
// (test/attention_emulation.h) swept over T = 7 ... 4096 and head sizes 16 ... 128 by
// `make calibrate-attention` (table in docs/tests.md, "GPU tolerances").
//
// Metrics, per output tensor (out, dq, dk, dv):
// - L2-relative error ||got - ref|| / ||ref||: the size of the error over the whole tensor; a systematic
//   error (a missing scale, a wrong lse) moves it far past rounding, which averages out. (Relative to
//   the per-element scales' norm where the reference vanishes against them: see attention_error.)
// - per-element error |got_i - ref_i| / max(|ref_i|, rss_i), where rss_i is the root-sum-square of the
//   terms whose sum gives element i (see attention_error_scales): the kernels round each term (P or dS to
//   bf16, one tile product at a time) and then the sum, so the error of a sum of n terms is a random walk
//   of n roundings of those terms, plus the final rounding of the result. Neither |ref_i| alone (a sum
//   that cancels) nor the tensor's rms (early query rows and keys sum few terms and are ~sqrt(T) larger
//   than the rms) measures that. A non-finite element fails.
// - lse: max |got - ref|, absolute, since an error e in lse is a relative error e in every P it gives.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>
#include "../kernels/cpu/attention.h"

// Bounds on the metrics above: each at least 3x the worst case of the emulation over the calibration
// sweep (T 7 ... 4096, hd 32 ... 128, versions 1-3 of dev/attention.cu; version 2, the trainer's,
// re-swept at every T and hd up to T 1024 with `build/calibrate_attention 1024`: margins 3.2 or more
// in bf16, 17 or more in fp32); the emulated worst cases and the margins are in docs/tests.md, "GPU
// tolerances". The per-element bound is what catches a bug confined to a few rows (a mask
// off by one at a tile edge misses it by 2.5x or more at T = 200), the L2 bound a systematic error.
struct AttentionBounds {
    double out_l2, out_element;    // forward output
    double grad_l2, grad_element;  // dq, dk, dv
    double lse;                    // absolute
};

// bf16 storage: P and dS rounded to bf16 before their products, outputs stored in bf16 (2^-8 each), the
// tensor-core products accumulated in fp32. Worst cases (L2 / per element): out 2.1e-3 / 9.5e-3,
// dq dk dv 7.6e-3 (T = 7, hd 16: an L2 over 112 values) / 1.3e-2; lse 8.5e-6 (T = 4096).
constexpr AttentionBounds ATTENTION_BOUNDS_BF16 = {8e-3, 3e-2, 2.5e-2, 5e-2, 5e-5};
// fp32 build: fp32 FMAs throughout; the errors grow with T (sums of T terms in fp32). Worst cases of
// version 1 (__expf, 32-row tiles; T = 4096): out 2.5e-6 / 3.6e-5, dq dk dv 4.8e-6 / 2.4e-5; lse 1.6e-5.
// Version 2 (ex2, 64-key blocks) stays below version 1 (T <= 1024: 5.0e-7 / 6.3e-6, 1.1e-6 / 5.7e-6).
constexpr AttentionBounds ATTENTION_BOUNDS_FP32 = {1e-5, 1.2e-4, 2e-5, 1e-4, 5e-5};

// lse[b, h, t] = log sum_{j <= t} exp(q_t . k_j / sqrt(hd)), straight from the definition; q, k (B, T, C).
inline std::vector<double> attention_lse_reference(const std::vector<double>& q, const std::vector<double>& k, int B,
                                                   int T, int C, int NH) {
    const int hd = C / NH;
    std::vector<double> lse((size_t)B * NH * T);
#pragma omp parallel for collapse(3) schedule(dynamic, 16)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double* qt = q.data() + ((long)b * T + t) * C + h * hd;
                std::vector<double> s(t + 1);
                double max_s = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const double* kj = k.data() + ((long)b * T + j) * C + h * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += qt[i] * kj[i];
                    s[j] = dot / std::sqrt((double)hd);
                    max_s = std::max(max_s, s[j]);
                }
                for (int j = 0; j <= t; j++) sum += std::exp(s[j] - max_s);
                lse[((long)b * NH + h) * T + t] = max_s + std::log(sum);
            }
    return lse;
}

// The per-element scales of the metric: max(|ref|, rss of the terms), from the reference's P (B, NH,
// T, T) and the inputs, all (B, T, C) in double. With dP_tj = dout_t . v_j and delta_t = dout_t . out_t:
//   out_t  = sum_j P_tj v_j                  terms P_tj v_j
//   dv_j   = sum_t P_tj dout_t               terms P_tj dout_t
//   dk_j   = sum_t dS_tj q_t / sqrt(hd)      terms P_tj (|dP_tj| + |delta_t| + e_t) q_t / sqrt(hd)
//   dq_t   = sum_j dS_tj k_j / sqrt(hd)      terms P_tj (|dP_tj| + |delta_t| + e_t) k_j / sqrt(hd)
// dS = P (dP - delta) is a difference: its rounding scales with |dP - delta| <= |dP| + |delta|. delta
// is computed from the stored output, so it carries the output's error, a random walk over d of
// dout_td times out's error: e_t = rss_d(dout_td * scale(out_td)). (delta cancels: it can be far
// smaller than e_t, by 30x in the emulation.)
struct AttentionScales {
    std::vector<double> out, dq, dk, dv;
};

inline AttentionScales attention_error_scales(const std::vector<double>& probs, const std::vector<double>& q,
                                              const std::vector<double>& k, const std::vector<double>& v,
                                              const std::vector<double>& out, const std::vector<double>& dout,
                                              const std::vector<double>& dq, const std::vector<double>& dk,
                                              const std::vector<double>& dv, int B, int T, int C, int NH) {
    const int hd = C / NH;
    const double scale = 1.0 / std::sqrt((double)hd);
    const bool backward = !dout.empty();
    auto row = [&](int b, int h, int t) { return ((long)b * T + t) * C + h * hd; };
    auto prob = [&](int b, int h, int t, int j) { return probs[(((long)b * NH + h) * T + t) * T + j]; };
    auto sq = [](double x) { return x * x; };
    AttentionScales s;
    s.out.assign(out.size(), 0.0);
    if (backward) { s.dq.assign(out.size(), 0.0); s.dk.assign(out.size(), 0.0); s.dv.assign(out.size(), 0.0); }
    std::vector<double> delta(backward ? (size_t)B * NH * T : 0), delta_error(delta.size());
    // Per query t: out and dq, and delta with its error for the keys' pass.
#pragma omp parallel for collapse(3) schedule(dynamic, 16)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const long rt = row(b, h, t), stat = ((long)b * NH + h) * T + t;
                for (int j = 0; j <= t; j++)
                    for (int i = 0; i < hd; i++) s.out[rt + i] += sq(prob(b, h, t, j) * v[row(b, h, j) + i]);
                for (int i = 0; i < hd; i++) s.out[rt + i] = std::max(std::sqrt(s.out[rt + i]), std::fabs(out[rt + i]));
                if (!backward) continue;
                for (int i = 0; i < hd; i++) {
                    delta[stat] += dout[rt + i] * out[rt + i];
                    delta_error[stat] += sq(dout[rt + i] * s.out[rt + i]);
                }
                delta_error[stat] = std::sqrt(delta_error[stat]);
                for (int j = 0; j <= t; j++) {
                    double dp = 0;
                    for (int i = 0; i < hd; i++) dp += dout[rt + i] * v[row(b, h, j) + i];
                    const double ds =
                        prob(b, h, t, j) * (std::fabs(dp) + std::fabs(delta[stat]) + delta_error[stat]) * scale;
                    for (int i = 0; i < hd; i++) s.dq[rt + i] += sq(ds * k[row(b, h, j) + i]);
                }
            }
    // Per key j: dk and dv, over the queries that see it.
    if (backward) {
#pragma omp parallel for collapse(3) schedule(dynamic, 16)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < T; j++) {
                    const long rj = row(b, h, j);
                    for (int t = j; t < T; t++) {
                        const long rt = row(b, h, t), stat = ((long)b * NH + h) * T + t;
                        double dp = 0;
                        for (int i = 0; i < hd; i++) dp += dout[rt + i] * v[rj + i];
                        const double p = prob(b, h, t, j);
                        const double ds = p * (std::fabs(dp) + std::fabs(delta[stat]) + delta_error[stat]) * scale;
                        for (int i = 0; i < hd; i++) {
                            s.dv[rj + i] += sq(p * dout[rt + i]);
                            s.dk[rj + i] += sq(ds * q[rt + i]);
                        }
                    }
                }
        auto finish = [](std::vector<double>& sum_sq, const std::vector<double>& ref) {
            for (size_t i = 0; i < sum_sq.size(); i++) sum_sq[i] = std::max(std::sqrt(sum_sq[i]), std::fabs(ref[i]));
        };
        finish(s.dq, dq);
        finish(s.dk, dk);
        finish(s.dv, dv);
    }
    return s;
}

// The two metrics of one tensor.
struct AttentionError {
    double l2 = 0, element = 0;
    bool within(double l2_bound, double element_bound) const { return l2 <= l2_bound && element <= element_bound; }
};

template <typename Got>
AttentionError attention_error(const std::vector<Got>& got, const std::vector<double>& ref,
                               const std::vector<double>& scale) {
    AttentionError e;
    if (got.size() != ref.size() || scale.size() != ref.size()) return {INFINITY, INFINITY};
    double err_sq = 0, ref_sq = 0, scale_sq = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!std::isfinite((double)got[i])) return {INFINITY, INFINITY};
        const double d = (double)got[i] - ref[i];
        err_sq += d * d;
        ref_sq += ref[i] * ref[i];
        scale_sq += scale[i] * scale[i];
        e.element = std::max(e.element, std::fabs(d) / std::max(scale[i], 1e-300));
    }
    // A tensor that vanishes against its terms (||ref|| < 2^-20 ||scale||) is zero analytically, as dq
    // and dk at T = 1 (a softmax over one key has no gradient): its L2 error is relative to the terms.
    e.l2 = std::sqrt(err_sq / std::max(ref_sq > 0x1p-40 * scale_sq ? ref_sq : scale_sq, 1e-300));
    return e;
}

template <typename Got>
double lse_error(const std::vector<Got>& got, const std::vector<double>& ref) {
    if (got.size() != ref.size()) return INFINITY;
    double worst = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!std::isfinite((double)got[i])) return INFINITY;
        worst = std::max(worst, std::fabs((double)got[i] - ref[i]));
    }
    return worst;
}
