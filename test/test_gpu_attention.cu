// The flash attention kernels (kernels/attention.cuh) against the CPU reference (kernels/cpu/attention.h)
// in double on the same floatX-rounded inputs, with poisoned outputs (test/gpu_test_utils.cuh).
//
// Metrics and bounds: test/attention_checks.h, calibrated on the CPU emulation of these kernels'
// rounding (docs/tests.md, "GPU tolerances"). The shapes cover every tile edge, partial tiles, many tiles
// (T 1024) and every head size.
#include <cmath>
#include <vector>
#include "gpu_test_utils.cuh"
#include "attention_checks.h"
#include "../kernels/attention.cuh"
#include "../kernels/cpu/rope.h"
#include "rope_checks.h"

constexpr AttentionBounds BOUNDS = FLOATX_IS_FP32 ? ATTENTION_BOUNDS_FP32 : ATTENTION_BOUNDS_BF16;

struct AttentionShape { int B, T, NH, HD; };
// The long shapes: T = 1024 on a GPU; in emulation (docs/emulation.md) 384, the same edges (a multiple
// of every tile, and 24 less for a partial last tile) at a seventh of the work: the emulated suites' time.
#ifdef MIXLN_EMU
constexpr int LONG = 384;
#else
constexpr int LONG = 1024;
#endif
// The kernels' tiles (kernels/attention.cuh): forward blocks of 128 queries and key blocks of 64; the
// backward's key blocks of 64 with query steps of 64 (32 above head size 64), its query blocks of 64
// with key steps of 64 (32). Every edge of them: T = 1, 63, 64, 65, 127, 128, 129, odd T (7, 48, 100,
// 257), many blocks (LONG); every head size, 16, 32, 48 (250m), 64, 128 at several edges each, and 80,
// 96, 112 once.
static const AttentionShape SHAPES[] = {
    {2, 1, 2, 64},   {1, 7, 2, 16},    {2, 48, 2, 48},   {1, 63, 2, 32},   {1, 64, 1, 128}, {1, 65, 2, 64},
    {1, 65, 1, 128}, {2, 100, 2, 16},  {1, 127, 1, 48},  {1, 128, 2, 64},  {1, 129, 1, 128}, {1, 130, 2, 32},
    {1, 257, 1, 64}, {1, 257, 1, 48},  {1, 90, 1, 80},   {1, 100, 1, 96},  {1, 70, 1, 112}, {1, LONG, 2, 64},
    {1, LONG, 1, 128}, {1, LONG - 24, 2, 32}, {1, LONG, 2, 48}, {1, LONG + 1, 1, 16}};

// The (N, C) tensor whose row n starts at offset + n * stride in buf: q, k or v (or a gradient) out of
// one q|k|v buffer (stride 3C), or out of three (N, C) buffers back to back (stride C).
template <class T>
static std::vector<T> rows_of(const std::vector<float>& buf, long N, int C, long offset, long stride) {
    std::vector<T> t(N * C);
    for (long n = 0; n < N; n++)
        for (int c = 0; c < C; c++) t[n * C + c] = buf[offset + n * stride + c];
    return t;
}

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
        q = rows_of<double>(qkv, N, C, offset(0), stride);
        k = rows_of<double>(qkv, N, C, offset(1), stride);
        v = rows_of<double>(qkv, N, C, offset(2), stride);
        out.resize(N * C);
        probs.resize((long)B * NH * T * T);
        attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        lse = attention_lse_reference(q, k, B, T, C, NH);
    }
    // Where tensor 0 (q), 1 (k) or 2 (v) starts in qkv: column blocks of one buffer when fused, else
    // three (B, T, C) buffers back to back.
    long offset(int which) const { return stride == C ? which * (long)B * T * C : which * (long)C; }
};

// Both metrics of one output tensor, printed (as the bounds' margins measured on the device).
static void check_attention(const char* what, const AttentionShape& s, bool fused, const std::vector<float>& got,
                            const std::vector<double>& ref, const std::vector<double>& scale, double l2_bound,
                            double element_bound) {
    const AttentionError e = attention_error(got, ref, scale);
    printf("attention %-3s B %d T %4d NH %d HD %3d%s: L2 %.2e (bound %.0e), per element %.2e (bound %.0e)\n", what,
           s.B, s.T, s.NH, s.HD, fused ? " fused" : "      ", e.l2, l2_bound, e.element, element_bound);
    CHECK(e.within(l2_bound, element_bound));
}

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
                              c.stride, c.B, c.T, c.C, c.NH, nullptr, STREAM);
            cudaCheck(cudaDeviceSynchronize());
            const AttentionScales scales = attention_error_scales(c.probs, c.q, c.k, c.v, c.out, {}, {}, {}, {}, c.B,
                                                                  c.T, c.C, c.NH);
            check_attention("out", s, fused, out.download(), c.out, scales.out, BOUNDS.out_l2, BOUNDS.out_element);
            const double lse_err = lse_error(lse.download(), c.lse);
            printf("attention lse max abs error %.2e (bound %.0e)\n", lse_err, BOUNDS.lse);
            CHECK(lse_err <= BOUNDS.lse);
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
                              c.stride, c.B, c.T, c.C, c.NH, nullptr, STREAM);
            auto run_backward = [&] {
                grads.poison(); delta.poison();
                attention_backward(grads.ptr + c.offset(0), grads.ptr + c.offset(1), grads.ptr + c.offset(2), delta.ptr,
                                   d_out.ptr, out.ptr, lse.ptr, qkv.ptr + c.offset(0), qkv.ptr + c.offset(1),
                                   qkv.ptr + c.offset(2), c.stride, c.stride, c.B, c.T, c.C, c.NH, nullptr, STREAM);
                cudaCheck(cudaDeviceSynchronize());
                return grads.raw();
            };
            const std::vector<floatX> first = run_backward();
            const std::vector<float> g(first.begin(), first.end());
            auto gather = [&](int which) { return rows_of<float>(g, N, c.C, c.offset(which), c.stride); };
            const AttentionScales scales = attention_error_scales(c.probs, c.q, c.k, c.v, c.out, to_double(dout), dq, dk,
                                                                  dv, c.B, c.T, c.C, c.NH);
            check_attention("dq", s, fused, gather(0), dq, scales.dq, BOUNDS.grad_l2, BOUNDS.grad_element);
            check_attention("dk", s, fused, gather(1), dk, scales.dk, BOUNDS.grad_l2, BOUNDS.grad_element);
            check_attention("dv", s, fused, gather(2), dv, scales.dv, BOUNDS.grad_l2, BOUNDS.grad_element);
            CHECK(bitwise_equal(first, run_backward()));
        }
}

// RoPE fused into the kernels (the trainer's path: q|k|v as the product wrote it, and the table). The
// forward must give the bits of the unfused path, attention without the table on q and k turned first
// as kernels/rope_turn.cuh turns them (test/rope_checks.h, on the host; the standalone rope kernel,
// which runs the same function, is checked against kernels/cpu/rope.h in test_gpu_kernels.cu). The
// backward against the reference: the double backward with respect to the turned q and k, turned back
// by the CPU rope_backward, with the per-element scales of rope_combine_scales. Shapes: one and several
// query blocks, key steps and partial tiles, every kind of head size.
static const AttentionShape ROPE_SHAPES[] = {{1, 7, 2, 112}, {2, 100, 2, 16}, {1, 65, 2, 32},
                                             {1, 129, 1, 128}, {1, 200, 2, 48}, {1, 257, 1, 64}};
static const double ROPE_THETA = 10000.0;

TEST_CASE("flash attention with RoPE fused: the forward of the unfused path bit for bit, the backward the reference's") {
    Rng rng(303);
    for (const AttentionShape& s : ROPE_SHAPES) {
        INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " HD=" << s.HD);
        AttentionCase raw(s, /*fused=*/true, rng);
        const int B = raw.B, T = raw.T, C = raw.C, NH = raw.NH, HD = raw.HD;
        const long N = (long)B * T;
        const std::vector<float2> table_host = rope_table_reference(T, HD, ROPE_THETA);
        std::vector<float> t = raw.qkv;
        rope_turn_reference(t, table_host, N, T, 2 * NH, HD, raw.stride);  // q's and k's heads
        DeviceBuffer<float2> table(table_host.size());
        cudaCheck(cudaMemcpy(table.ptr, table_host.data(), table_host.size() * sizeof(float2), cudaMemcpyHostToDevice));
        DeviceBuffer<floatX> qkv(raw.qkv), turned(t);

        DeviceBuffer<floatX> out_unfused(N * C), out(N * C);
        DeviceBuffer<float> lse_unfused((size_t)B * NH * T), lse((size_t)B * NH * T);
        attention_forward(out_unfused.ptr, lse_unfused.ptr, turned.ptr, turned.ptr + C, turned.ptr + 2 * C, raw.stride, B,
                          T, C, NH, nullptr, STREAM);
        out.poison(); lse.poison();
        attention_forward(out.ptr, lse.ptr, qkv.ptr, qkv.ptr + C, qkv.ptr + 2 * C, raw.stride, B, T, C, NH, table.ptr,
                          STREAM);
        cudaCheck(cudaDeviceSynchronize());
        CHECK(bitwise_equal(out.raw(), out_unfused.raw()));
        CHECK(bitwise_equal(lse.raw(), lse_unfused.raw()));

        // The reference on the turned inputs, its dq and dk turned back.
        const std::vector<float> dout = random_floatX(N * C, rng);
        const std::vector<double> q = rows_of<double>(t, N, C, raw.offset(0), raw.stride),
                                  k = rows_of<double>(t, N, C, raw.offset(1), raw.stride),
                                  v = rows_of<double>(t, N, C, raw.offset(2), raw.stride);
        std::vector<double> ref_out(N * C), probs((size_t)B * NH * T * T);
        attention_forward(ref_out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        std::vector<double> dq(N * C, 0.0), dk(N * C, 0.0), dv(N * C, 0.0);
        attention_backward(dq.data(), dk.data(), dv.data(), to_double(dout).data(), probs.data(), q.data(), k.data(),
                           v.data(), B, T, C, NH);
        AttentionScales scales = attention_error_scales(probs, q, k, v, ref_out, to_double(dout), dq, dk, dv, B, T, C, NH);
        rope_backward(dq.data(), dq.data(), B, T, NH, HD, ROPE_THETA);
        rope_backward(dk.data(), dk.data(), B, T, NH, HD, ROPE_THETA);
        rope_combine_scales(scales.dq, N, NH, HD);
        rope_combine_scales(scales.dk, N, NH, HD);

        DeviceBuffer<floatX> d_out(dout), grads(raw.qkv.size());
        DeviceBuffer<float> delta((size_t)B * NH * T);
        grads.poison(); delta.poison();
        attention_backward(grads.ptr, grads.ptr + C, grads.ptr + 2 * C, delta.ptr, d_out.ptr, out.ptr, lse.ptr, qkv.ptr,
                           qkv.ptr + C, qkv.ptr + 2 * C, raw.stride, raw.stride, B, T, C, NH, table.ptr, STREAM);
        cudaCheck(cudaDeviceSynchronize());
        const std::vector<float> g = grads.download();
        auto gather = [&](int which) { return rows_of<float>(g, N, C, raw.offset(which), raw.stride); };
        check_attention("dq", s, true, gather(0), dq, scales.dq, BOUNDS.grad_l2, BOUNDS.grad_element);
        check_attention("dk", s, true, gather(1), dk, scales.dk, BOUNDS.grad_l2, BOUNDS.grad_element);
        check_attention("dv", s, true, gather(2), dv, scales.dv, BOUNDS.grad_l2, BOUNDS.grad_element);
    }
}
