// The flash attention kernels (kernels/attention.cuh) against the CPU reference (kernels/cpu/attention.h)
// in double on the same floatX-rounded inputs; method and metric in test/gpu_test_utils.cuh.
//
// Tolerances. fp32 build: the products are fp32 FMAs over at most T = 300 keys and HD = 128, and the
// softmax uses __expf, whose error grows to about 2 + 1.2|x| ulp for |x| up to ~30 here, ~5e-6;
// ATTN_TOL = 5e-5 leaves a margin over those. bf16 build: S is exact-input fp32-accumulated, but P is
// rounded to bf16 before P V (2^-8) and the output is stored in bf16 (2^-8); the backward rounds P and
// dS to bf16 before each product and stores the gradients in bf16: 4 roundings, 4 * 2^-8. lse is fp32
// from fp32 scores in both builds, off only by the tensor cores' accumulation (2e-4, see MATMUL_TOL).
#include <cmath>
#include <vector>
#include "gpu_test_utils.cuh"
#include "../kernels/cpu/attention.h"
#include "../kernels/attention.cuh"

constexpr double ATTN_FWD_TOL = FLOATX_IS_FP32 ? 5e-5 : 2 * 0x1p-8 + 1e-4;
constexpr double ATTN_BWD_TOL = FLOATX_IS_FP32 ? 5e-5 : 4 * 0x1p-8 + 1e-4;
constexpr double LSE_TOL = FLOATX_IS_FP32 ? 5e-5 : 2e-4;

struct AttentionShape { int B, T, NH, HD; };
// one tile, partial tiles, several tiles; head sizes 64, 128, 32 (tiny), 48 (250m), and 16 and 80 for
// the other multiples of 16
static const AttentionShape SHAPES[] = {{2, 7, 2, 64}, {1, 64, 1, 64}, {2, 130, 2, 64}, {1, 100, 3, 128},
                                        {1, 300, 1, 128}, {2, 77, 4, 32}, {2, 77, 2, 48}, {1, 200, 3, 48},
                                        {1, 70, 2, 16}, {1, 90, 1, 80}};

// q, k, v of `stride`-element rows (C, or 3C for a fused qkv buffer) and what the reference computes.
struct AttentionCase {
    int B, T, NH, HD, C;
    long stride;
    std::vector<float> qkv;                  // (B, T, stride) holding q, k, v at column offsets 0, C, 2C
    std::vector<double> q, k, v;             // (B, T, C) each, the same values
    std::vector<double> out, probs, lse;     // reference forward

    AttentionCase(const AttentionShape& s, bool fused, Rng& rng)
        : B(s.B), T(s.T), NH(s.NH), HD(s.HD), C(s.NH * s.HD), stride(fused ? 3L * s.NH * s.HD : s.NH * s.HD) {
        const long N = (long)B * T;
        qkv = random_floatX(3 * N * C, rng);
        q.resize(N * C); k.resize(N * C); v.resize(N * C);
        for (long n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                q[n * C + c] = qkv[offset(0) + n * stride + c];
                k[n * C + c] = qkv[offset(1) + n * stride + c];
                v[n * C + c] = qkv[offset(2) + n * stride + c];
            }
        out.resize(N * C);
        probs.resize((long)B * NH * T * T);
        attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        lse.resize((long)B * NH * T);  // log sum_j exp(s_j), straight from the definition
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++) {
                    double sum = 0;
                    for (int j = 0; j <= t; j++) {
                        double s = 0;
                        for (int i = 0; i < HD; i++) s += q[((long)b * T + t) * C + h * HD + i] * k[((long)b * T + j) * C + h * HD + i];
                        sum += std::exp(s / std::sqrt((double)HD));
                    }
                    lse[((long)b * NH + h) * T + t] = std::log(sum);
                }
    }
    // Where tensor 0 (q), 1 (k) or 2 (v) starts in qkv: column blocks of one buffer when fused, else
    // three (B, T, C) buffers back to back.
    long offset(int which) const { return stride == C ? which * (long)B * T * C : which * (long)C; }
};

TEST_CASE("flash attention forward matches the reference, with separate and fused qkv") {
    Rng rng(301);
    for (const AttentionShape& s : SHAPES)
        for (bool fused : {false, true}) {
            INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " HD=" << s.HD << " fused=" << fused);
            AttentionCase c(s, fused, rng);
            DeviceBuffer<floatX> qkv(c.qkv), out((size_t)c.B * c.T * c.C);
            DeviceBuffer<float> lse((size_t)c.B * c.NH * c.T);
            out.poison(); lse.poison();
            attention_forward(out.ptr, lse.ptr, qkv.ptr + c.offset(0), qkv.ptr + c.offset(1), qkv.ptr + c.offset(2),
                              c.stride, c.B, c.T, c.C, c.NH, STREAM);
            cudaCheck(cudaDeviceSynchronize());
            CHECK(relative_error(out.download(), c.out) <= ATTN_FWD_TOL);
            CHECK(relative_error(lse.download(), c.lse) <= LSE_TOL);
        }
}

TEST_CASE("flash attention backward matches the reference and is deterministic") {
    Rng rng(302);
    for (const AttentionShape& s : SHAPES)
        for (bool fused : {false, true}) {
            INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " HD=" << s.HD << " fused=" << fused);
            AttentionCase c(s, fused, rng);
            const long N = (long)c.B * c.T;
            const std::vector<float> dout = random_floatX(N * c.C, rng);
            std::vector<double> dq(N * c.C, 0.0), dk(N * c.C, 0.0), dv(N * c.C, 0.0);
            attention_backward(dq.data(), dk.data(), dv.data(), to_double(dout).data(), c.probs.data(), c.q.data(),
                               c.k.data(), c.v.data(), c.B, c.T, c.C, c.NH);

            DeviceBuffer<floatX> qkv(c.qkv), out(N * c.C), d_out(dout), grads(c.qkv.size());
            DeviceBuffer<float> lse((size_t)c.B * c.NH * c.T), delta((size_t)c.B * c.NH * c.T);
            attention_forward(out.ptr, lse.ptr, qkv.ptr + c.offset(0), qkv.ptr + c.offset(1), qkv.ptr + c.offset(2),
                              c.stride, c.B, c.T, c.C, c.NH, STREAM);
            auto run_backward = [&] {
                grads.poison(); delta.poison();
                attention_backward(grads.ptr + c.offset(0), grads.ptr + c.offset(1), grads.ptr + c.offset(2), delta.ptr,
                                   d_out.ptr, out.ptr, lse.ptr, qkv.ptr + c.offset(0), qkv.ptr + c.offset(1),
                                   qkv.ptr + c.offset(2), c.stride, c.stride, c.B, c.T, c.C, c.NH, STREAM);
                cudaCheck(cudaDeviceSynchronize());
                return grads.raw();
            };
            const std::vector<floatX> first = run_backward();
            const std::vector<float> g(first.begin(), first.end());
            auto gather = [&](int which) {  // one gradient tensor out of the (possibly fused) buffer
                std::vector<float> t(N * c.C);
                for (long n = 0; n < N; n++)
                    for (int col = 0; col < c.C; col++) t[n * c.C + col] = g[c.offset(which) + n * c.stride + col];
                return t;
            };
            CHECK(relative_error(gather(0), dq) <= ATTN_BWD_TOL);
            CHECK(relative_error(gather(1), dk) <= ATTN_BWD_TOL);
            CHECK(relative_error(gather(2), dv) <= ATTN_BWD_TOL);
            CHECK(bitwise_equal(first, run_backward()));
        }
}
