// A CPU emulation of the flash attention kernels' numerics, one head at a time: fp32 arithmetic with
// rounding to bf16 exactly where each kernel rounds, so that the checks of attention_checks.h can be
// calibrated without a GPU (test/test_attention_numerics.cpp, dev/calibrate_attention.cpp).
//
// Version 1 (dev/attention_v1.cuh, the simple version): tiles of 64 queries and 64 keys (32 in the fp32
// build).
//   forward   S = Q K^T (bf16 inputs, fp32 accumulation), s = S * scale; per key tile the running max m
//             absorbs the tile, p = __expf(s - m), P = bf16(p) for the P V product while the row sum l
//             adds the unrounded p; O and l are rescaled by __expf(m_old - m_new); out = bf16(O / l),
//             lse = m + logf(l).
//   backward  delta = sum_d dout * out (the bf16 output); P = bf16(__expf(s - lse)), dP = dO V^T (fp32),
//             dS = bf16(P * (dP - delta) * scale) from the rounded P; dV += P^T dO, dK += dS^T Q,
//             dQ += dS K in fp32, stored in bf16.
// Version 2 (kernels/attention.cuh, the trainer's; fp32 build too) and 3 (dev/attention.cu, bf16 only): key
//   blocks of 64 in the forward (at any T: blocks start at multiples of 64), the scale folded into
//   exp2: p = ex2(fmaf(S, scale log2 e, -m)) with m in log2 units, out = bf16(O * (1 / l)),
//   lse = m ln 2 + logf(l); backward p = ex2(fmaf(S, scale log2 e, -lse log2 e)), dS = bf16(p (dP - delta)
//   scale) from the unrounded p, P = bf16(p) for dV. Version 3 sums dQ per key block of 64 and adds the
//   blocks' partial sums in fp32 (atomics), then rounds.
//
// What is modelled beyond the roundings to bf16: the tensor cores' fp32 accumulation, by default
// rounding toward zero at every add (Fasi et al., 2021: the worst case the hardware is reported to do;
// round-to-nearest is an option); __expf and ex2.approx as the exact value times (1 + e), with e a
// fixed pseudo-random function of the argument within the documented error, (2 + 1.2|x|) ulp for
// __expf, 2^-22 for ex2.approx. The order of fp32 sums inside a warp reduction is not modelled (it moves
// results by fp32 ulps, far below the bf16 roundings).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include "attention_checks.h"
#include "bf16_rounding.h"
#include "../core/rng.h"

// Bugs planted into the emulated kernel, which the checks must catch.
enum class AttentionBug {
    none,
    mask_off_by_one,       // the last query of each tile also sees the first key of the next tile
    missing_scale,         // scores not multiplied by 1/sqrt(hd)
    wrong_lse,             // lse = m + log2(l) instead of m + ln(l)
    dropped_partial_tile,  // loops over key tiles stop at the last full tile: a partial last tile unseen
};

struct EmulatedKernel {
    int version = 1;                   // 1: dev/attention_v1.cuh; 2: kernels/attention.cuh; 3: dev/attention.cu
    bool bf16 = true;                  // storage precision; false: the fp32 build of version 1 or 2
    bool truncating_accumulation = true;  // tensor-core fp32 adds round toward zero (bf16 only)
    AttentionBug bug = AttentionBug::none;

    int key_tile() const { return version == 1 && !bf16 ? 32 : 64; }  // version 1's TILE, 2/3's forward BN
};

namespace attention_emulation {

using ::round_bf16;  // test/bf16_rounding.h

// acc + a * b as one fp32 operation: an FMA (round to nearest), or a tensor-core add rounding toward
// zero. The product of two floats is exact in double.
inline float multiply_add(float acc, float a, float b, bool toward_zero) {
    const double exact = (double)acc + (double)a * (double)b;
    float r = (float)exact;
    if (toward_zero && std::fabs((double)r) > std::fabs(exact)) r = std::nextafter(r, 0.0f);
    return r;
}

// A fixed pseudo-random number in [-1, 1) from the bits of x (SplitMix64's finalizer).
inline double hash_unit(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    uint64_t z = u * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-52 - 1.0;
}

// __expf(x): exp(x) with a relative error within (2 + 1.2 |x|) ulp (ulp = 2^-23 relative at most).
inline float fast_exp(float x) {
    if (x == -INFINITY) return 0.0f;
    return (float)(std::exp((double)x) * (1.0 + hash_unit(x) * (2.0 + 1.2 * std::fabs(x)) * 0x1p-23));
}
// ex2.approx.ftz.f32: 2^x with a relative error within 2^-22; results below 2^-126 flush to zero.
inline float fast_exp2(float x) {
    const double y = std::exp2((double)x);
    return y < 0x1p-126 ? 0.0f : (float)(y * (1.0 + hash_unit(x) * 0x1p-22));
}

constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

struct Setup {
    const EmulatedKernel& kernel;
    int T, hd;
    float scale, scale_log2;
    int tile, full_keys;  // keys [full_keys, T) are dropped by the dropped_partial_tile bug

    Setup(const EmulatedKernel& kernel, int T, int hd)
        : kernel(kernel), T(T), hd(hd),
          scale(kernel.bug == AttentionBug::missing_scale ? 1.0f : 1.0f / std::sqrt((float)hd)), scale_log2(scale * LOG2E), tile(kernel.key_tile()),
          full_keys(kernel.bug == AttentionBug::dropped_partial_tile ? T / tile * tile : T) {}

    // Key j enters query i's softmax.
    bool visible(int i, int j) const {
        if (j >= full_keys) return false;
        if (kernel.bug == AttentionBug::mask_off_by_one && i % tile == tile - 1 && j == i + 1 && j < T) return true;
        return j <= i;
    }
    int last_key(int i) const { return std::min(visible(i, i + 1) ? i + 1 : i, full_keys - 1); }
    float round(float x) const { return kernel.bf16 ? round_bf16(x) : x; }
    bool truncating() const { return kernel.bf16 && kernel.truncating_accumulation; }
    float dot(const float* a, const float* b) const {
        float acc = 0.0f;
        for (int d = 0; d < hd; d++) acc = multiply_add(acc, a[d], b[d], truncating());
        return acc;
    }
};

}  // namespace attention_emulation

// One head's forward: q, k, v (T, hd) hold bf16 values (or fp32 in the fp32 build). out (T, hd) as
// stored (bf16 values), lse (T) fp32.
struct EmulatedForward {
    std::vector<float> out, lse;
};

inline EmulatedForward emulate_attention_forward(const EmulatedKernel& kernel, const std::vector<float>& q,
                                                 const std::vector<float>& k, const std::vector<float>& v, int T,
                                                 int hd) {
    using namespace attention_emulation;
    const Setup e(kernel, T, hd);
    const bool v1 = kernel.version == 1;
    EmulatedForward f{std::vector<float>((size_t)T * hd), std::vector<float>(T)};
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < T; i++) {  // the online softmax is per row: each row as its tile's block does it
        const float* qi = q.data() + (long)i * hd;
        std::vector<float> o(hd, 0.0f), s(e.tile);
        float m = -INFINITY, l = 0.0f;
        for (int k0 = 0; k0 <= e.last_key(i); k0 += e.tile) {
            float tile_max = -INFINITY;
            for (int c = 0; c < e.tile; c++) {
                const int j = k0 + c;
                s[c] = j < T && e.visible(i, j) ? e.dot(qi, k.data() + (long)j * hd) : -INFINITY;
                if (v1) s[c] *= e.scale;  // version 2 folds the scale into the exponent
                tile_max = std::max(tile_max, s[c]);
            }
            const float m_new = std::max(m, v1 ? tile_max : tile_max * e.scale_log2);
            const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
            const float correction = v1 ? fast_exp(m - m_safe) : fast_exp2(m - m_safe);
            float tile_sum = 0.0f;
            for (float& o_d : o) o_d *= correction;
            for (int c = 0; c < e.tile; c++) {
                if (s[c] == -INFINITY) continue;
                const float p = v1 ? fast_exp(s[c] - m_safe) : fast_exp2(std::fma(s[c], e.scale_log2, -m_safe));
                tile_sum += p;
                const float p_rounded = e.round(p);
                const float* vj = v.data() + (long)(k0 + c) * hd;
                for (int d = 0; d < hd; d++) o[d] = multiply_add(o[d], p_rounded, vj[d], e.truncating());
            }
            l = l * correction + tile_sum;
            m = m_new;
        }
        const float inv_l = 1.0f / l;
        for (int d = 0; d < hd; d++) f.out[(long)i * hd + d] = e.round(v1 ? o[d] / l : o[d] * inv_l);
        const float log_l = kernel.bug == AttentionBug::wrong_lse ? std::log2(l) : std::log(l);
        f.lse[i] = v1 ? m + log_l : m * LN2 + log_l;
    }
    return f;
}

// One head's backward from the emulated forward (out, lse) and dout (T, hd): dq, dk, dv (T, hd) as stored.
struct EmulatedGradients {
    std::vector<float> dq, dk, dv;
};

inline EmulatedGradients emulate_attention_backward(const EmulatedKernel& kernel, const EmulatedForward& forward,
                                                    const std::vector<float>& dout, const std::vector<float>& q,
                                                    const std::vector<float>& k, const std::vector<float>& v, int T,
                                                    int hd) {
    using namespace attention_emulation;
    const Setup e(kernel, T, hd);
    const bool v1 = kernel.version == 1, tz = e.truncating();
    // P and dS of every visible (query, key) pair, row by row, as both backward kernels recompute them.
    std::vector<float> P((size_t)T * T, 0.0f), dS((size_t)T * T, 0.0f);
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < T; i++) {
        const float* qi = q.data() + (long)i * hd;
        const float* doi = dout.data() + (long)i * hd;
        float delta = 0.0f;  // fp32 FMAs over the stored output
        for (int d = 0; d < hd; d++) delta = multiply_add(delta, doi[d], forward.out[(long)i * hd + d], false);
        const float lse2 = forward.lse[i] * LOG2E;
        for (int j = 0; j <= std::min(e.last_key(i), T - 1); j++) {
            if (!e.visible(i, j)) continue;
            const float s = e.dot(qi, k.data() + (long)j * hd);
            const float dp = e.dot(doi, v.data() + (long)j * hd);
            const float p = v1 ? fast_exp(s * e.scale - forward.lse[i]) : fast_exp2(std::fma(s, e.scale_log2, -lse2));
            const float p_rounded = e.round(p);
            P[(long)i * T + j] = p_rounded;
            dS[(long)i * T + j] = e.round((v1 ? p_rounded : p) * (dp - delta) * e.scale);
        }
    }
    EmulatedGradients g{std::vector<float>((size_t)T * hd), std::vector<float>((size_t)T * hd),
                        std::vector<float>((size_t)T * hd)};
    const int dq_block = 64;  // version 3: the key block whose partial dQ one atomic add brings in
#pragma omp parallel for schedule(dynamic, 8)
    for (int r = 0; r < T; r++) {
        // dK, dV of key r: over the queries in order (the dk/dv kernel walks the query tiles up)
        std::vector<float> dk(hd, 0.0f), dv(hd, 0.0f), dq(hd, 0.0f), partial(hd, 0.0f);
        for (int i = 0; i < T; i++) {
            const float p = P[(long)i * T + r], ds = dS[(long)i * T + r];
            if (p == 0.0f && ds == 0.0f) continue;
            for (int d = 0; d < hd; d++) {
                dv[d] = multiply_add(dv[d], p, dout[(long)i * hd + d], tz);
                dk[d] = multiply_add(dk[d], ds, q[(long)i * hd + d], tz);
            }
        }
        // dQ of query r: over the keys in order (the dq kernel walks the key tiles up)
        for (int j = 0; j < T; j++) {
            const float ds = dS[(long)r * T + j];
            if (ds != 0.0f)
                for (int d = 0; d < hd; d++) partial[d] = multiply_add(partial[d], ds, k[(long)j * hd + d], tz);
            if (kernel.version == 3 && (j % dq_block == dq_block - 1 || j == T - 1)) {
                for (int d = 0; d < hd; d++) { dq[d] += partial[d]; partial[d] = 0.0f; }
            }
        }
        if (kernel.version != 3) dq = partial;
        const bool written = r < e.full_keys;  // dropped_partial_tile: no block for the last key tile
        for (int d = 0; d < hd; d++) {
            g.dq[(long)r * hd + d] = e.round(dq[d]);
            g.dk[(long)r * hd + d] = written ? e.round(dk[d]) : 0.0f;
            g.dv[(long)r * hd + d] = written ? e.round(dv[d]) : 0.0f;
        }
    }
    return g;
}

// ----------------------------------------------------------------------------
// One calibration case: a random head, its double reference and the emulated kernel's errors on it.


// A head of T queries of hd: inputs normal, rounded to bf16 (or kept fp32) as the GPU tests make them,
// and the double reference on exactly those values with the metric's scales.
struct AttentionReference {
    int T, hd;
    std::vector<float> q, k, v, dout;           // (T, hd)
    std::vector<double> out, lse, dq, dk, dv;   // (T, hd), lse (T)
    AttentionScales scales;

    AttentionReference(int T, int hd, uint64_t seed, bool bf16_inputs) : T(T), hd(hd) {
        Rng rng(seed);
        auto random = [&] {
            std::vector<float> x((size_t)T * hd);
            for (float& e : x) e = (float)rng.normal();
            if (bf16_inputs)
                for (float& e : x) e = attention_emulation::round_bf16(e);
            return x;
        };
        q = random(); k = random(); v = random(); dout = random();
        const std::vector<double> qd(q.begin(), q.end()), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
            doutd(dout.begin(), dout.end());
        std::vector<double> probs((size_t)T * T);
        out.assign((size_t)T * hd, 0.0);
        attention_forward(out.data(), probs.data(), qd.data(), kd.data(), vd.data(), 1, T, hd, 1);
        lse = attention_lse_reference(qd, kd, 1, T, hd, 1);
        dq.assign((size_t)T * hd, 0.0); dk.assign((size_t)T * hd, 0.0); dv.assign((size_t)T * hd, 0.0);
        attention_backward(dq.data(), dk.data(), dv.data(), doutd.data(), probs.data(), qd.data(), kd.data(),
                           vd.data(), 1, T, hd, 1);
        scales = attention_error_scales(probs, qd, kd, vd, out, doutd, dq, dk, dv, 1, T, hd, 1);
    }
};

struct EmulatedErrors {
    AttentionError out, dq, dk, dv;
    double lse = 0;
    // the largest of each metric over the three gradients
    AttentionError grad() const {
        return {std::max({dq.l2, dk.l2, dv.l2}), std::max({dq.element, dk.element, dv.element})};
    }
    // The largest ratio of a metric to its bound: the checks pass if it is at most 1.
    double excess(const AttentionBounds& b) const {
        const AttentionError g = grad();
        return std::max({out.l2 / b.out_l2, out.element / b.out_element, g.l2 / b.grad_l2, g.element / b.grad_element,
                         lse / b.lse});
    }
};

inline EmulatedErrors emulated_errors(const EmulatedKernel& kernel, const AttentionReference& r) {
    const EmulatedForward f = emulate_attention_forward(kernel, r.q, r.k, r.v, r.T, r.hd);
    const EmulatedGradients g = emulate_attention_backward(kernel, f, r.dout, r.q, r.k, r.v, r.T, r.hd);
    EmulatedErrors e;
    e.out = attention_error(f.out, r.out, r.scales.out);
    e.lse = lse_error(f.lse, r.lse);
    e.dq = attention_error(g.dq, r.dq, r.scales.dq);
    e.dk = attention_error(g.dk, r.dk, r.scales.dk);
    e.dv = attention_error(g.dv, r.dv, r.scales.dv);
    return e;
}
