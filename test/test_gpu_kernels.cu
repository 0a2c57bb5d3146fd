// Every CUDA kernel (kernels/*.cuh), forward and backward, against its CPU reference (kernels/cpu/*.h)
// on random inputs of awkward sizes, in the build's storage precision (bf16, or fp32 with
// -DENABLE_FP32). Needs a GPU; without one test/gpu_main.cpp reports every case skipped. The method,
// the error metric and the tolerances are described in test/gpu_test_utils.cuh.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>
#include "gpu_test_utils.cuh"
#include "../core/rng.h"
#include "../kernels/cpu/adamw.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/cpu/residual.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"
#include "../kernels/adamw.cuh"
#include "../kernels/classifier.cuh"
#include "../kernels/embedding.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/swiglu.cuh"

// ----------------------------------------------------------------------------
// Embedding

TEST_CASE("embedding forward gathers scaled rows") {
    // STORE_TOL: scale * w is one fp32 product, then stored. C = 10 (and 12 in bf16) is not a multiple
    // of VEC: one element at a time; 768 and 1000 are: 128-bit accesses.
    Rng rng(101);
    struct Size { int N, C, V; };
    for (const Size& s : {Size{21, 12, 11}, Size{33, 10, 7}, Size{21, 768, 1000}, Size{257, 1000, 5001}}) {
        for (const float scale : {1.0f, std::sqrt((float)s.C)}) {
            INFO("N=" << s.N << " C=" << s.C << " V=" << s.V << " scale=" << scale);
            const std::vector<float> wte = random_floatX((size_t)s.V * s.C, rng);
            const std::vector<int> tokens = random_tokens(s.N, rng, s.V);
            DeviceBuffer<floatX> d_wte(wte), d_out((size_t)s.N * s.C);
            DeviceBuffer<int> d_tokens(tokens);
            d_out.poison();
            embedding_forward(d_out.ptr, d_tokens.ptr, d_wte.ptr, s.N, s.C, scale, STREAM);
            std::vector<double> ref((size_t)s.N * s.C);
            embedding_forward(ref.data(), tokens.data(), to_double(wte).data(), s.N, s.C, (double)scale);
            CHECK(relative_error(d_out.download(), ref) <= STORE_TOL);
        }
    }
}

TEST_CASE("embedding backward adds scaled rows into each token's row") {
    // FP32_TOL: each dwte element (fp32 in both builds) is one fp32 sum of at most N = 4099 terms in
    // position order, added once. Small vocabularies make tokens repeat; rows of absent tokens must
    // stay as they were. The device sort reads only the bits of ids below V: the largest id, V - 1,
    // is always present (V = 65536 and 50: exactly 16 bits, and 6 bits of which the top one is set).
    // C = 10 is not a multiple of VEC (one element at a time), the others are (128-bit accesses).
    Rng rng(102);
    struct Size { int N, C, V; };
    for (const Size& s : {Size{21, 12, 5}, Size{300, 10, 3}, Size{21, 768, 1000}, Size{257, 1000, 50},
                          Size{4099, 64, 65536}}) {
        INFO("N=" << s.N << " C=" << s.C << " V=" << s.V);
        const float scale = std::sqrt((float)s.C);
        const std::vector<float> dwte = random_fp32((size_t)s.V * s.C, rng), dout = random_floatX((size_t)s.N * s.C, rng);
        std::vector<int> tokens = random_tokens(s.N, rng, s.V);
        tokens[s.N / 2] = s.V - 1;
        DeviceBuffer<float> d_dwte(dwte);
        DeviceBuffer<floatX> d_dout(dout);
        DeviceBuffer<int> d_tokens(tokens), d_workspace(embedding_backward_workspace_ints(s.N, s.C));
        d_workspace.poison();
        embedding_backward(d_dwte.ptr, d_dout.ptr, d_tokens.ptr, d_workspace.ptr, s.N, s.C, s.V, scale, STREAM);
        std::vector<double> ref = to_double(dwte);
        embedding_backward(ref.data(), to_double(dout).data(), tokens.data(), s.N, s.C, (double)scale);
        CHECK(relative_error(d_dwte.download(), ref) <= FP32_TOL);
    }
}

// Tokens whose sorted runs meet the backward's chunks (EMBEDDING_CHUNK positions) in every way: a
// run of exactly one chunk, one of exactly two, a single position, runs ending exactly at a chunk's
// edge and one past it, one starting mid-chunk across several chunks, and one token at most of the
// positions (frequent tokens of real text), ending in a partial last chunk. Ids are spread over V = 40
// (rows of absent tokens must stay as they were); positions shuffled, as in text.
static std::vector<int> skewed_tokens(int N, Rng& rng) {
    const int E = EMBEDDING_CHUNK;
    const int counts[] = {E, 2 * E, 1, E - 2, E + 1, 3 * E + 5, E - 1};  // runs in token order; the rest: token 7
    std::vector<int> tokens;
    for (int t = 0; t < 7; t++) tokens.insert(tokens.end(), counts[t], 5 * t + 1);
    REQUIRE((int)tokens.size() < N / 2);
    tokens.resize(N, 5 * 7 + 1);
    std::vector<int> order(N);
    shuffle_indices(order.data(), N, rng);
    std::vector<int> shuffled(N);
    for (int i = 0; i < N; i++) shuffled[order[i]] = tokens[i];
    return shuffled;
}

TEST_CASE("embedding backward splits long runs of one token across chunks: skewed tokens, runs at chunk edges") {
    // FP32_TOL as above: the frequent token's ~3700 positions are summed a chunk at a time, and its
    // chunks' fp32 partial rows added in order. C = 10 not a multiple of VEC, 72 and 520 are (520 in
    // bf16: 65 vectors, threads of a partial warp).
    Rng rng(104);
    const int N = 4099, V = 40;
    for (const int C : {10, 72, 520}) {
        INFO("C=" << C);
        const float scale = 1.5f;
        const std::vector<float> dwte = random_fp32((size_t)V * C, rng), dout = random_floatX((size_t)N * C, rng);
        const std::vector<int> tokens = skewed_tokens(N, rng);
        DeviceBuffer<float> d_dwte(dwte);
        DeviceBuffer<floatX> d_dout(dout);
        DeviceBuffer<int> d_tokens(tokens), d_workspace(embedding_backward_workspace_ints(N, C));
        d_workspace.poison();
        embedding_backward(d_dwte.ptr, d_dout.ptr, d_tokens.ptr, d_workspace.ptr, N, C, V, scale, STREAM);
        std::vector<double> ref = to_double(dwte);
        embedding_backward(ref.data(), to_double(dout).data(), tokens.data(), N, C, (double)scale);
        CHECK(relative_error(d_dwte.download(), ref) <= FP32_TOL);
    }
}

// Sets an environment variable for a scope: the emulation reads EMU_BLOCK_ORDER and EMU_SEED at every
// launch (docs/emulation.md); on a GPU they change nothing and the hardware's own schedule varies.
struct ScopedEnv {
    std::string name, old;
    bool had;
    ScopedEnv(const char* n, const char* value) : name(n), had(getenv(n) != nullptr) {
        if (had) old = getenv(n);
        setenv(n, value, 1);
    }
    ~ScopedEnv() {
        if (had) setenv(name.c_str(), old.c_str(), 1);
        else unsetenv(name.c_str());
    }
};

TEST_CASE("embedding backward is deterministic: bitwise over runs and block orders") {
    // 4096 positions over 64 tokens (each row sums ~64 positions, across chunks), and the skewed
    // tokens: where atomics would vary the order, each sum's order is fixed by the tokens. Run again,
    // then with the blocks reversed and shuffled (two seeds). A workspace made for more positions and
    // wider rows serves a smaller batch.
    Rng rng(103);
    const int N = 4096, C = 768, V = 64;
    const std::vector<float> dwte = random_fp32((size_t)V * C, rng), dout = random_floatX((size_t)N * C, rng);
    for (const std::vector<int>& tokens : {random_tokens(N, rng, V), skewed_tokens(N, rng)}) {
        DeviceBuffer<float> d_dwte(dwte);
        DeviceBuffer<floatX> d_dout(dout);
        DeviceBuffer<int> d_tokens(tokens), d_workspace(embedding_backward_workspace_ints(2 * N, C + 8));
        auto run = [&] {
            d_dwte.upload(dwte);
            d_workspace.poison();
            embedding_backward(d_dwte.ptr, d_dout.ptr, d_tokens.ptr, d_workspace.ptr, N, C, V, 1.0f, STREAM);
            return d_dwte.raw();
        };
        const std::vector<float> first = run();
        CHECK(bitwise_equal(first, run()));
        struct Schedule { const char* order, *seed; };
        for (const Schedule& s : {Schedule{"reverse", "1"}, Schedule{"shuffle", "1"}, Schedule{"shuffle", "2"}}) {
            INFO("EMU_BLOCK_ORDER=" << s.order << " EMU_SEED=" << s.seed);
            ScopedEnv block_order("EMU_BLOCK_ORDER", s.order), block_seed("EMU_SEED", s.seed);
            CHECK(bitwise_equal(first, run()));
        }
    }
}

// ----------------------------------------------------------------------------
// RMSNorm, alone and fused with the residual add

// The kernels need C to be a multiple of VEC (8 bf16, 4 fp32; kernels/rmsnorm.cuh). 3 VEC (24 bf16,
// 12 fp32: not a multiple of 8) leaves most lanes of the row's warp idle; 1000 (125 or 250 vectors)
// gives the lanes of one row different numbers of vectors; 4096 is the largest C, 128 elements per lane.
struct NormSize { int N, C; };
static const NormSize NORM_SIZES[] = {{21, 3 * VEC}, {21, 768}, {21, 1000}, {257, 3 * VEC},
                                      {257, 768},    {257, 1000}, {5, 4096}};
static const float NORM_EPS = 1e-6f;

// rstd of the rows of inp, computed in double and rounded to fp32, as the GPU forward would store it.
static std::vector<float> reference_rstd(const std::vector<float>& inp, const std::vector<float>& w, int N, int C) {
    std::vector<double> out((size_t)N * C), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), to_double(inp).data(), to_double(w).data(), N, C, (double)NORM_EPS);
    return std::vector<float>(rstd.begin(), rstd.end());
}

TEST_CASE("rmsnorm forward normalizes each row") {
    // out: STORE_TOL (a C-term fp32 sum of squares, then three products, stored); rstd: FP32_TOL.
    Rng rng(201);
    for (const NormSize& s : NORM_SIZES) {
        INFO("N=" << s.N << " C=" << s.C);
        const std::vector<float> inp = random_floatX((size_t)s.N * s.C, rng, 3.0), w = random_floatX(s.C, rng);
        DeviceBuffer<floatX> d_inp(inp), d_w(w), d_out((size_t)s.N * s.C);
        DeviceBuffer<float> d_rstd(s.N);
        d_out.poison();
        d_rstd.poison();
        rmsnorm_forward(d_out.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, s.N, s.C, NORM_EPS, STREAM);
        std::vector<double> out((size_t)s.N * s.C), rstd(s.N);
        rmsnorm_forward(out.data(), rstd.data(), to_double(inp).data(), to_double(w).data(), s.N, s.C, (double)NORM_EPS);
        CHECK(relative_error(d_out.download(), out) <= STORE_TOL);
        CHECK(relative_error(d_rstd.download(), rstd) <= FP32_TOL);
    }
}

TEST_CASE("rmsnorm backward, writing (Post-LN, the final norm) and accumulating (Pre-LN)") {
    // dinp: STORE_TOL (a C-term fp32 dot product, a few products, one add and store). dw (fp32 in both
    // builds): FP32_TOL (an fp32 sum over at most 257 rows in two stages, added).
    Rng rng(203);
    for (const bool accumulate : {false, true}) {
        for (const NormSize& s : NORM_SIZES) {
            INFO("N=" << s.N << " C=" << s.C << " accumulate=" << accumulate);
            const long NC = (long)s.N * s.C;
            const std::vector<float> inp = random_floatX(NC, rng, 3.0), w = random_floatX(s.C, rng);
            const std::vector<float> dout = random_floatX(NC, rng), dinp = random_floatX(NC, rng), dw = random_fp32(s.C, rng);
            const std::vector<float> rstd = reference_rstd(inp, w, s.N, s.C);
            DeviceBuffer<floatX> d_inp(inp), d_w(w), d_dout(dout), d_dinp(dinp);
            DeviceBuffer<float> d_dw(dw), d_rstd(rstd), d_scratch(rmsnorm_backward_scratch_floats(s.C));
            if (!accumulate) d_dinp.poison();
            d_scratch.poison();
            rmsnorm_backward(d_dinp.ptr, d_dw.ptr, d_scratch.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_rstd.ptr, accumulate,
                             s.N, s.C, STREAM);
            std::vector<double> dinp_ref = accumulate ? to_double(dinp) : std::vector<double>(NC, 0.0), dw_ref = to_double(dw);
            rmsnorm_backward(dinp_ref.data(), dw_ref.data(), to_double(dout).data(), to_double(inp).data(),
                             to_double(w).data(), to_double(rstd).data(), s.N, s.C);
            CHECK(relative_error(d_dinp.download(), dinp_ref) <= STORE_TOL);
            CHECK(relative_error(d_dw.download(), dw_ref) <= FP32_TOL);
        }
    }
}

TEST_CASE("rmsnorm backward dweight over many blocks matches the reference and is deterministic") {
    // 4096 rows: the backward's grid is its cap of 512 blocks (one wave is more: ~8 blocks per SM
    // here, ~3 on an H100), each block's 8 warps sum one row each; the second stage's 192 blocks (4
    // columns each) add 512 partial rows, 4 per thread, then a tree over 128 threads. dw: FP32_TOL as in
    // the smaller cases (an fp32 sum over 4096 rows in three stages, ~2^-24 * sqrt(4096) relative to the
    // sum of magnitudes); two runs bitwise.
    Rng rng(205);
    const int N = 4096, C = 768;
    const std::vector<float> inp = random_floatX((size_t)N * C, rng, 3.0), w = random_floatX(C, rng);
    const std::vector<float> dout = random_floatX((size_t)N * C, rng), dw = random_fp32(C, rng);
    const std::vector<float> rstd = reference_rstd(inp, w, N, C);
    DeviceBuffer<floatX> d_inp(inp), d_w(w), d_dout(dout), d_dinp((size_t)N * C);
    DeviceBuffer<float> d_dw(dw), d_rstd(rstd), d_scratch(rmsnorm_backward_scratch_floats(C));
    rmsnorm_backward(d_dinp.ptr, d_dw.ptr, d_scratch.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_rstd.ptr, false, N, C, STREAM);
    const std::vector<float> first = d_dw.raw();
    std::vector<double> dinp_ref((size_t)N * C, 0.0), dw_ref = to_double(dw);
    rmsnorm_backward(dinp_ref.data(), dw_ref.data(), to_double(dout).data(), to_double(inp).data(), to_double(w).data(),
                     to_double(rstd).data(), N, C);
    CHECK(relative_error(d_dw.download(), dw_ref) <= FP32_TOL);
    d_dw.upload(dw);
    rmsnorm_backward(d_dinp.ptr, d_dw.ptr, d_scratch.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_rstd.ptr, false, N, C, STREAM);
    CHECK(bitwise_equal(first, d_dw.raw()));
}

// ----------------------------------------------------------------------------
// SwiGLU

// gate and up side by side in rows of 2F, as the model's one gate|up product leaves them (stride 2F),
// or as two (N, F) tensors (stride F). F must be a multiple of VEC (kernels/swiglu.cuh): 3 VEC (24
// bf16, 12 fp32) is a block with few threads, 1000 (125 or 250 vectors) and 1368 (171 or 342) a
// partial second block; N 70000 is more rows than a grid's y dimension holds (65535).
struct SwigluCase {
    int N, F;
    bool fused;
    std::vector<float> buffer;    // the device buffer's values: (N, 2F), or gate (N, F) then up (N, F)
    std::vector<double> gate, up; // (N, F) each: the same values, for the reference

    SwigluCase(int n, int f, bool fused_, Rng& rng) : N(n), F(f), fused(fused_), buffer(2L * n * f) {
        gate.resize((long)N * F);
        up.resize((long)N * F);
        for (long i = 0; i < (long)N * F; i++) {
            gate[i] = buffer[at(i, false)] = (float)(floatX)(float)(3.0 * rng.normal());
            up[i] = buffer[at(i, true)] = (float)(floatX)(float)rng.normal();
        }
    }
    long stride() const { return fused ? 2L * F : F; }
    long up_offset() const { return fused ? F : (long)N * F; }
    // Where element i = n * F + f of gate (or up) sits in the buffer.
    long at(long i, bool is_up) const { return (i / F) * stride() + i % F + (is_up ? up_offset() : 0); }
    // gate's (or up's) (N, F) values out of a buffer laid out as this one.
    std::vector<float> gather(const std::vector<float>& values, bool is_up) const {
        std::vector<float> out((long)N * F);
        for (long i = 0; i < (long)N * F; i++) out[i] = values[at(i, is_up)];
        return out;
    }
};

struct SwigluSize { int N, F; };
static const SwigluSize SWIGLU_SIZES[] = {{21, 3 * VEC}, {21, 1000}, {257, 1368}, {70000, VEC}};

TEST_CASE("swiglu forward, gate and up side by side (stride 2F) and separate (stride F)") {
    // STORE_TOL: an expf, a division and two products in fp32, stored.
    Rng rng(301);
    for (const SwigluSize& size : SWIGLU_SIZES)
        for (const bool fused : {true, false}) {
            INFO("N=" << size.N << " F=" << size.F << " fused=" << fused);
            const SwigluCase c(size.N, size.F, fused, rng);
            const long n = (long)c.N * c.F;
            DeviceBuffer<floatX> d_gate_up(c.buffer), d_out(n);
            d_out.poison();
            swiglu_forward(d_out.ptr, d_gate_up.ptr, d_gate_up.ptr + c.up_offset(), c.stride(), c.N, c.F, STREAM);
            std::vector<double> out(n);
            swiglu_forward(out.data(), c.gate.data(), c.up.data(), n);
            CHECK(relative_error(d_out.download(), out) <= STORE_TOL);
        }
}

TEST_CASE("swiglu backward writes both input gradients by stride, into a new buffer and over gate and up") {
    // STORE_TOL: as the forward, a few more fp32 products. The gradients land where gate and up are in
    // the layout (poisoned first); the trainer writes them over gate and up themselves.
    Rng rng(302);
    for (const SwigluSize& size : SWIGLU_SIZES)
        for (const bool fused : {true, false})
            for (const bool in_place : {false, true}) {
                INFO("N=" << size.N << " F=" << size.F << " fused=" << fused << " in place=" << in_place);
                const SwigluCase c(size.N, size.F, fused, rng);
                const long n = (long)c.N * c.F;
                const std::vector<float> dout = random_floatX(n, rng);
                DeviceBuffer<floatX> d_gate_up(c.buffer), d_dout(dout), d_grads(c.buffer.size());
                d_grads.poison();
                DeviceBuffer<floatX>& grads = in_place ? d_gate_up : d_grads;
                swiglu_backward(grads.ptr, grads.ptr + c.up_offset(), d_dout.ptr, d_gate_up.ptr,
                                d_gate_up.ptr + c.up_offset(), c.stride(), c.N, c.F, STREAM);
                std::vector<double> dgate(n, 0.0), dup(n, 0.0);
                swiglu_backward(dgate.data(), dup.data(), to_double(dout).data(), c.gate.data(), c.up.data(), n);
                const std::vector<float> got = grads.download();
                CHECK(relative_error(c.gather(got, false), dgate) <= STORE_TOL);
                CHECK(relative_error(c.gather(got, true), dup) <= STORE_TOL);
            }
}

// ----------------------------------------------------------------------------
// RoPE

// hd / 2 must be a multiple of VEC (kernels/rope.cuh): hd 16 is one vector per half in bf16 (two in
// fp32), 48 (250m's) three (six).
struct RopeSize { int B, T, NH, hd; };
static const RopeSize ROPE_SIZES[] = {{3, 7, 3, 16}, {2, 5, 3, 48}, {2, 64, 12, 64}, {1, 256, 8, 128}};
static const double ROPE_THETA = 10000.0;

// The (cos, sin) table for more positions than used, to catch a wrong position index.
static std::unique_ptr<DeviceBuffer<float2>> rope_table(const RopeSize& s) {
    const int table_T = s.T + 5;
    auto table = std::make_unique<DeviceBuffer<float2>>((size_t)table_T * (s.hd / 2));
    rope_table_init(table->ptr, table_T, s.hd, ROPE_THETA, STREAM);
    return table;
}

TEST_CASE("rope forward and backward, out of place and in place") {
    // STORE_TOL: cos and sin rounded to fp32 (2^-24), two products and a sum in fp32, stored.
    Rng rng(401);
    for (const RopeSize& s : ROPE_SIZES) {
        INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd=" << s.hd);
        const int C = s.NH * s.hd;
        const long n = (long)s.B * s.T * C;
        const auto table = rope_table(s);
        const std::vector<float> x = random_floatX(n, rng), dout = random_floatX(n, rng);
        std::vector<double> out(n), dinp(n);
        rope_forward(out.data(), to_double(x).data(), s.B, s.T, s.NH, s.hd, ROPE_THETA);
        rope_backward(dinp.data(), to_double(dout).data(), s.B, s.T, s.NH, s.hd, ROPE_THETA);

        DeviceBuffer<floatX> d_x(x), d_out(n);
        d_out.poison();
        rope_forward(d_out.ptr, d_x.ptr, table->ptr, s.B, s.T, s.NH, s.hd, C, STREAM);
        CHECK(relative_error(d_out.download(), out) <= STORE_TOL);
        rope_forward(d_x.ptr, d_x.ptr, table->ptr, s.B, s.T, s.NH, s.hd, C, STREAM);
        CHECK(relative_error(d_x.download(), out) <= STORE_TOL);

        DeviceBuffer<floatX> d_dout(dout), d_dinp(n);
        d_dinp.poison();
        rope_backward(d_dinp.ptr, d_dout.ptr, table->ptr, s.B, s.T, s.NH, s.hd, C, STREAM);
        CHECK(relative_error(d_dinp.download(), dinp) <= STORE_TOL);
        rope_backward(d_dout.ptr, d_dout.ptr, table->ptr, s.B, s.T, s.NH, s.hd, C, STREAM);
        CHECK(relative_error(d_dout.download(), dinp) <= STORE_TOL);
    }
}

TEST_CASE("rope on the q and k of fused q|k|v rows (stride 3C), in place, leaves v untouched") {
    // The trainer's use: q and k are the first 2 NH heads of each 3C row. STORE_TOL for q and k against
    // the reference run on each alone; v must come back bitwise.
    Rng rng(402);
    for (const RopeSize& s : ROPE_SIZES)
        for (const int direction : {+1, -1}) {
            INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd=" << s.hd << " direction=" << direction);
            const int C = s.NH * s.hd;
            const long N = (long)s.B * s.T;
            const auto table = rope_table(s);
            const std::vector<float> qkv = random_floatX(N * 3 * C, rng);
            // column block `which` (0 q, 1 k, 2 v) of the rows, as (N, C)
            auto part = [&](const auto& rows, int which) {
                std::remove_cv_t<std::remove_reference_t<decltype(rows)>> out(N * C);
                for (long n = 0; n < N; n++)
                    for (int c = 0; c < C; c++) out[n * C + c] = rows[n * 3 * C + which * C + c];
                return out;
            };
            DeviceBuffer<floatX> d_qkv(qkv);
            const std::vector<floatX> v_before = part(d_qkv.raw(), 2);
            if (direction > 0) rope_forward(d_qkv.ptr, d_qkv.ptr, table->ptr, s.B, s.T, 2 * s.NH, s.hd, 3 * C, STREAM);
            else rope_backward(d_qkv.ptr, d_qkv.ptr, table->ptr, s.B, s.T, 2 * s.NH, s.hd, 3 * C, STREAM);
            const std::vector<float> got = d_qkv.download();
            for (int which : {0, 1}) {
                std::vector<double> ref(N * C);
                const std::vector<double> in = to_double(part(qkv, which));
                if (direction > 0) rope_forward(ref.data(), in.data(), s.B, s.T, s.NH, s.hd, ROPE_THETA);
                else rope_backward(ref.data(), in.data(), s.B, s.T, s.NH, s.hd, ROPE_THETA);
                CHECK(relative_error(part(got, which), ref) <= STORE_TOL);
            }
            CHECK(bitwise_equal(v_before, part(d_qkv.raw(), 2)));
        }
}

// ----------------------------------------------------------------------------
// Classifier: fused softmax + cross-entropy

// N = 21 rows, rows 3 and 10 ignored, logits with std 3 (so the softmax is far from uniform).
struct ClassifierCase {
    int N = 21, V;
    std::vector<float> logits;
    std::vector<int> targets;
    ClassifierCase(int vocab, Rng& rng) : V(vocab) {
        logits = random_floatX((size_t)N * V, rng, 3.0);
        targets = random_tokens(N, rng, V);
        targets[3] = targets[10] = IGNORE_INDEX;
    }
};

// The reference's mean loss over the rows with a target.
static double reference_mean_loss(const std::vector<double>& losses, int n_valid) {
    double sum = 0;
    for (double l : losses) sum += l;  // ignored rows hold 0
    return sum / n_valid;
}

TEST_CASE("classifier: losses, mean and in-place dlogits, ignored rows zero; the step's loss accumulates") {
    // losses: FP32_TOL (a thread's online sum of V/512 <= 98 exps, a tree over the block, a logf); the
    // mean: FP32_TOL (a double sum of them, rounded to fp32). dlogits: STORE_TOL (an expf and two
    // products in fp32 per element, stored), with dloss = loss_scale / n_valid counted on the device.
    // The step's loss (double) starts at 1.5 and gets loss_scale * mean added. The kernel reads and
    // writes 128 bits at a time: V = 11 and 100 (rows off 16-byte boundaries: heads and tails one
    // logit at a time, fewer vectors than threads), 32000 (whole vectors, 4 in flight per thread and a
    // remainder), 50001 (both).
    Rng rng(501);
    const float loss_scale = 0.25f;
    for (const int V : {11, 100, 32000, 50001}) {
        INFO("V=" << V);
        ClassifierCase c(V, rng);
        DeviceBuffer<floatX> d_logits(c.logits);
        DeviceBuffer<int> d_targets(c.targets);
        DeviceBuffer<float> d_losses(c.N);
        DeviceBuffer<LossScalars> d_scalars(1);
        DeviceBuffer<double> d_step_loss(std::vector<double>{1.5});
        d_losses.poison();
        d_scalars.poison();
        std::vector<double> losses(c.N), dlogits((size_t)c.N * V);
        int n_valid = 0;
        crossentropy_forward(losses.data(), to_double(c.logits).data(), c.targets.data(), c.N, V, &n_valid);
        const float dloss = loss_scale / n_valid;
        crossentropy_backward(dlogits.data(), to_double(c.logits).data(), c.targets.data(), c.N, V, (double)dloss);
        crossentropy_forward_backward(d_logits.ptr, d_losses.ptr, d_scalars.ptr, d_step_loss.ptr, d_targets.ptr, c.N, V,
                                      loss_scale, true, STREAM);
        CHECK(relative_error(d_losses.download(), losses) <= FP32_TOL);
        CHECK(relative_error(d_logits.download(), dlogits) <= STORE_TOL);
        const LossScalars scalars = d_scalars.raw()[0];
        CHECK(scalars.n_valid == n_valid);
        CHECK(scalars.dloss == dloss);
        const double mean = reference_mean_loss(losses, n_valid);
        CHECK(std::fabs(scalars.mean_loss - mean) <= FP32_TOL * mean);
        CHECK(d_step_loss.raw()[0] == 1.5 + (double)scalars.mean_loss * loss_scale);
    }
}

TEST_CASE("classifier: losses alone leave the logits and the step's loss untouched") {
    // FP32_TOL for the losses and the mean as above; the logits must come back bitwise unchanged.
    Rng rng(502);
    for (const int V : {11, 50001}) {
        INFO("V=" << V);
        ClassifierCase c(V, rng);
        DeviceBuffer<floatX> d_logits(c.logits);
        DeviceBuffer<int> d_targets(c.targets);
        DeviceBuffer<float> d_losses(c.N);
        DeviceBuffer<LossScalars> d_scalars(1);
        d_losses.poison();
        d_scalars.poison();
        const std::vector<floatX> before = d_logits.raw();
        crossentropy_forward_backward(d_logits.ptr, d_losses.ptr, d_scalars.ptr, nullptr, d_targets.ptr, c.N, V, 1.0f,
                                      false, STREAM);
        std::vector<double> losses(c.N);
        int n_valid = 0;
        crossentropy_forward(losses.data(), to_double(c.logits).data(), c.targets.data(), c.N, V, &n_valid);
        CHECK(relative_error(d_losses.download(), losses) <= FP32_TOL);
        const double mean = reference_mean_loss(losses, n_valid);
        CHECK(std::fabs(d_scalars.raw()[0].mean_loss - mean) <= FP32_TOL * mean);
        CHECK(bitwise_equal(before, d_logits.raw()));
    }
}

// ----------------------------------------------------------------------------
// Optimizer: AdamW and the global gradient norm

TEST_CASE("adamw steps match the reference, on master weights in BF16 mode and in place in FP32 mode") {
    // The fp32 state (weights, m, v): FP32_TOL, a dozen fp32 operations per element with a sqrtf.
    // The floatX weights rounded from the fp32 ones: STORE_TOL. n = 7: the tail alone (fewer than a
    // vector of VEC); 4096: vectors only; 100003: vectors and a tail of 3.
    Rng rng(601);
    const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, grad_scale = 0.5f;
    for (const long n : {7L, 4096L, 100003L}) {
        INFO("n=" << n);
        const std::vector<float> weights = random_fp32(n, rng, 0.5), m = random_fp32(n, rng, 1e-2);
        std::vector<float> v = random_fp32(n, rng, 1e-2);
        for (float& x : v) x = x * x;  // second moments are positive
        DeviceBuffer<floatX> d_params(weights);
        DeviceBuffer<float> d_master(weights), d_m(m), d_v(v);
        float* master = FLOATX_IS_FP32 ? nullptr : d_master.ptr;
        std::vector<double> p_ref = to_double(weights), m_ref = to_double(m), v_ref = to_double(v);
        for (int t = 1; t <= 3; t++) {
            INFO("step " << t);
            const std::vector<float> grads = random_fp32(n, rng, 1e-2);
            DeviceBuffer<float> d_grads(grads);
            if (master) d_params.poison();  // written from the master weights; in FP32 mode they are the input
            AdamWScalars scalars = adamw_step_scalars(lr, t, beta1, beta2, eps, weight_decay, 0.0);
            scalars.grad_scale = grad_scale;  // as if grad_clip had set it
            DeviceBuffer<AdamWScalars> d_scalars(std::vector<AdamWScalars>{scalars});
            adamw_update(d_params.ptr, master, d_grads.ptr, d_m.ptr, d_v.ptr, n, d_scalars.ptr, STREAM);
            adamw_update(p_ref.data(), to_double(grads).data(), m_ref.data(), v_ref.data(), n, t, (double)lr,
                         (double)beta1, (double)beta2, (double)eps, (double)weight_decay, (double)grad_scale);
            if (!FLOATX_IS_FP32) CHECK(relative_error(d_master.download(), p_ref) <= FP32_TOL);
            CHECK(relative_error(d_params.download(), p_ref) <= STORE_TOL);
            CHECK(relative_error(d_m.download(), m_ref) <= FP32_TOL);
            CHECK(relative_error(d_v.download(), v_ref) <= FP32_TOL);
        }
    }
}

TEST_CASE("global gradient norm matches the reference") {
    // FP32_TOL: each thread sums a few squares, then two tree reductions and a sqrtf. The sizes cover
    // fewer elements than one vector of 4 and than one block, tails of 3, and more than GRAD_NORM_BLOCKS
    // blocks' worth (each thread 4 elements per step).
    Rng rng(602);
    for (const long n : {1L, 1000L, 1000003L, 3L * GRAD_NORM_BLOCKS * 4 * GRAD_NORM_BLOCK_SIZE + 7}) {
        INFO("n=" << n);
        const std::vector<float> grads = random_fp32(n, rng, 1e-2);
        DeviceBuffer<float> d_grads(grads), d_norm(1), d_scratch(GRAD_NORM_BLOCKS);
        d_norm.poison();
        d_scratch.poison();
        global_grad_norm(d_norm.ptr, d_scratch.ptr, d_grads.ptr, n, STREAM);
        const std::vector<double> ref = {global_grad_norm(to_double(grads).data(), n)};
        CHECK(relative_error(d_norm.download(), ref) <= FP32_TOL);
    }
}

TEST_CASE("global gradient norm is deterministic") {
    Rng rng(603);
    const long n = 5000003;
    DeviceBuffer<float> d_grads(random_fp32(n, rng)), d_norm(1), d_scratch(GRAD_NORM_BLOCKS);
    global_grad_norm(d_norm.ptr, d_scratch.ptr, d_grads.ptr, n, STREAM);
    const std::vector<float> first = d_norm.raw();
    d_norm.poison();
    global_grad_norm(d_norm.ptr, d_scratch.ptr, d_grads.ptr, n, STREAM);
    CHECK(bitwise_equal(first, d_norm.raw()));
}

TEST_CASE("the clipping factor computed on the device from the norm is the CPU's, bitwise") {
    // grad_clip_kernel evaluates kernels/cpu/adamw.h's grad_clip_scale in double, as the CPU does.
    for (const double max_norm : {0.0, 0.5, 1.0}) {
        for (const float norm : {0.1f, 0.4999999f, 0.7f, 3.0f}) {
            INFO("max_norm " << max_norm << ", norm " << norm);
            const AdamWScalars host = adamw_step_scalars(1e-3, 3, 0.9, 0.95, 1e-8, 0.1, max_norm);
            DeviceBuffer<AdamWScalars> d_scalars(std::vector<AdamWScalars>{host});
            DeviceBuffer<float> d_norm(std::vector<float>{norm});
            grad_clip(d_scalars.ptr, d_norm.ptr, STREAM);
            const AdamWScalars device = d_scalars.raw()[0];
            CHECK(device.grad_scale == (float)grad_clip_scale(norm, max_norm));
            CHECK(device.lr == host.lr);
            CHECK(device.bias_correction2 == host.bias_correction2);
        }
    }
}

TEST_CASE("a non-finite gradient norm skips the update on the device: weights, master weights and moments keep their bits") {
    // The trainer's path: the norm of the gradients (global_grad_norm), grad_clip (the clipping factor
    // and skip = update_skipped(norm), as the CPU), then adamw_update. Before, an inf norm gave a factor
    // of 0 and 0 * inf = NaN in every moment its gradient touched; a NaN norm a factor of 1.
    Rng rng(604);
    const long n = 1003;
    for (const double max_norm : {0.0, 1.0}) {
        for (const float planted : {INFINITY, -INFINITY, NAN}) {
            INFO("max_norm " << max_norm << ", a gradient of " << planted);
            const std::vector<float> weights = random_fp32(n, rng, 0.5), m = random_fp32(n, rng, 1e-2);
            std::vector<float> v = random_fp32(n, rng, 1e-2), grads = random_fp32(n, rng, 1e-2);
            for (float& x : v) x = x * x;
            grads[n / 2] = planted;
            DeviceBuffer<floatX> d_params(weights);
            DeviceBuffer<float> d_master(weights), d_m(m), d_v(v), d_grads(grads), d_norm(1), d_scratch(GRAD_NORM_BLOCKS);
            float* master = FLOATX_IS_FP32 ? nullptr : d_master.ptr;
            const std::vector<floatX> params_before = d_params.raw();
            const std::vector<float> master_before = d_master.raw(), m_before = d_m.raw(), v_before = d_v.raw();
            DeviceBuffer<AdamWScalars> d_scalars(std::vector<AdamWScalars>{adamw_step_scalars(1e-3, 3, 0.9, 0.95, 1e-8, 0.1, max_norm)});
            global_grad_norm(d_norm.ptr, d_scratch.ptr, d_grads.ptr, n, STREAM);
            const float norm = d_norm.raw()[0];
            CHECK((std::isnan(planted) ? std::isnan(norm) : std::isinf(norm)));
            grad_clip(d_scalars.ptr, d_norm.ptr, STREAM);
            CHECK(d_scalars.raw()[0].skip == 1);
            adamw_update(d_params.ptr, master, d_grads.ptr, d_m.ptr, d_v.ptr, n, d_scalars.ptr, STREAM);
            CHECK(bitwise_equal(d_params.raw(), params_before));
            CHECK(bitwise_equal(d_master.raw(), master_before));
            CHECK(bitwise_equal(d_m.raw(), m_before));
            CHECK(bitwise_equal(d_v.raw(), v_before));

            // The same buffers with the gradient made finite: the update is applied (the checks above see a change).
            grads[n / 2] = 0.0f;
            d_grads.upload(grads);
            global_grad_norm(d_norm.ptr, d_scratch.ptr, d_grads.ptr, n, STREAM);
            grad_clip(d_scalars.ptr, d_norm.ptr, STREAM);
            CHECK(d_scalars.raw()[0].skip == 0);
            adamw_update(d_params.ptr, master, d_grads.ptr, d_m.ptr, d_v.ptr, n, d_scalars.ptr, STREAM);
            CHECK(!bitwise_equal(d_m.raw(), m_before));
            CHECK(!bitwise_equal(FLOATX_IS_FP32 ? d_params.download() : d_master.raw(), master_before));
        }
    }
}

// ----------------------------------------------------------------------------
// Matmul (cuBLASLt)

// offset shifts every matrix by that many elements into its buffer, so the pointers lose their 256-byte
// alignment (2 bytes left in bf16 for an offset of 1), as slices of a flat parameter buffer can.
struct MatmulSize { int N, C, OC, offset; };
static const MatmulSize MATMUL_SIZES[] = {{21, 12, 12, 0}, {21, 768, 1000, 0}, {21, 1000, 768, 0},
                                          {257, 768, 2048, 0}, {21, 12, 12, 1}, {21, 1000, 768, 1}};

// A device matrix of T (floatX, or fp32 for weight gradients) at `offset` elements into its buffer.
template <typename T = floatX>
struct OffsetMatrix {
    int offset;
    DeviceBuffer<T> buffer;
    T* ptr;
    OffsetMatrix(const std::vector<float>& values, int offset_)
        : offset(offset_), buffer(values.size() + offset_), ptr(buffer.ptr + offset_) {
        std::vector<float> padded(offset, 0.0f);
        padded.insert(padded.end(), values.begin(), values.end());
        buffer.upload(padded);
    }
    std::vector<float> download() const {
        const std::vector<float> all = buffer.download();
        return std::vector<float>(all.begin() + offset, all.end());
    }
};

TEST_CASE("matmul forward: out = inp W^T") {
    // MATMUL_TOL (see the header comment); the output is written (beta = 0) over poison.
    Rng rng(701);
    matmul_setup();
    for (const MatmulSize& s : MATMUL_SIZES) {
        INFO("N=" << s.N << " C=" << s.C << " OC=" << s.OC << " offset=" << s.offset);
        const std::vector<float> inp = random_floatX((size_t)s.N * s.C, rng), W = random_floatX((size_t)s.OC * s.C, rng);
        OffsetMatrix<> d_inp(inp, s.offset), d_W(W, s.offset), d_out(std::vector<float>((size_t)s.N * s.OC), s.offset);
        d_out.buffer.poison();
        matmul_forward(d_out.ptr, d_inp.ptr, d_W.ptr, s.N, s.C, s.OC, STREAM);
        std::vector<double> out((size_t)s.N * s.OC);
        matmul_forward(out.data(), to_double(inp).data(), to_double(W).data(), s.N, s.C, s.OC);
        CHECK(relative_error(d_out.download(), out) <= MATMUL_TOL);
    }
    matmul_teardown();
}

// dW is fp32 in both builds: the tensor cores' fp32 accumulation (MATMUL_TOL without the rounding of
// the output to bf16), or true fp32 in FP32 mode.
constexpr double MATMUL_FP32_OUT_TOL = FLOATX_IS_FP32 ? FP32_TOL : 2e-4 + FP32_TOL;

TEST_CASE("matmul backward writes dinp = dout W and accumulates dW += dout^T inp") {
    // MATMUL_TOL for dinp, written (beta = 0) over poison; MATMUL_FP32_OUT_TOL for the fp32 dW, which
    // starts from random values that the product is added to (beta = 1).
    Rng rng(702);
    matmul_setup();
    for (const MatmulSize& s : MATMUL_SIZES) {
        INFO("N=" << s.N << " C=" << s.C << " OC=" << s.OC << " offset=" << s.offset);
        const std::vector<float> inp = random_floatX((size_t)s.N * s.C, rng), W = random_floatX((size_t)s.OC * s.C, rng);
        const std::vector<float> dout = random_floatX((size_t)s.N * s.OC, rng), dW = random_fp32((size_t)s.OC * s.C, rng);
        OffsetMatrix<> d_inp(inp, s.offset), d_W(W, s.offset), d_dout(dout, s.offset);
        OffsetMatrix<> d_dinp(std::vector<float>((size_t)s.N * s.C), s.offset);
        OffsetMatrix<float> d_dW(dW, s.offset);
        d_dinp.buffer.poison();
        matmul_backward(d_dinp.ptr, d_dW.ptr, d_dout.ptr, d_inp.ptr, d_W.ptr, s.N, s.C, s.OC, STREAM);
        std::vector<double> dinp_ref((size_t)s.N * s.C), dW_ref = to_double(dW);
        matmul_backward_input(dinp_ref.data(), to_double(dout).data(), to_double(W).data(), s.N, s.C, s.OC, false);
        matmul_backward_weight(dW_ref.data(), to_double(dout).data(), to_double(inp).data(), s.N, s.C, s.OC);
        CHECK(relative_error(d_dinp.download(), dinp_ref) <= MATMUL_TOL);
        CHECK(relative_error(d_dW.download(), dW_ref) <= MATMUL_FP32_OUT_TOL);
    }
    matmul_teardown();
}

TEST_CASE("matmul with the residual in the epilogue: out = s x + inp W^T, dinp = s dres + dout W") {
    // The sum is formed in fp32 and rounded once: the product's MATMUL_TOL, relative to the sum's size
    // (s x only adds to it). s = 1 (Pre-LN) and 1.7 (as DeepNorm's); x and dres differ from the product
    // in size and sign, so dropping or rescaling them misses the bound, as does reading D as C.
    Rng rng(703);
    matmul_setup();
    for (const float s_res : {1.0f, 1.7f}) {
        for (const MatmulSize& s : MATMUL_SIZES) {
            INFO("N=" << s.N << " C=" << s.C << " OC=" << s.OC << " offset=" << s.offset << " s=" << s_res);
            const std::vector<float> inp = random_floatX((size_t)s.N * s.C, rng), W = random_floatX((size_t)s.OC * s.C, rng);
            const std::vector<float> x = random_floatX((size_t)s.N * s.OC, rng, 4.0), dout = random_floatX((size_t)s.N * s.OC, rng);
            const std::vector<float> dres = random_floatX((size_t)s.N * s.C, rng, 4.0);
            OffsetMatrix<> d_inp(inp, s.offset), d_W(W, s.offset), d_x(x, s.offset), d_dout(dout, s.offset),
                d_dres(dres, s.offset);
            OffsetMatrix<> d_out(std::vector<float>((size_t)s.N * s.OC), s.offset),
                d_dinp(std::vector<float>((size_t)s.N * s.C), s.offset);
            OffsetMatrix<float> d_dW(std::vector<float>((size_t)s.OC * s.C), s.offset);
            d_out.buffer.poison();
            d_dinp.buffer.poison();
            matmul_forward_residual(d_out.ptr, d_inp.ptr, d_W.ptr, d_x.ptr, s_res, s.N, s.C, s.OC, STREAM);
            matmul_backward(d_dinp.ptr, d_dW.ptr, d_dout.ptr, d_inp.ptr, d_W.ptr, s.N, s.C, s.OC, STREAM, d_dres.ptr,
                            s_res);
            std::vector<double> out((size_t)s.N * s.OC), dinp((size_t)s.N * s.C);
            matmul_forward(out.data(), to_double(inp).data(), to_double(W).data(), s.N, s.C, s.OC);
            matmul_backward_input(dinp.data(), to_double(dout).data(), to_double(W).data(), s.N, s.C, s.OC, false);
            for (size_t i = 0; i < out.size(); i++) out[i] += (double)s_res * x[i];
            for (size_t i = 0; i < dinp.size(); i++) dinp[i] += (double)s_res * dres[i];
            CHECK(relative_error(d_out.download(), out) <= MATMUL_TOL);
            CHECK(relative_error(d_dinp.download(), dinp) <= MATMUL_TOL);
            CHECK(bitwise_equal(d_x.download(), x));  // C is read, not written
        }
    }
    matmul_teardown();
}

TEST_CASE("matmul backward refuses a dinp that overlaps inp or dout (dW reads them meanwhile)") {
    // dW runs on a second stream beside dinp: writing dinp over either input would race with it.
    matmul_setup();
    const int N = 64, C = 384, OC = 128;
    DeviceBuffer<floatX> inp((size_t)N * C), W((size_t)OC * C), dout((size_t)N * OC), dinp((size_t)N * C);
    DeviceBuffer<float> dW((size_t)OC * C);
    CHECK_THROWS_AS(matmul_backward(inp.ptr, dW.ptr, dout.ptr, inp.ptr, W.ptr, N, C, OC, STREAM), std::invalid_argument);
    CHECK_THROWS_AS(matmul_backward(inp.ptr + C, dW.ptr, dout.ptr, inp.ptr, W.ptr, N, C, OC, STREAM),
                    std::invalid_argument);  // one row apart
    CHECK_THROWS_AS(matmul_backward(dout.ptr, dW.ptr, dout.ptr, inp.ptr, W.ptr, N, C, OC, STREAM), std::invalid_argument);
    CHECK_NOTHROW(matmul_backward(dinp.ptr, dW.ptr, dout.ptr, inp.ptr, W.ptr, N, C, OC, STREAM));
    cudaCheck(cudaStreamSynchronize(STREAM));
    matmul_teardown();
}

TEST_CASE("matmul plans: one per key, reused with bitwise the same results, shapes interleaved") {
    // Each shape runs forward and backward three times in turn with the others. The shapes share
    // dimensions so that a key missing a field would hand one product another's plan: the first two
    // differ only in N; the third's forward (m 768, n 21, k 1000, A transposed) and the first's dinp
    // product (m 768, n 21, k 1000, none transposed) differ only in the transposition; the last is the
    // first at a 2-byte offset (another alignment). Every result is checked against the reference
    // (MATMUL_TOL, MATMUL_FP32_OUT_TOL: dW is rewritten from zero each time, beta = 1 over 0) and must
    // repeat bitwise; 3 plans per shape (forward, dinp, dW), made on the first round only.
    Rng rng(705);
    matmul_teardown();  // no plans left from elsewhere
    matmul_setup();
    const MatmulSize shapes[] = {{21, 768, 1000, 0}, {257, 768, 1000, 0}, {21, 1000, 768, 0}, {21, 768, 1000, 1}};
    struct Run {
        std::vector<float> inp, W, dout;
        std::vector<double> out_ref, dinp_ref, dW_ref;
        std::vector<std::vector<float>> first;  // out, dinp, dW of the first round
    };
    std::vector<Run> runs;
    for (const MatmulSize& s : shapes) {
        Run r{random_floatX((size_t)s.N * s.C, rng), random_floatX((size_t)s.OC * s.C, rng),
              random_floatX((size_t)s.N * s.OC, rng), {}, {}, {}, {}};
        r.out_ref.resize((size_t)s.N * s.OC);
        r.dinp_ref.resize((size_t)s.N * s.C);
        r.dW_ref.assign((size_t)s.OC * s.C, 0.0);
        matmul_forward(r.out_ref.data(), to_double(r.inp).data(), to_double(r.W).data(), s.N, s.C, s.OC);
        matmul_backward_input(r.dinp_ref.data(), to_double(r.dout).data(), to_double(r.W).data(), s.N, s.C, s.OC, false);
        matmul_backward_weight(r.dW_ref.data(), to_double(r.dout).data(), to_double(r.inp).data(), s.N, s.C, s.OC);
        runs.push_back(r);
    }
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < runs.size(); i++) {
            const MatmulSize& s = shapes[i];
            Run& r = runs[i];
            INFO("round " << round << " N=" << s.N << " C=" << s.C << " OC=" << s.OC << " offset=" << s.offset);
            OffsetMatrix<> d_inp(r.inp, s.offset), d_W(r.W, s.offset), d_dout(r.dout, s.offset);
            OffsetMatrix<> d_out(std::vector<float>((size_t)s.N * s.OC), s.offset);
            OffsetMatrix<> d_dinp(std::vector<float>((size_t)s.N * s.C), s.offset);
            OffsetMatrix<float> d_dW(std::vector<float>((size_t)s.OC * s.C, 0.0f), s.offset);
            d_out.buffer.poison();
            d_dinp.buffer.poison();
            matmul_forward(d_out.ptr, d_inp.ptr, d_W.ptr, s.N, s.C, s.OC, STREAM);
            matmul_backward(d_dinp.ptr, d_dW.ptr, d_dout.ptr, d_inp.ptr, d_W.ptr, s.N, s.C, s.OC, STREAM);
            const std::vector<std::vector<float>> got = {d_out.download(), d_dinp.download(), d_dW.download()};
            CHECK(relative_error(got[0], r.out_ref) <= MATMUL_TOL);
            CHECK(relative_error(got[1], r.dinp_ref) <= MATMUL_TOL);
            CHECK(relative_error(got[2], r.dW_ref) <= MATMUL_FP32_OUT_TOL);
            if (round == 0) r.first = got;
            else for (int t = 0; t < 3; t++) CHECK(bitwise_equal(got[t], r.first[t]));
        }
        CHECK(matmul_plan_count() == 3 * runs.size());
    }
    matmul_teardown();
    CHECK(matmul_plan_count() == 0);
}

TEST_CASE("matmul backward sums dW over 32 micro-batches in fp32") {
    // A training step's weight gradient: 32 products added into one fp32 dW through beta = 1. The sum
    // stays within MATMUL_FP32_OUT_TOL of the double reference; summing in bf16 (rounding after each
    // add) would miss it by over 100x (test/test_grad_accumulation.cpp's emulation: 0.7% L2, and 5% of
    // rms on the worst element).
    Rng rng(703);
    matmul_setup();
    const int N = 64, C = 256, OC = 384, MICRO_BATCHES = 32;
    DeviceBuffer<float> d_dW(std::vector<float>((size_t)OC * C, 0.0f));
    DeviceBuffer<floatX> d_dinp((size_t)N * C);
    std::vector<double> dW_ref((size_t)OC * C, 0.0);
    for (int micro = 0; micro < MICRO_BATCHES; micro++) {
        const std::vector<float> inp = random_floatX((size_t)N * C, rng), W = random_floatX((size_t)OC * C, rng);
        const std::vector<float> dout = random_floatX((size_t)N * OC, rng);
        DeviceBuffer<floatX> d_inp(inp), d_W(W), d_dout(dout);
        matmul_backward(d_dinp.ptr, d_dW.ptr, d_dout.ptr, d_inp.ptr, d_W.ptr, N, C, OC, STREAM);
        matmul_backward_weight(dW_ref.data(), to_double(dout).data(), to_double(inp).data(), N, C, OC);
    }
    CHECK(relative_error(d_dW.download(), dW_ref) <= MATMUL_FP32_OUT_TOL);
    matmul_teardown();
}
