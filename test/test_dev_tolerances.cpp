// The dev/ benchmarks' checks (dev/tolerances.h: the metric and tolerances dev/common.cuh validates the
// GPU with) on CPU emulations of the vectorized kernels' arithmetic, on the benchmarks' small shapes
// and inputs: each check passes the emulated kernel with at least half of its fp32 part (FP32_TOL) unused,
// and fails each planted bug by 2x or more. (In bf16 the one rounding of the stored result alone comes
// to 2^-8 / (1 + 2^-8), 0.99 of store_tol: the tolerance is that rounding plus the fp32 part, by design.)
// Emulated (dev/ numbering, where version 1 is the kernel in kernels/): rmsnorm version 1 (forward,
// both backwards with their dweight partial rows), swiglu versions 1 and 3 on the (N, 2F) gate|up
// layout (3 with __expf and __fdividef off by the CUDA Programming Guide's largest error, both signs),
// adamw version 2 with its scalar tail, the classifier's version 2 (exp2f of a folded argument, off by
// its largest error), rope version 1, and matmul's fp32 accumulation (truncating, as tensor cores may).
#include <functional>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "bf16_rounding.h"
#include "../core/rng.h"
#include "../dev/tolerances.h"
#include "../kernels/cpu/adamw.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"

namespace {

float stored(float x, bool bf16) { return bf16 ? round_bf16(x) : x; }
int vec_width(bool bf16) { return bf16 ? 8 : 4; }  // elements per 128-bit access

std::vector<float> random_stored(size_t n, Rng& rng, double std, bool bf16) {
    std::vector<float> v(n);
    for (float& x : v) x = stored((float)(std * rng.normal()), bf16);
    return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// The sum over a warp's 32 lanes by the xor butterfly of kernels/common.cuh (every lane ends with
// lane 0's value).
float warp_sum(std::vector<float> lanes) {
    for (int offset = 16; offset > 0; offset /= 2) {
        std::vector<float> next(32);
        for (int l = 0; l < 32; l++) next[l] = lanes[l] + lanes[l ^ offset];
        lanes = next;
    }
    return lanes[0];
}

// Lane `lane` of a row's warp owns the vectors j = lane + 32 k of the row (dev/rmsnorm.cu version 1);
// f(c) is called for its elements in the kernel's order.
void for_lane_elements(int lane, int C, int VEC, const std::function<void(int)>& f) {
    for (int j = lane; j < C / VEC; j += 32)
        for (int e = 0; e < VEC; e++) f(j * VEC + e);
}

// ----------------------------------------------------------------------------
// rmsnorm version 1

enum class NormBug { none, missing_eps, tail_vector_not_summed, weight_stride, dropped_partial, dres_unscaled };

struct NormErrors {
    double out = 0, rstd = 0, dinp = 0, dw = 0;
};

// The forward and a backward of dev/rmsnorm.cu version 1 on N rows of C, x with std x_std, with `blocks`
// blocks of 8 warps in the backward (partial rows of dweight), against the double references; returns
// each output's error as the benchmark measures it. The backward is the accumulating one (Pre-LN), or
// with `residual` the Post-LN one: dy = dout + s * dres (s = 1.7, dres with std x_std / 3 as the
// benchmark's f), dinp written.
NormErrors rmsnorm_errors(int N, int C, double x_std, int blocks, bool bf16, NormBug bug, bool residual = false) {
    const int VEC = vec_width(bf16);
    const float eps = 1e-6f;
    Rng rng(1000 + C);
    const std::vector<float> x = random_stored((size_t)N * C, rng, x_std, bf16), w = random_stored(C, rng, 1, bf16);
    const std::vector<float> dout = random_stored((size_t)N * C, rng, 1, bf16), dinp0 = random_stored((size_t)N * C, rng, 1, bf16);
    const std::vector<float> dw0 = random_stored(C, rng, 1, false);
    const float s_post = 1.7f;
    const std::vector<float> dres = residual ? random_stored((size_t)N * C, rng, x_std / 3, bf16) : std::vector<float>();

    std::vector<float> out((size_t)N * C), rstd(N), dinp((size_t)N * C);
    for (int n = 0; n < N; n++) {
        const float* xr = &x[(size_t)n * C];
        std::vector<float> lanes(32, 0.0f);
        for (int lane = 0; lane < 32; lane++)
            for_lane_elements(lane, C, VEC, [&](int c) {
                if (bug == NormBug::tail_vector_not_summed && c >= C - VEC) return;
                lanes[lane] += xr[c] * xr[c];
            });
        const float r = 1.0f / std::sqrt(warp_sum(lanes) / C + (bug == NormBug::missing_eps ? 0.0f : eps));
        rstd[n] = r;
        for (int c = 0; c < C; c++) {
            const int wc = bug == NormBug::weight_stride ? c / VEC + c % VEC : c;  // w + j instead of w + j * VEC
            out[(size_t)n * C + c] = stored(xr[c] * r * w[wc], bf16);
        }
    }
    // The backward takes the reference's rstd rounded to fp32, as the benchmark does.
    const std::vector<double> x_h = to_double(x), w_h = to_double(w), dout_h = to_double(dout);
    std::vector<double> out_ref((size_t)N * C), rstd_ref(N);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), x_h.data(), w_h.data(), N, C, (double)eps);
    NormErrors errors;
    errors.out = max_relative_error(out, out_ref);
    errors.rstd = max_relative_error(rstd, rstd_ref);
    const std::vector<float> r32(rstd_ref.begin(), rstd_ref.end());

    // Backward: warp w of block b handles rows b * 8 + w + k * 8 * blocks, each lane adding dout * xhat
    // for its columns; the block adds its warps in order (one partial row); then 128 threads per column
    // add the partial rows b = y, y + 128, ..., and a pairwise tree adds their 128 sums.
    std::vector<float> partials((size_t)blocks * C, 0.0f);
    for (int b = 0; b < blocks; b++)
        for (int warp = 0; warp < 8; warp++) {
            std::vector<float> acc(C, 0.0f);
            for (int n = b * 8 + warp; n < N; n += 8 * blocks) {
                const float r = r32[n];
                const float* xr = &x[(size_t)n * C];
                std::vector<float> dy(dout.begin() + (size_t)n * C, dout.begin() + (size_t)(n + 1) * C);
                if (residual)
                    for (int c = 0; c < C; c++)
                        dy[c] += (bug == NormBug::dres_unscaled ? 1.0f : s_post) * dres[(size_t)n * C + c];
                std::vector<float> lanes(32, 0.0f);
                for (int lane = 0; lane < 32; lane++)
                    for_lane_elements(lane, C, VEC, [&](int c) { lanes[lane] += dy[c] * w[c] * xr[c]; });
                const float mean_dot = warp_sum(lanes) * r / C;
                for (int c = 0; c < C; c++) {
                    const size_t i = (size_t)n * C + c;
                    const float xhat = xr[c] * r;
                    dinp[i] = stored(r * (dy[c] * w[c] - xhat * mean_dot) + (residual ? 0.0f : dinp0[i]), bf16);
                    acc[c] += dy[c] * xhat;
                }
            }
            for (int c = 0; c < C; c++) partials[(size_t)b * C + c] += acc[c];
        }
    const int used = bug == NormBug::dropped_partial ? blocks - 1 : blocks;
    std::vector<float> dw = dw0;
    for (int c = 0; c < C; c++) {
        std::vector<float> sums(128, 0.0f);
        for (int y = 0; y < 128; y++)
            for (int b = y; b < used; b += 128) sums[y] += partials[(size_t)b * C + c];
        for (int half = 64; half > 0; half /= 2)
            for (int y = 0; y < half; y++) sums[y] += sums[y + half];
        dw[c] += sums[0];
    }
    std::vector<double> dinp_ref = residual ? std::vector<double>((size_t)N * C, 0.0) : to_double(dinp0);
    std::vector<double> dw_ref = to_double(dw0), dy_h = dout_h;
    if (residual)
        for (size_t i = 0; i < dy_h.size(); i++) dy_h[i] += (double)s_post * dres[i];
    const std::vector<double> r_h(r32.begin(), r32.end());
    rmsnorm_backward(dinp_ref.data(), dw_ref.data(), dy_h.data(), x_h.data(), w_h.data(), r_h.data(), N, C);
    errors.dinp = max_relative_error(dinp, dinp_ref);
    errors.dw = max_relative_error(dw, dw_ref);
    return errors;
}

// The largest ratio of error to (tolerance - reserve) over the checks of dev/rmsnorm.cu.
double rmsnorm_excess(const NormErrors& e, bool bf16, double reserve) {
    return std::max({e.out / (store_tol(bf16) - reserve), e.rstd / (FP32_TOL - reserve),
                     e.dinp / (store_tol(bf16) - reserve), e.dw / (2 * FP32_TOL - reserve)});
}

std::string describe(const NormErrors& e) {
    char s[160];
    snprintf(s, sizeof s, "out %.2e rstd %.2e dinp %.2e dw %.2e", e.out, e.rstd, e.dinp, e.dw);
    return s;
}

// The shapes of dev/rmsnorm.cu's small checks (one block in the backward), and 256 rows over 32 blocks
// (the backward's grid is min(one wave, N / 8)) for the dweight partial rows.
struct NormShape {
    int N, C;
    double x_std;
    int blocks;
};
const NormShape NORM_SHAPES[] = {{7, 296, 3.0, 1}, {3, 40, 1e-3, 1}, {256, 296, 3.0, 32}};

// ----------------------------------------------------------------------------
// swiglu versions 1 and 3

enum class GluBug { none, row_stride_F, up_one_vector_late, tail_vector_unwritten, half_precision_exp };

struct GluKernel {
    bool fast = false;  // version 3
    int sign = 1;       // the direction of __expf's and __fdividef's (or expf's) largest error
    GluBug bug = GluBug::none;
};

// expf (2 ulp; version 1) or __expf (2 + floor(1.173 |x|) ulp; version 3), off by its largest error.
float emulated_exp(float x, const GluKernel& k) {
    double rel = k.fast ? fast_exp_relative_error(x) : 2 * 0x1p-23;
    if (k.bug == GluBug::half_precision_exp) rel = 0x1p-11;
    return (float)(std::exp((double)x) * (1 + k.sign * rel));
}

struct GluErrors {
    double out = 0, dgate = 0, dup = 0, max_abs_gate = 0;
};

// dev/swiglu.cu's inputs (gate and up std 3, dout std 1) in the (N, 2F) layout, the kernel emulated
// element by element with poisoned (NaN) outputs where it writes nothing, against the double reference.
GluErrors swiglu_errors(int N, int F, bool bf16, const GluKernel& k) {
    const int VEC = vec_width(bf16);
    Rng rng(2000 + F);
    const std::vector<float> gate_up = random_stored((size_t)N * 2 * F, rng, 3, bf16);
    const std::vector<float> dout = random_stored((size_t)N * F, rng, 1, bf16);
    std::vector<float> out((size_t)N * F, NAN), dgate((size_t)N * F, NAN), dup((size_t)N * F, NAN);
    std::vector<double> gate_h((size_t)N * F), up_h((size_t)N * F);
    GluErrors errors;
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            const size_t i = (size_t)n * F + f;
            gate_h[i] = gate_up[(size_t)n * 2 * F + f];
            up_h[i] = gate_up[(size_t)n * 2 * F + F + f];
            errors.max_abs_gate = std::max(errors.max_abs_gate, std::fabs(gate_h[i]));
            if (k.bug == GluBug::tail_vector_unwritten && f >= F - VEC) continue;
            const size_t row = (size_t)n * (k.bug == GluBug::row_stride_F ? F : 2 * F);
            const int up_offset = F + (k.bug == GluBug::up_one_vector_late ? VEC : 0);
            const float g = gate_up[row + f];
            const float u = gate_up[std::min(row + up_offset + f, gate_up.size() - 1)];
            const float dy = dout[i];
            const float e = emulated_exp(-g, k);
            float s, one_minus_s;
            if (k.fast) {
                s = (float)(1.0 / ((double)1.0f + e) * (1 + k.sign * FAST_DIVIDE_RELATIVE_ERROR));
                one_minus_s = g < 0 ? 1.0f - s : e * s;
            } else {
                s = 1.0f / (1.0f + e);
                one_minus_s = 1.0f - s;
            }
            out[i] = stored(g * s * u, bf16);
            dgate[i] = stored(dy * u * s * (1.0f + g * one_minus_s), bf16);
            dup[i] = stored(dy * g * s, bf16);
        }
    const long n = (long)N * F;
    std::vector<double> out_ref(n), dgate_ref(n, 0.0), dup_ref(n, 0.0);
    swiglu_forward(out_ref.data(), gate_h.data(), up_h.data(), n);
    swiglu_backward(dgate_ref.data(), dup_ref.data(), to_double(dout).data(), gate_h.data(), up_h.data(), n);
    errors.out = max_relative_error(out, out_ref);
    errors.dgate = max_relative_error(dgate, dgate_ref);
    errors.dup = max_relative_error(dup, dup_ref);
    return errors;
}

// The error over (dev/swiglu.cu's tolerance - reserve) for the version (3: at this input's largest |gate|).
double swiglu_excess(const GluErrors& e, bool bf16, bool fast, double reserve) {
    const double tol = fast ? fast_sigmoid_tol(bf16, e.max_abs_gate) : store_tol(bf16);
    return std::max({e.out, e.dgate, e.dup}) / (tol - reserve);
}

std::string describe(const GluErrors& e) {
    char s[160];
    snprintf(s, sizeof s, "out %.2e dgate %.2e dup %.2e (max |gate| %.1f)", e.out, e.dgate, e.dup, e.max_abs_gate);
    return s;
}

// dev/swiglu.cu's small shapes, and 64 rows of 2048 for gates out to ~4.5 std (|g| ~ 13).
struct GluShape {
    int N, F;
};
const GluShape GLU_SHAPES[] = {{5, 24}, {3, 136}, {64, 2048}};

// ----------------------------------------------------------------------------
// adamw version 2: VEC parameters per thread, the last n % VEC by the scalar tail.

struct AdamErrors {
    double m = 0, v = 0, master = 0, params = 0;
};

AdamErrors adamw_errors(long n, bool bf16, bool drop_tail) {
    const int VEC = vec_width(bf16), t = 10;
    const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
    Rng rng(3000 + n);
    std::vector<float> p(n), g(n), m(n), v(n);
    for (long i = 0; i < n; i++) {
        p[i] = (float)(0.02 * rng.normal());
        g[i] = (float)(1e-2 * rng.normal());
        m[i] = (float)(1e-3 * rng.normal());
        v[i] = (float)(2e-4 * rng.uniform());
    }
    std::vector<double> p_ref(p.begin(), p.end()), g_ref(g.begin(), g.end()), m_ref(m.begin(), m.end()),
        v_ref(v.begin(), v.end());
    adamw_update(p_ref.data(), g_ref.data(), m_ref.data(), v_ref.data(), n, t, (double)lr, (double)beta1,
                 (double)beta2, (double)eps, (double)wd, (double)grad_scale);
    const float bc1 = (float)(1.0 - std::pow((double)beta1, t)), bc2 = (float)(1.0 - std::pow((double)beta2, t));
    const long updated = drop_tail ? n / VEC * VEC : n;
    std::vector<float> params(n);
    for (long i = 0; i < n; i++) {
        if (i < updated) {
            const float gi = grad_scale * g[i];
            m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
            v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
            p[i] = p[i] - lr * (wd * p[i] + (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps));
        }
        params[i] = stored(p[i], bf16);
    }
    return {max_relative_error(m, m_ref), max_relative_error(v, v_ref), max_relative_error(p, p_ref),
            max_relative_error(params, p_ref)};
}

double adamw_excess(const AdamErrors& e, bool bf16, double reserve) {
    return std::max({e.m / (FP32_TOL - reserve), e.v / (FP32_TOL - reserve), e.master / (FP32_TOL - reserve),
                     e.params / (store_tol(bf16) - reserve)});
}

// Emulated kernels must pass with this much of each tolerance unused; planted bugs are judged with none.
constexpr double RESERVE = FP32_TOL / 2;

// ----------------------------------------------------------------------------
// classifier version 2: a 512-thread block per row; thread t takes the vectors t, t + 512, ...; the
// max, then the sum of exp2f(fmaf(z, log2e, -max log2e)) (exp2f off by 2 ulp), reduced by warp
// butterflies, then the gradient.

enum class CeBug { none, last_vector_not_summed, target_not_subtracted, exp2_without_log2e };

struct CeErrors {
    double losses = 0, dlogits = 0;
};

// float sum over a block of 512 threads: each warp's butterfly, then a butterfly over the 16 warp sums.
float block_sum(const std::vector<float>& threads) {
    std::vector<float> warps(32, 0.0f);
    for (int w = 0; w < 16; w++) warps[w] = warp_sum(std::vector<float>(threads.begin() + 32 * w, threads.begin() + 32 * w + 32));
    return warp_sum(warps);
}

// dev/classifier.cu's inputs: R rows of V logits with std 3; row 1 ignored, row 2's target its last
// logit, set to 12; the other targets random. sign: the direction of exp2f's error, +1 or -1 for all
// logits (which mostly cancels in softmax), 0 for +1 on even and -1 on odd indices (which does not).
CeErrors classifier_errors(int R, int V, bool bf16, int sign, CeBug bug) {
    const int VEC = vec_width(bf16), nvec = V / VEC;
    Rng rng(4000 + V);
    std::vector<float> z = random_stored((size_t)R * V, rng, 3, bf16);
    std::vector<int> targets(R);
    for (int& t : targets) t = (int)rng.below(V);
    targets[1] = IGNORE_INDEX;
    targets[2] = V - 1;
    z[3 * (size_t)V - 1] = 12.0f;
    const float dloss = 1.0f / (R - 1), L = 1.4426950408889634f;
    std::vector<float> losses(R), dz((size_t)R * V);
    for (int n = 0; n < R; n++) {
        const float* zr = &z[(size_t)n * V];
        float* dr = &dz[(size_t)n * V];
        if (targets[n] == IGNORE_INDEX) {
            losses[n] = 0.0f;
            std::fill(dr, dr + V, 0.0f);
            continue;
        }
        const float row_max = *std::max_element(zr, zr + V), max_log2 = row_max * L;
        auto emulated_exp = [&](int i) {
            const float arg = bug == CeBug::exp2_without_log2e ? zr[i] - row_max : std::fma(zr[i], L, -max_log2);
            const int direction = sign != 0 ? sign : i % 2 ? -1 : 1;
            return (float)(std::exp2((double)arg) * (1 + direction * 2 * 0x1p-23));
        };
        std::vector<float> threads(512, 0.0f);
        for (int t = 0; t < 512; t++)
            for (int j = t; j < (bug == CeBug::last_vector_not_summed ? nvec - 1 : nvec); j += 512)
                for (int e = 0; e < VEC; e++) threads[t] += emulated_exp(j * VEC + e);
        const float sum = block_sum(threads);
        losses[n] = row_max + std::log(sum) - zr[targets[n]];
        const float p_scale = dloss / sum;
        for (int i = 0; i < V; i++) {
            float d = emulated_exp(i) * p_scale;
            if (i == targets[n] && bug != CeBug::target_not_subtracted) d -= dloss;
            dr[i] = stored(d, bf16);
        }
    }
    const std::vector<double> z_h = to_double(z);
    std::vector<double> loss_ref(R), dz_ref((size_t)R * V);
    int n_valid = 0;
    crossentropy_forward(loss_ref.data(), z_h.data(), targets.data(), R, V, &n_valid);
    crossentropy_backward(dz_ref.data(), z_h.data(), targets.data(), R, V, (double)dloss);
    return {max_relative_error(losses, loss_ref), max_relative_error(dz, dz_ref)};
}

double classifier_excess(const CeErrors& e, bool bf16, double reserve) {
    return std::max(e.losses / (FP32_TOL - reserve), e.dlogits / (store_tol(bf16) - reserve));
}

// ----------------------------------------------------------------------------
// rope version 1: a thread rotates VEC pairs (i0 .. i0 + VEC - 1) of one head, reading the fp32 (cos, sin)
// table two pairs at a time.

enum class RopeBug { none, table_stride, backward_not_negated };

// Max error of the forward and of the backward (direction -1) on dev/rope.cu's small shapes.
double rope_error(int B, int T, int NH, int hd, bool bf16, RopeBug bug) {
    const int half = hd / 2, VEC = vec_width(bf16);
    const double theta = 10000.0;
    Rng rng(5000 + hd);
    const long n = (long)B * T * NH * hd;
    const std::vector<float> x = random_stored(n, rng, 1, bf16);
    std::vector<float> table_cos((size_t)T * half), table_sin((size_t)T * half);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            const double angle = t * std::pow(theta, -2.0 * i / hd);
            table_cos[(size_t)t * half + i] = (float)std::cos(angle);
            table_sin[(size_t)t * half + i] = (float)std::sin(angle);
        }
    double worst = 0;
    for (int direction : {1, -1}) {
        std::vector<float> out(n);
        for (long head = 0; head < (long)B * T * NH; head++) {
            const int t = (int)((head / NH) % T);
            for (int i = 0; i < half; i++) {
                // pairs 2p, 2p + 1 of the chunk come from one float4 at table + i0 + 2p (bug: + p)
                const int i0 = i / VEC * VEC, e = i % VEC;
                const int ti = bug == RopeBug::table_stride ? i0 + e / 2 + e % 2 : i;
                const float c = table_cos[(size_t)t * half + ti];
                const float sn = (bug == RopeBug::backward_not_negated ? 1 : direction) * table_sin[(size_t)t * half + ti];
                const float a = x[head * hd + i], b = x[head * hd + i + half];
                out[head * hd + i] = stored(a * c - b * sn, bf16);
                out[head * hd + i + half] = stored(b * c + a * sn, bf16);
            }
        }
        const std::vector<double> x_h = to_double(x);
        std::vector<double> ref(n);
        if (direction == 1) rope_forward(ref.data(), x_h.data(), B, T, NH, hd, theta);
        else rope_backward(ref.data(), x_h.data(), B, T, NH, hd, theta);
        worst = std::max(worst, max_relative_error(out, ref));
    }
    return worst;
}

}  // namespace

// ----------------------------------------------------------------------------

TEST_CASE("dev checks: rmsnorm version 1 emulated passes (both backwards), planted bugs fail by 2x") {
    const NormBug bugs[] = {NormBug::missing_eps, NormBug::tail_vector_not_summed, NormBug::weight_stride,
                            NormBug::dropped_partial};
    const char* names[] = {"eps missing", "last vector left out of the sum of squares", "weight read at w + j",
                           "last dweight partial row dropped"};
    for (bool bf16 : {true, false}) {
        for (const NormShape& s : NORM_SHAPES)
            for (bool residual : {false, true}) {
                const NormErrors e = rmsnorm_errors(s.N, s.C, s.x_std, s.blocks, bf16, NormBug::none, residual);
                INFO((bf16 ? "bf16" : "fp32") << (residual ? " residual" : "") << " N " << s.N << " C " << s.C << ": "
                                              << describe(e));
                CHECK(rmsnorm_excess(e, bf16, RESERVE) <= 1.0);
            }
        // Each bug on the shape of the dev benchmark that is there to catch it: eps on the rms 1e-3
        // rows, the dropped partial on 32 blocks, the others on the first small shape.
        for (int b = 0; b < 4; b++) {
            const NormShape& s = NORM_SHAPES[b == 0 ? 1 : b == 3 ? 2 : 0];
            const NormErrors e = rmsnorm_errors(s.N, s.C, s.x_std, s.blocks, bf16, bugs[b]);
            INFO(names[b] << ", " << (bf16 ? "bf16" : "fp32") << " N " << s.N << " C " << s.C << ": " << describe(e));
            CHECK(rmsnorm_excess(e, bf16, 0) >= 2.0);
        }
        const NormErrors e = rmsnorm_errors(7, 296, 3.0, 1, bf16, NormBug::dres_unscaled, true);
        INFO("residual backward's dres added without s, " << (bf16 ? "bf16" : "fp32") << ": " << describe(e));
        CHECK(rmsnorm_excess(e, bf16, 0) >= 2.0);
    }
    // At the model shapes' std 3 a missing eps is invisible (mean(x^2) = 9 against eps = 1e-6): the
    // reason dev/rmsnorm.cu checks rows of rms 1e-3.
    CHECK(rmsnorm_excess(rmsnorm_errors(7, 296, 3.0, 1, false, NormBug::missing_eps), false, 0) < 1.0);
}

TEST_CASE("dev checks: swiglu versions 1 and 3 emulated at their largest math errors pass, planted bugs fail by 2x") {
    for (bool bf16 : {true, false})
        for (const GluShape& s : GLU_SHAPES)
            for (bool fast : {false, true})
                for (int sign : {1, -1}) {
                    GluKernel k;
                    k.fast = fast;
                    k.sign = sign;
                    const GluErrors e = swiglu_errors(s.N, s.F, bf16, k);
                    INFO("version " << (fast ? 3 : 2) << (bf16 ? " bf16" : " fp32") << " sign " << sign << " N " << s.N
                                    << " F " << s.F << ": " << describe(e));
                    CHECK(swiglu_excess(e, bf16, fast, RESERVE) <= 1.0);
                }
    const GluBug bugs[] = {GluBug::row_stride_F, GluBug::up_one_vector_late, GluBug::tail_vector_unwritten};
    const char* names[] = {"row stride F (the split layout)", "up read one vector late", "last vector unwritten"};
    for (bool bf16 : {true, false})
        for (const GluShape& s : GLU_SHAPES)
            for (int b = 0; b < 3; b++) {
                GluKernel k;
                k.fast = true;
                k.bug = bugs[b];
                const GluErrors e = swiglu_errors(s.N, s.F, bf16, k);
                INFO(names[b] << (bf16 ? ", bf16" : ", fp32") << " N " << s.N << " F " << s.F << ": " << describe(e));
                CHECK(swiglu_excess(e, bf16, true, 0) >= 2.0);
            }
    // An exp good to 2^-11 (half precision's) fails version 3's fp32 tolerance; in bf16 the storage
    // rounding (2^-9) hides it, and the tolerance rightly allows it.
    GluKernel coarse;
    coarse.fast = true;
    coarse.bug = GluBug::half_precision_exp;
    const GluErrors e = swiglu_errors(64, 2048, false, coarse);
    INFO("exp to 2^-11, fp32: " << describe(e));
    CHECK(swiglu_excess(e, false, true, 0) >= 2.0);
}

TEST_CASE("dev checks: adamw version 2's scalar tail, emulated, passes; a dropped tail fails by 2x") {
    for (bool bf16 : {true, false}) {
        const AdamErrors ok = adamw_errors(4099, bf16, false), dropped = adamw_errors(4099, bf16, true);
        INFO((bf16 ? "bf16" : "fp32") << ": m " << ok.m << " v " << ok.v << " master " << ok.master << " params "
                                      << ok.params << "; tail dropped: m " << dropped.m);
        CHECK(adamw_excess(ok, bf16, RESERVE) <= 1.0);
        CHECK(adamw_excess(dropped, bf16, 0) >= 2.0);
    }
}

TEST_CASE("dev checks: classifier version 2 emulated with exp2f's largest error passes, planted bugs fail by 2x") {
    // dev/classifier.cu's small shape, and 8 rows of the model's V = 32000.
    for (bool bf16 : {true, false})
        for (int V : {104, 32000})
            for (int sign : {1, -1, 0}) {
                const CeErrors e = classifier_errors(V == 104 ? 5 : 8, V, bf16, sign, CeBug::none);
                INFO((bf16 ? "bf16" : "fp32") << " V " << V << " sign " << sign << ": losses " << e.losses << " dlogits "
                                              << e.dlogits);
                CHECK(classifier_excess(e, bf16, RESERVE) <= 1.0);
            }
    const CeBug bugs[] = {CeBug::last_vector_not_summed, CeBug::target_not_subtracted, CeBug::exp2_without_log2e};
    const char* names[] = {"last vector left out of the sum", "target's -dloss missing", "exp2 without log2e"};
    for (bool bf16 : {true, false})
        for (int b = 0; b < 3; b++) {
            const CeErrors e = classifier_errors(5, 104, bf16, 1, bugs[b]);
            INFO(names[b] << (bf16 ? ", bf16" : ", fp32") << ": losses " << e.losses << " dlogits " << e.dlogits);
            CHECK(classifier_excess(e, bf16, 0) >= 2.0);
        }
}

TEST_CASE("dev checks: rope version 1 emulated passes, a wrong table stride and an unnegated backward fail by 2x") {
    for (bool bf16 : {true, false})
        for (int hd : {16, 48}) {  // dev/rope.cu's small shapes
            const int B = hd == 16 ? 2 : 1, T = hd == 16 ? 5 : 7, NH = hd == 16 ? 3 : 2;
            const double tol = store_tol(bf16);
            INFO((bf16 ? "bf16" : "fp32") << " hd " << hd);
            CHECK(rope_error(B, T, NH, hd, bf16, RopeBug::none) <= tol - RESERVE);
            CHECK(rope_error(B, T, NH, hd, bf16, RopeBug::table_stride) >= 2 * tol);
            CHECK(rope_error(B, T, NH, hd, bf16, RopeBug::backward_not_negated) >= 2 * tol);
        }
}

// ----------------------------------------------------------------------------
// matmul (dev/matmul.cu): a 6 x 6 block of K-term dot products

namespace {

enum class MatmulBug { none, operand_shifted, bf16_accumulation };

// fp32 x toward zero (the truncating accumulation the tensor cores may do) from its exact double.
float truncate_to_float(double x) {
    float f = (float)x;
    if (std::fabs((double)f) > std::fabs(x)) f = std::nextafter(f, 0.0f);
    return f;
}

// The metric over a 6 x 6 block of dot products of K random normal stored values, accumulated as the
// build's GEMM does (bf16: exact products, the running fp32 sum truncated; fp32: FFMA, to nearest),
// the output rounded to floatX if asked; relative to matmul_tol less `reserve`.
double matmul_excess(long K, bool bf16, bool output_rounded, MatmulBug bug, double reserve) {
    Rng rng(61);
    std::vector<std::vector<float>> a(6), b(6);
    for (auto& row : a) row = random_stored(K, rng, 1.0, bf16);
    for (auto& row : b) row = random_stored(K, rng, 1.0, bf16);
    std::vector<float> got;
    std::vector<double> ref;
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            float s = 0.0f;
            double exact = 0.0;
            for (long k = 0; k < K; k++) {
                const float bk = b[j][bug == MatmulBug::operand_shifted ? (k + 1) % K : k];
                if (bf16) s = truncate_to_float((double)s + (double)a[i][k] * bk);
                else s = std::fma(a[i][k], bk, s);
                if (bug == MatmulBug::bf16_accumulation) s = round_bf16(s);
                exact += (double)a[i][k] * b[j][k];
            }
            got.push_back(output_rounded ? stored(s, bf16) : s);
            ref.push_back(exact);
        }
    return max_relative_error(got, ref) / (matmul_tol(bf16, K, output_rounded) - reserve);
}

}  // namespace

// The emulation leaves at least half of the accumulation's part of the tolerance (all but the output's
// rounding) unused.
TEST_CASE("dev checks: matmul's accumulation emulated (truncating in bf16) passes at K up to 16384, planted bugs fail by 2x") {
    for (bool bf16 : {true, false})
        for (long K : {12L, 768L, 16384L})  // dev/matmul.cu's smallest K, the 130m width, the tokens of dW
            for (bool rounded : {true, false}) {
                INFO((bf16 ? "bf16" : "fp32") << " K " << K << (rounded ? " output rounded" : " fp32 output"));
                const double reserve = matmul_tol(bf16, K, false) / 2;
                const double excess = matmul_excess(K, bf16, rounded, MatmulBug::none, reserve);
                printf("matmul %s K %5ld %s: error %.2f of matmul_tol less half its accumulation part\n",
                       bf16 ? "bf16" : "fp32", K, rounded ? "floatX out" : "fp32 out  ", excess);
                CHECK(excess <= 1.0);
                CHECK(matmul_excess(K, bf16, rounded, MatmulBug::operand_shifted, 0.0) >= 2.0);
                if (bf16 && K >= 768) CHECK(matmul_excess(K, bf16, rounded, MatmulBug::bf16_accumulation, 0.0) >= 2.0);
            }
}
