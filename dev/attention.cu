// Causal flash attention, forward and backward (kernels/attention.cuh; CPU reference kernels/cpu/attention.h).
//   out = softmax(q k^T / sqrt(hd), causal) v per head;  lse = log sum_j exp(s_j) per row, for the backward
//
// Versions:
//   1  the simple version (dev/attention_v1.cuh), the trainer's until version 2: WMMA 16x16x16
//      products from shared memory, the scores through fp32 shared memory, the softmax one warp per
//      row; element-wise tile loads. Backward in two kernels without atomics (dk/dv per key tile, dq
//      per query tile): 7 tile products per tile pair instead of FlashAttention-2's 5.
//   2  production, kernels/attention.cuh: register-level tensor-core code, as FlashAttention-2 (Dao,
//      2023): mma.sync m16n8k16 (bf16 in, fp32 accumulate) with fragments loaded by ldmatrix from
//      shared memory whose rows are padded by 16 bytes (no bank conflicts at any head size), tiles
//      copied by cp.async (rows past T zero-filled) with the next tile's copy overlapping this tile's
//      math. Forward: 128 queries per block, 16 per warp, key blocks of 64, Q fragments read once per
//      key block; the scores, the online softmax (quad shuffles for the row max) and P never leave
//      registers (the score accumulators are reused as P's A operand); exp2 on the SFU with log2(e)
//      folded into the scale. Backward: the same two-kernel, atomic-free, deterministic split as
//      version 1 (7 products), each kernel register-level: dq first, with 16 queries per warp, making
//      delta = rowsum(dout * out) from its dO tile for both kernels; then dk/dv with 16 keys per warp
//      and dK, dV accumulated in registers. Causal: blocks past the diagonal are
//      never visited, warps skip key blocks wholly after their queries, only the diagonal blocks are
//      masked, and the heaviest blocks are launched first. Any T, head sizes 16, 32, ..., 128; the
//      fp32 build runs the same code on fp32 fragments (FMAs, no tensor cores).
//   3  as 2, but the backward is one kernel of 5 products: the dk/dv kernel also computes dQ += dS K
//      for its key block and adds it into an fp32 dq buffer with atomics (red.global.add.f32), then a
//      small kernel rounds dq to bf16. Not deterministic (the order of the fp32 adds varies run to
//      run); it measures what version 2's determinism costs. Forward as 2. bf16 only, head sizes 64
//      and 128.
//   4  as 2 with RoPE fused, the trainer's call: q and k given unturned with the rope table; each tile
//      is turned in shared memory as it lands (one more pass and barrier per tile), dQ and dK turned
//      back in registers before their stores. What it replaces is version 2 after the standalone rope
//      kernel and before it again in the backward: compare version 4's times with version 2's plus
//      twice dev/rope.cu's at the same shape (q and k: 2 NH heads).
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/attention.cu -o attention -lcublasLt -lcublas
//   ./attention 2
//
// Shapes: B * T = 16384 tokens at T = 256, 1024, 4096, causal, separate q, k, v buffers (row stride
// C); the 130M (C 768, 12 heads of 64), 250M (C 768, 16 heads of 48) and 1B (C 2048, 32 heads of
// 64) models, and C 2048 with 16 heads of 128. Version 3 skips head size 48. FLOPs as
// FlashAttention counts them: forward 4 T^2 hd, backward 10 T^2 hd per head (2 and 5 matmuls),
// halved for causal; the backward's time includes delta = rowsum(dout * out) (versions 1 and 3: a
// kernel of its own; 2 and 4: in the dq kernel). Checked on two heads, (b 0, h 0) and (b B-1, h
// NH-1), against the CPU reference in double, with the metrics and bounds of test/attention_checks.h;
// a shape that fails is not timed.
#include <cmath>
#include <vector>
#include "common.cuh"
#include "attention_v1.cuh"
#include "../kernels/attention.cuh"
#include "../kernels/cpu/rope.h"
#include "../test/attention_checks.h"
#include "../test/rope_checks.h"

static const char* const VERSIONS[] = {
    "simple (dev/attention_v1.cuh, WMMA from shared memory)",
    "production (kernels/attention.cuh, mma.sync register-level, deterministic 2-kernel backward)",
    "as 2, backward in one kernel with fp32 atomics for dq (5 products, not deterministic)",
    "as 2 with RoPE fused: q and k turned as their tiles land, dQ and dK turned back (the trainer's call)",
};
static const double ROPE_THETA = 10000.0;

#ifndef ENABLE_FP32
namespace atomic_dq {  // version 3's backward, on the building blocks of kernels/attention.cuh

using namespace attention_detail;

// Backward, dk and dv as version 2's dk/dv kernel, and dq: per query block, dQ (BM x HD) += dS (BM x BN)
// K (BN x HD), added into dq_accum (fp32) by atomics. Grid (B * NH, ceil(T / BWD_BN)); 4 warps.
template <int HD>
constexpr int smem_bytes() {  // version 2's dk/dv tiles, then the block's dS (BM x (BN + 8) bf16)
    return dkdv_smem_bytes<HD>() + BWD_BM<HD> * (BWD_BN + 8) * 2;
}

template <int HD>
__global__ void __launch_bounds__(BWD_THREADS) dkdv_dq_kernel(floatX* dk, floatX* dv, float* dq_accum, const floatX* dout,
                                                              const float* lse, const float* delta, const floatX* q,
                                                              const floatX* k, const floatX* v, long stride,
                                                              long dstride, int T, int C, int NH) {
    constexpr int BN = BWD_BN, BM = BWD_BM<HD>, TILE_Q = BM * PITCH<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Ks = smem;
    unsigned char* Vs = Ks + BN * PITCH<HD>;
    unsigned char* Qs = Vs + BN * PITCH<HD>;    // [2][BM rows]
    unsigned char* dOs = Qs + 2 * TILE_Q;       // [2][BM rows]
    float* lse_s = (float*)(dOs + 2 * TILE_Q);  // [2][BM]
    float* delta_s = lse_s + 2 * BM;            // [2][BM]
    __nv_bfloat16* dS_s = (__nv_bfloat16*)(delta_s + 2 * BM);  // [BM][BN + 8], row-major dS
    constexpr int DS_LD = BN + 8;  // padded: rows 16 bytes apart mod 128, conflict-free ldmatrix

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int k0 = blockIdx.y * BN;
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    const float scale = rsqrtf((float)HD), scale_log2 = scale * LOG2E;

    load_tile<BN, HD, BWD_THREADS>(Ks, k + head, stride, k0, T);
    load_tile<BN, HD, BWD_THREADS>(Vs, v + head, stride, k0, T);
    auto load_query_block = [&](int q0, int buf) {
        load_tile<BM, HD, BWD_THREADS>(Qs + buf * TILE_Q, q + head, stride, q0, T);
        load_tile<BM, HD, BWD_THREADS>(dOs + buf * TILE_Q, dout + out_head, C, q0, T);
        for (int i = threadIdx.x; i < BM; i += BWD_THREADS) {
            lse_s[buf * BM + i] = q0 + i < T ? lse[stats + q0 + i] * LOG2E : 0.0f;
            delta_s[buf * BM + i] = q0 + i < T ? delta[stats + q0 + i] : 0.0f;
        }
    };
    load_query_block(k0, 0);
    cp_async_commit();

    const int kw = k0 + 16 * warp;
    float dk_acc[HD / 8][4] = {}, dv_acc[HD / 8][4] = {};
    for (int q0 = k0, step = 0; q0 < T; q0 += BM, step++) {
        const int buf = step & 1;
        if (q0 + BM < T) {
            load_query_block(q0 + BM, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned char* Qt = Qs + buf * TILE_Q;
        const unsigned char* dOt = dOs + buf * TILE_Q;
        const float* lse_t = lse_s + buf * BM;
        const float* delta_t = delta_s + buf * BM;
        const bool active = q0 + BM - 1 >= kw && kw < T;
        float st[BM / 8][4] = {}, dpt[BM / 8][4] = {};
        if (active) {
            warp_product_rows<HD, BM>(st, Ks, 16 * warp, Qt);   // S^T = K Q^T
            warp_product_rows<HD, BM>(dpt, Vs, 16 * warp, dOt);  // dP^T = V dO^T
            const bool diagonal = q0 < kw + 15;
#pragma unroll
            for (int nb = 0; nb < BM / 8; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = g + 8 * (e >> 1), j = 8 * nb + 2 * t + (e & 1);
                    float p = fast_exp2(fmaf(st[nb][e], scale_log2, -lse_t[j]));
                    if (diagonal && q0 + j < kw + i) p = 0.0f;
                    st[nb][e] = p;
                    dpt[nb][e] = p * (dpt[nb][e] - delta_t[j]) * scale;  // dS^T
                }
            warp_product_cols<HD, BM>(dv_acc, st, dOt);  // dV += P^T dO
            warp_product_cols<HD, BM>(dk_acc, dpt, Qt);  // dK += dS^T Q
        }
        // dQ (BM x HD) += dS (BM x BN) K (BN x HD). The warps hold dS^T in pieces, so dS goes through
        // shared memory: warp w writes dS^T rows (its keys) as columns 16w .. 16w + 15 of dS (zeros
        // when inactive). Then warp w computes dQ rows 0..BM-1, columns w HD/4 .. (w+1) HD/4 - 1 and
        // adds those of queries before T into dq_accum.
#pragma unroll
        for (int nb = 0; nb < BM / 8; nb++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = g + 8 * (e >> 1), j = 8 * nb + 2 * t + (e & 1);
                dS_s[j * DS_LD + 16 * warp + i] = __float2bfloat16(dpt[nb][e]);
            }
        __syncthreads();
        constexpr int NCOL = HD / 4;  // dQ columns per warp
        float dq_part[BM / 16][NCOL / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
            for (int mt = 0; mt < BM / 16; mt++) {
                FragA sa;
                ldmatrix_x4(sa.x, dS_s + (16 * mt + lane % 16) * DS_LD + 16 * kk + (lane / 16) * 8);
#pragma unroll
                for (int dp = 0; dp < NCOL / 16; dp++) {
                    FragB kf;
                    load_b_cols<HD>(kf, Ks, 16 * kk, warp * (NCOL / 16) + dp);
                    mma(dq_part[mt][2 * dp], sa, kf, 0);
                    mma(dq_part[mt][2 * dp + 1], sa, kf, 1);
                }
            }
        }
        float* dq_block = dq_accum + ((long)b * T + q0) * C + h * HD + warp * NCOL;
#pragma unroll
        for (int mt = 0; mt < BM / 16; mt++)
#pragma unroll
            for (int nd = 0; nd < NCOL / 8; nd++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = 16 * mt + g + 8 * (e >> 1), col = 8 * nd + 2 * t + (e & 1);
                    if (q0 + row < T) atomicAdd(dq_block + (long)row * C + col, dq_part[mt][nd][e]);
                }
        __syncthreads();  // before the next iteration's copy overwrites this buffer (and dS_s)
    }
    if (kw >= T) return;
    const float one[2] = {1.0f, 1.0f};
    const long dst = ((long)b * T + kw) * dstride + h * HD;
    store_rows<HD>(Ks, 16 * warp, dk_acc, one, dk + dst, dstride, T - kw);
    store_rows<HD>(Vs, 16 * warp, dv_acc, one, dv + dst, dstride, T - kw);
}

// dq (bf16, rows of dstride) = dq_accum (fp32, rows of C), 4 values per thread.
__global__ void dq_convert_kernel(floatX* dq, const float* dq_accum, long N, int C, long dstride) {
    const long idx = ((long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (idx >= N * C) return;
    const long n = idx / C;
    const int c = (int)(idx % C);
    const float4 a = *reinterpret_cast<const float4*>(dq_accum + idx);
    __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(dq + n * dstride + c);
    d[0] = __floats2bfloat162_rn(a.x, a.y);
    d[1] = __floats2bfloat162_rn(a.z, a.w);
}

// dq_accum: (B, T, C) fp32 scratch.
template <int HD>
void backward(floatX* dq, floatX* dk, floatX* dv, float* delta, float* dq_accum, const floatX* dout, const floatX* out,
              const float* lse, const floatX* q, const floatX* k, const floatX* v, int B, int T, int C, int NH) {
    using attention_v1::attention_delta_kernel, attention_v1::DELTA_THREADS;
    attention_delta_kernel<HD><<<(unsigned)ceil_div((long)B * NH * T, DELTA_THREADS / 32), DELTA_THREADS>>>(delta, out,
                                                                                                            dout, B, T, C, NH);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemsetAsync(dq_accum, 0, (size_t)B * T * C * sizeof(float)));
    allow_smem<dkdv_dq_kernel<HD>>(smem_bytes<HD>());
    dkdv_dq_kernel<HD><<<dim3(B * NH, (unsigned)ceil_div(T, BWD_BN)), BWD_THREADS, smem_bytes<HD>()>>>(
        dk, dv, dq_accum, dout, lse, delta, q, k, v, C, C, T, C, NH);
    cudaCheck(cudaGetLastError());
    dq_convert_kernel<<<(unsigned)ceil_div((long)B * T * C / 4, 256), 256>>>(dq, dq_accum, (long)B * T, C, C);
    cudaCheck(cudaGetLastError());
}

}  // namespace atomic_dq
#endif  // ENABLE_FP32

// ----------------------------------------------------------------------------

// rope: the table, for version 4 (nullptr for the others).
static void run_forward(int version, floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v,
                        const float2* rope, int B, int T, int C, int NH) {
    if (version == 1) {
        attention_detail::with_head_dim(C, NH, [&](auto hd) {
            attention_v1::forward<decltype(hd)::value>(out, lse, q, k, v, C, B, T, C, NH, 0);
        });
        return;
    }
    attention_forward(out, lse, q, k, v, C, B, T, C, NH, rope, 0);  // versions 2, 3 and 4
}

static void run_backward(int version, floatX* dq, floatX* dk, floatX* dv, float* delta, float* dq_accum, const floatX* dout,
                         const floatX* out, const float* lse, const floatX* q, const floatX* k, const floatX* v,
                         const float2* rope, int B, int T, int C, int NH) {
    if (version == 1) {
        attention_detail::with_head_dim(C, NH, [&](auto hd) {
            attention_v1::backward<decltype(hd)::value>(dq, dk, dv, delta, dout, out, lse, q, k, v, C, C, B, T, C, NH, 0);
        });
    } else if (version == 2 || version == 4) {
        attention_backward(dq, dk, dv, delta, dout, out, lse, q, k, v, C, C, B, T, C, NH, rope, 0);
    } else {
#ifndef ENABLE_FP32
        if (C / NH == 64) atomic_dq::backward<64>(dq, dk, dv, delta, dq_accum, dout, out, lse, q, k, v, B, T, C, NH);
        else if (C / NH == 128) atomic_dq::backward<128>(dq, dk, dv, delta, dq_accum, dout, out, lse, q, k, v, B, T, C, NH);
        else unsupported("attention v3: head dimension must be 64 or 128");
#endif
    }
}

// Heads (b, h) of a (B, T, C) tensor gathered into a (heads, T, hd) one.
template <typename Out = double>
static std::vector<Out> gather_heads(const std::vector<float>& x, const std::vector<std::pair<int, int>>& heads, int T,
                                     int C, int hd) {
    std::vector<Out> out;
    out.reserve(heads.size() * T * hd);
    for (auto [b, h] : heads)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < hd; i++) out.push_back(x[((long)b * T + t) * C + h * hd + i]);
    return out;
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 4, VERSIONS);
    if (version == 3) require_bf16(version);
    measure_ceilings();
    // Small shapes first, validated only (tile edges: T of one and two forward blocks, partial tiles;
    // head sizes 64, 128, 48); then the models' shapes, validated and timed.
    struct Shape { const char* name; int B, T, C, NH; bool timed; };
    std::vector<Shape> shapes = {{"small", 2, 128, 128, 2, false}, {"small", 1, 256, 256, 2, false},
                                 {"small", 2, 77, 96, 2, false}, {"small", 1, 100, 128, 2, false}};
    if (!small_shapes_only()) {
        struct Model { const char* name; int C, NH; };
        const Model models[] = {{"130m", 768, 12}, {"250m", 768, 16}, {"1b", 2048, 32}, {"hd128", 2048, 16}};
        for (const int T : {256, 1024, 4096})
            for (const Model& m : models) shapes.push_back({m.name, TOKENS / T, T, m.C, m.NH, true});
    }
    {
        for (const Shape& m : shapes) {
            const int B = m.B, T = m.T, C = m.C, NH = m.NH, hd = C / NH;
            const long N = (long)B * T;
            const std::string shape = std::string(m.name) + ":B" + std::to_string(B) + ",T" + std::to_string(T) + ",NH" +
                                      std::to_string(NH) + ",hd" + std::to_string(hd);
            printf("%s: B %d, T %d, NH %d, hd %d, causal\n", m.name, B, T, NH, hd);
            if (version == 3 && hd != 64 && hd != 128) {  // version 3's limit
                printf("  version %d: unsupported head dimension %d, skipped\n", version, hd);
                continue;
            }
            DeviceBuffer<floatX> q(N * C), k(N * C), v(N * C), out(N * C), dout(N * C), dq(N * C), dk(N * C), dv(N * C);
            DeviceBuffer<float> lse((size_t)B * NH * T), delta((size_t)B * NH * T), dq_accum(version == 3 ? N * C : 0);
            q.fill_normal(71);
            k.fill_normal(72);
            v.fill_normal(73);
            dout.fill_normal(74);
            // Version 4: the table; the reference's q and k are the inputs turned as the kernels turn them.
            const bool rope = version == 4;
            const std::vector<float2> table_host = rope ? rope_table_reference(T, hd, ROPE_THETA) : std::vector<float2>();
            DeviceBuffer<float2> table(table_host.size());
            cudaCheck(cudaMemcpy(table.ptr, table_host.data(), table_host.size() * sizeof(float2), cudaMemcpyHostToDevice));
            const float2* rope_table = rope ? table.ptr : nullptr;
            std::vector<float> q_in = q.download(), k_in = k.download();
            if (rope) {
                rope_turn_reference(q_in, table_host, N, T, NH, hd, C);
                rope_turn_reference(k_in, table_host, N, T, NH, hd, C);
            }

            // Reference on two heads, gathered as B = 2 sequences of one head (hd columns).
            const std::vector<std::pair<int, int>> heads = {{0, 0}, {B - 1, NH - 1}};
            const int H = (int)heads.size();
            const std::vector<double> q_h = gather_heads(q_in, heads, T, C, hd), k_h = gather_heads(k_in, heads, T, C, hd),
                                      v_h = gather_heads(v.download(), heads, T, C, hd),
                                      dout_h = gather_heads(dout.download(), heads, T, C, hd);
            std::vector<double> out_ref((size_t)H * T * hd), probs((size_t)H * T * T);
            attention_forward(out_ref.data(), probs.data(), q_h.data(), k_h.data(), v_h.data(), H, T, hd, 1);
            const std::vector<double> lse_ref = attention_lse_reference(q_h, k_h, H, T, hd, 1);
            std::vector<double> dq_ref((size_t)H * T * hd, 0.0), dk_ref((size_t)H * T * hd, 0.0),
                dv_ref((size_t)H * T * hd, 0.0);
            attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout_h.data(), probs.data(), q_h.data(),
                               k_h.data(), v_h.data(), H, T, hd, 1);
            AttentionScales scales = attention_error_scales(probs, q_h, k_h, v_h, out_ref, dout_h, dq_ref, dk_ref, dv_ref,
                                                            H, T, hd, 1);
            if (rope) {  // the gradients with respect to the unturned q and k
                rope_backward(dq_ref.data(), dq_ref.data(), H, T, 1, hd, ROPE_THETA);
                rope_backward(dk_ref.data(), dk_ref.data(), H, T, 1, hd, ROPE_THETA);
                rope_combine_scales(scales.dq, (long)H * T, 1, hd);
                rope_combine_scales(scales.dk, (long)H * T, 1, hd);
            }
            auto gpu_lse = [&] {
                std::vector<float> r;
                for (auto [b, h] : heads) {
                    const std::vector<float> row = lse.download(((long)b * NH + h) * T, T);
                    r.insert(r.end(), row.begin(), row.end());
                }
                return r;
            };
            // The checks and bounds of test/attention_checks.h, calibrated on the CPU emulation of
            // versions 1-3 (docs/tests.md, "GPU tolerances").
            const AttentionBounds bounds = FLOATX_IS_FP32 ? ATTENTION_BOUNDS_FP32 : ATTENTION_BOUNDS_BF16;
            auto check = [&](Validation& checks, const char* what, const std::vector<float>& got,
                             const std::vector<double>& ref, const std::vector<double>& scale, bool gradient) {
                const AttentionError e = attention_error(got, ref, scale);
                const std::string l2 = std::string(what) + " L2", element = std::string(what) + " elem";
                checks.record(l2.c_str(), got.size(), "L2-relative error", e.l2,
                              gradient ? bounds.grad_l2 : bounds.out_l2);
                checks.record(element.c_str(), got.size(), "per-element error", e.element,
                              gradient ? bounds.grad_element : bounds.out_element);
            };

            auto forward = [&] { run_forward(version, out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, rope_table, B, T, C, NH); };
            out.poison();
            lse.poison();
            forward();
            Validation forward_checks;
            check(forward_checks, "out", gather_heads<float>(out.download(), heads, T, C, hd), out_ref, scales.out,
                  false);
            forward_checks.record("lse", (size_t)H * T, "max abs error", lse_error(gpu_lse(), lse_ref), bounds.lse);
            if (forward_checks.passed && m.timed)
                report_flops("attention_forward", shape, version, 2.0 * T * T * hd * B * NH, benchmark_kernel(forward));

            auto backward = [&] {
                run_backward(version, dq.ptr, dk.ptr, dv.ptr, delta.ptr, dq_accum.ptr, dout.ptr, out.ptr, lse.ptr, q.ptr,
                             k.ptr, v.ptr, rope_table, B, T, C, NH);
            };
            dq.poison();
            dk.poison();
            dv.poison();
            forward();
            backward();
            Validation backward_checks;
            check(backward_checks, "dq", gather_heads<float>(dq.download(), heads, T, C, hd), dq_ref, scales.dq, true);
            check(backward_checks, "dk", gather_heads<float>(dk.download(), heads, T, C, hd), dk_ref, scales.dk, true);
            check(backward_checks, "dv", gather_heads<float>(dv.download(), heads, T, C, hd), dv_ref, scales.dv, true);
            if (backward_checks.passed && m.timed)
                report_flops("attention_backward", shape, version, 5.0 * T * T * hd * B * NH, benchmark_kernel(backward));
        }
    }
    return validation_exit_status();
}
