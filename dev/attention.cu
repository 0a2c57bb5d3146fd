// Causal flash attention, forward and backward (kernels/attention.cuh; CPU reference kernels/cpu/attention.h).
//   out = softmax(q k^T / sqrt(hd), causal) v per head;  lse = log sum_j exp(s_j) per row, for the backward
//
// Versions:
//   1  production, kernels/attention.cuh: WMMA 16x16x16 products from shared memory, the scores
//      through fp32 shared memory, the softmax one warp per row; element-wise tile loads. Backward in
//      two kernels without atomics (dk/dv per key tile, dq per query tile): 7 tile products per tile
//      pair instead of FlashAttention-2's 5.
//   2  register-level tensor-core code, as FlashAttention-2 (Dao, 2023): mma.sync m16n8k16 (bf16 in,
//      fp32 accumulate) with fragments loaded by ldmatrix from XOR-swizzled shared memory (no bank
//      conflicts), tiles copied by cp.async with the next tile's copy overlapping this tile's math.
//      Forward: 128 queries per block, 16 per warp, Q fragments held in registers for the whole key
//      loop; the scores, the online softmax (quad shuffles for the row max) and P never leave
//      registers (the score accumulators are reused as P's A operand); exp2 on the SFU with log2(e)
//      folded into the scale. Backward: the same two-kernel, atomic-free, deterministic split as
//      version 1 (7 products), each kernel register-level: dk/dv with 16 keys per warp and dK, dV
//      accumulated in registers; dq with 16 queries per warp, Q and dO fragments in registers.
//      Causal: blocks past the diagonal are never visited, warps skip key blocks wholly after their
//      queries, only the diagonal blocks are masked, and the heaviest blocks are launched first.
//      bf16 only; T must be a multiple of 128.
//   3  as 2, but the backward is one kernel of 5 products: the dk/dv kernel also computes dQ += dS K
//      for its key block and adds it into an fp32 dq buffer with atomics (red.global.add.f32), then a
//      small kernel rounds dq to bf16. Not deterministic (the order of the fp32 adds varies run to
//      run); it measures what version 2's determinism costs. Forward as 2.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/attention.cu -o attention -lcublasLt -lcublas
//   ./attention 2
//
// Shapes: B * T = 16384 tokens at T = 256, 1024, 4096, causal, separate q, k, v buffers (row stride
// C); the 130M (C 768, 12 heads of 64), 250M (C 768, 16 heads of 48) and 1B (C 2048, 32 heads of
// 64) models, and C 2048 with 16 heads of 128. Versions 2 and 3 skip head size 48. FLOPs as
// FlashAttention counts them: forward 4 T^2 hd, backward 10 T^2 hd per head (2 and 5 matmuls),
// halved for causal; the backward's time includes its delta = rowsum(dout * out) kernel. Checked on
// two heads, (b 0, h 0) and (b B-1, h NH-1), against the CPU reference in double, with the metrics
// and bounds of test/attention_checks.h; a shape that fails is not timed.
#include <cmath>
#include <vector>
#include "common.cuh"
#include "../kernels/attention.cuh"
#include "../test/attention_checks.h"

static const char* const VERSIONS[] = {
    "production (kernels/attention.cuh, WMMA from shared memory)",
    "mma.sync register-level flash attention, deterministic 2-kernel backward",
    "as 2, backward in one kernel with fp32 atomics for dq (5 products, not deterministic)",
};

#ifndef ENABLE_FP32
namespace mma_attention {

constexpr float LN2 = 0.6931471805599453f;

// ----------------------------------------------------------------------------
// PTX wrappers (sm_80+)

__device__ inline unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ inline void cp_async16(void* smem, const void* gmem) {
#ifdef MIXLN_EMU
    emu::cp_async(smem_addr(smem), gmem, 16, 16, true);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
#endif
}
__device__ inline void cp_async_commit() {
#ifdef MIXLN_EMU
    emu::cp_async_commit_group();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ inline void cp_async_wait() {
#ifdef MIXLN_EMU
    emu::cp_async_wait_group(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i, and lane l receives in
// r[i] matrix i's elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1), or with .trans (2(l%4), l/4) and (2(l%4)+1, l/4).
__device__ inline void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
#ifdef MIXLN_EMU
    emu::ldmatrix_m8n8(r, 4, false, smem_addr(smem));
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#endif
}
__device__ inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
#ifdef MIXLN_EMU
    emu::ldmatrix_m8n8(r, 4, true, smem_addr(smem));
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#endif
}

// d (16x8 fp32) += a (16x16 bf16, row) b (16x8 bf16, col). With g = lane / 4, t = lane % 4:
//   a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..), a[2] = A(g, 2t+8..), a[3] = A(g+8, 2t+8..)
//   b0 = B(2t..2t+1, g), b1 = B(2t+8..2t+9, g);  d[0..1] = D(g, 2t..2t+1), d[2..3] = D(g+8, 2t..2t+1)
__device__ inline void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef MIXLN_EMU
    const unsigned b[2] = {b0, b1};
    emu::mma_m16n8k16_bf16(d, a, b, d);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ inline unsigned pack_bf16(float lo, float hi) {  // lo in the low half: the lower column index
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}

// Score accumulators of two adjacent 8-column blocks (nb = 2kk, 2kk + 1) are the A operand of the
// next product for k-slice kk: the C layout of m16n8 matches the A layout of m16n8k16 (FlashAttention-2).
__device__ inline void c_to_a(unsigned (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// ----------------------------------------------------------------------------
// Shared-memory tiles of R rows x HD bf16 columns, rows of HD * 2 bytes in 16-byte chunks; chunk c of
// row r lives at chunk position c ^ (r % 8). The 8 rows an ldmatrix matrix reads at one logical chunk
// then sit in 8 different 16-byte bank groups: no bank conflicts, for reads and for the cp.async fills.
// (HD >= 64, so a row has at least 8 chunks.)

template <int HD>
__device__ inline int swz(int row, int chunk) {
    return row * (HD * 2) + ((chunk ^ (row & 7)) << 4);
}

// Rows row0 .. row0 + R - 1 of a (T, stride) slice, by cp.async (the caller commits).
template <int R, int HD, int THREADS>
__device__ inline void load_tile(unsigned char* tile, const floatX* src, long stride, int row0) {
    constexpr int CH = HD / 8;
#pragma unroll
    for (int i = threadIdx.x; i < R * CH; i += THREADS) {
        const int r = i / CH, c = i % CH;
        cp_async16(tile + swz<HD>(r, c), src + (long)(row0 + r) * stride + c * 8);
    }
}

// A fragment (16 rows x 16 columns at column slice kc) of rows row0 .. row0 + 15 of a tile.
template <int HD>
__device__ inline void load_a(unsigned (&a)[4], const unsigned char* tile, int row0, int kc) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(a, tile + swz<HD>(row0 + lane % 16, 2 * kc + lane / 16));
}
// B fragments of two 8-column blocks where B(k, n) = tile(row0 + n, 16 kc + k) (the tile holds B^T, e.g.
// K for S = Q K^T): b[0], b[1] for n in rows row0 .. +7, b[2], b[3] for rows row0 + 8 .. +15.
template <int HD>
__device__ inline void load_b_rows(unsigned (&b)[4], const unsigned char* tile, int row0, int kc) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(b, tile + swz<HD>(row0 + lane % 8 + (lane / 16) * 8, 2 * kc + (lane / 8) % 2));
}
// B fragments of two 8-column blocks where B(k, n) = tile(row0 + k, 16 dp + n) (the tile holds B, e.g.
// V for O = P V): b[0], b[1] for columns 16 dp .. +7, b[2], b[3] for 16 dp + 8 .. +15.
template <int HD>
__device__ inline void load_b_cols(unsigned (&b)[4], const unsigned char* tile, int row0, int dp) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4_trans(b, tile + swz<HD>(row0 + lane % 8 + ((lane / 8) % 2) * 8, 2 * dp + lane / 16));
}

// Writes a warp's 16 x HD fp32 accumulators (rows g and g + 8 scaled by scale[0] and scale[1]) as bf16
// to dst (row r at dst + r * dst_stride), through the warp's own 16 rows row0.. of a shared tile, so
// that global stores are 16-byte vectors covering whole rows.
template <int HD>
__device__ inline void store_rows(unsigned char* tile, int row0, const float (&acc)[HD / 8][4], const float (&scale)[2],
                                  floatX* dst, long dst_stride) {
    constexpr int CH = HD / 8;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nd = 0; nd < HD / 8; nd++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const int row = row0 + g + 8 * hr;
            *reinterpret_cast<__nv_bfloat162*>(tile + swz<HD>(row, nd) + 4 * t) =
                __floats2bfloat162_rn(acc[nd][2 * hr] * scale[hr], acc[nd][2 * hr + 1] * scale[hr]);
        }
    __syncwarp();
    for (int i = lane; i < 16 * CH; i += 32) {
        const int r = i / CH, c = i % CH;
        *reinterpret_cast<int4*>(dst + (long)r * dst_stride + c * 8) =
            *reinterpret_cast<const int4*>(tile + swz<HD>(row0 + r, c));
    }
}

// ----------------------------------------------------------------------------
// Forward. Grid (B * NH, T / FWD_BM); block 8 warps; warp w owns queries q0 + 16w .. q0 + 16w + 15.

constexpr int FWD_BM = 128, FWD_BN = 64, FWD_THREADS = 256;

template <int HD>
constexpr int forward_smem_bytes() { return (FWD_BM + 4 * FWD_BN) * HD * 2; }  // Q, and K, V double-buffered

template <int HD>
__global__ void __launch_bounds__(FWD_THREADS, HD == 64 ? 2 : 1) forward_kernel(floatX* out, float* lse, const floatX* q, const floatX* k,
                                                              const floatX* v, long stride, int T, int C, int NH) {
    constexpr int BM = FWD_BM, BN = FWD_BN, TILE_Q = BM * HD * 2, TILE_KV = BN * HD * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Qs = smem;
    unsigned char* Ks = Qs + TILE_Q;    // [2][BN][HD]
    unsigned char* Vs = Ks + 2 * TILE_KV;  // [2][BN][HD]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows of keys first
    const long head = (long)b * T * stride + h * HD;
    const float scale_log2 = rsqrtf((float)HD) * LOG2E;

    load_tile<BM, HD, FWD_THREADS>(Qs, q + head, stride, q0);
    load_tile<BN, HD, FWD_THREADS>(Ks, k + head, stride, 0);
    load_tile<BN, HD, FWD_THREADS>(Vs, v + head, stride, 0);
    cp_async_commit();

    const int num_kb = (q0 + BM) / BN;  // causal: keys < q0 + BM
    const int qw = q0 + 16 * warp;      // the warp's first query
    unsigned qf[HD / 16][4];
    float o[HD / 8][4] = {};
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // rows g, g + 8; m in log2 units

    for (int kb = 0; kb < num_kb; kb++) {
        if (kb + 1 < num_kb) {
            load_tile<BN, HD, FWD_THREADS>(Ks + ((kb + 1) & 1) * TILE_KV, k + head, stride, (kb + 1) * BN);
            load_tile<BN, HD, FWD_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (kb == 0)
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++) load_a<HD>(qf[kc], Qs, 16 * warp, kc);
        const unsigned char* Kt = Ks + (kb & 1) * TILE_KV;
        const unsigned char* Vt = Vs + (kb & 1) * TILE_KV;
        const int k0 = kb * BN;
        if (k0 <= qw + 15) {  // else every key of the block is after every query of the warp
            float s[BN / 8][4] = {};
#pragma unroll
            for (int np = 0; np < BN / 16; np++)
#pragma unroll
                for (int kc = 0; kc < HD / 16; kc++) {
                    unsigned kf[4];
                    load_b_rows<HD>(kf, Kt, 16 * np, kc);
                    mma(s[2 * np], qf[kc], kf[0], kf[1]);
                    mma(s[2 * np + 1], qf[kc], kf[2], kf[3]);
                }
            if (k0 + BN - 1 > qw) {  // the diagonal: mask keys after the query
#pragma unroll
                for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (k0 + 8 * nb + 2 * t + (e & 1) > qw + g + 8 * (e >> 1)) s[nb][e] = -INFINITY;
            }
            // Online softmax (FlashAttention-2): per row, the running max m and sum l absorb this block,
            // and the output so far is rescaled by 2^(m_old - m_new). The 4 lanes of a quad hold a row.
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                float mx = -INFINITY;
#pragma unroll
                for (int nb = 0; nb < BN / 8; nb++) mx = fmaxf(mx, fmaxf(s[nb][2 * hr], s[nb][2 * hr + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_WARP_MASK, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_WARP_MASK, mx, 2));
                const float m_new = fmaxf(m_run[hr], mx * scale_log2);
                const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
                const float correction = fast_exp2(m_run[hr] - m_use);
                m_run[hr] = m_new;
                float sum = 0.0f;
#pragma unroll
                for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
                    for (int e = 2 * hr; e < 2 * hr + 2; e++) {
                        s[nb][e] = fast_exp2(fmaf(s[nb][e], scale_log2, -m_use));
                        sum += s[nb][e];
                    }
                l_run[hr] = l_run[hr] * correction + sum;  // this lane's share; the quad adds up at the end
#pragma unroll
                for (int nd = 0; nd < HD / 8; nd++) {
                    o[nd][2 * hr] *= correction;
                    o[nd][2 * hr + 1] *= correction;
                }
            }
            // O += P V
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                unsigned pa[4];
                c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    unsigned vf[4];
                    load_b_cols<HD>(vf, Vt, 16 * kk, dp);
                    mma(o[2 * dp], pa, vf[0], vf[1]);
                    mma(o[2 * dp + 1], pa, vf[2], vf[3]);
                }
            }
        }
        __syncthreads();  // before the next iteration's copy overwrites this buffer
    }

    float inv_l[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float l = l_run[hr];
        l += __shfl_xor_sync(FULL_WARP_MASK, l, 1);
        l += __shfl_xor_sync(FULL_WARP_MASK, l, 2);
        inv_l[hr] = 1.0f / l;
        // lse = ln(sum_j e^{s_j}) = ln(2^m l) with m in log2 units
        if (t == 0) lse[((long)b * NH + h) * T + qw + g + 8 * hr] = m_run[hr] * LN2 + logf(l);
    }
    store_rows<HD>(Qs, 16 * warp, o, inv_l, out + ((long)b * T + qw) * C + h * HD, C);  // the warp's own Q rows
}

// ----------------------------------------------------------------------------
// Backward, dk and dv (and dq in version 3). Grid (B * NH, T / BWD_BN); block 4 warps; warp w owns keys
// k0 + 16w .. +15, and the block walks the query blocks of BWD_BM rows that can see its keys. Per query
// block, with S^T = K Q^T and the row statistics of the queries (columns here):
//   P^T = exp(S^T / sqrt(hd) - lse),  dP^T = V dO^T,  dS^T = P^T * (dP^T - delta) / sqrt(hd)
//   dV += P^T dO,  dK += dS^T Q   (and in version 3, dQ += dS K by atomics)

constexpr int BWD_BN = 64, BWD_THREADS = 128;
template <int HD>
__host__ __device__ constexpr int bwd_bm() { return HD == 128 ? 32 : 64; }  // query rows per step: registers at hd 128

template <int HD>
constexpr int dkdv_smem_bytes(bool with_dq) {
    // K, V; Q, dO double-buffered; lse, delta double-buffered; version 3: the block's dS (BM x (BN + 8) bf16)
    return (2 * BWD_BN + 4 * bwd_bm<HD>()) * HD * 2 + 4 * bwd_bm<HD>() * 4 + (with_dq ? bwd_bm<HD>() * (BWD_BN + 8) * 2 : 0);
}

template <int HD, bool WITH_DQ>
__global__ void __launch_bounds__(BWD_THREADS) dkdv_kernel(floatX* dk, floatX* dv, float* dq_accum, const floatX* dout,
                                                           const float* lse, const float* delta, const floatX* q,
                                                           const floatX* k, const floatX* v, long stride, long dstride,
                                                           int T, int C, int NH) {
    constexpr int BN = BWD_BN, BM = bwd_bm<HD>(), TILE_KV = BN * HD * 2, TILE_Q = BM * HD * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Ks = smem;
    unsigned char* Vs = Ks + TILE_KV;
    unsigned char* Qs = Vs + TILE_KV;      // [2][BM][HD]
    unsigned char* dOs = Qs + 2 * TILE_Q;  // [2][BM][HD]
    float* lse_s = (float*)(dOs + 2 * TILE_Q);  // [2][BM]
    float* delta_s = lse_s + 2 * BM;            // [2][BM]
    __nv_bfloat16* dS_s = (__nv_bfloat16*)(delta_s + 2 * BM);  // version 3: [BM][BN + 8], row-major dS
    constexpr int DS_LD = BN + 8;  // padded: rows 16 bytes apart mod 128, conflict-free ldmatrix

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int k0 = blockIdx.y * BN;  // key block 0 first: it is seen by every query
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    const float scale = rsqrtf((float)HD), scale_log2 = scale * LOG2E;

    load_tile<BN, HD, BWD_THREADS>(Ks, k + head, stride, k0);
    load_tile<BN, HD, BWD_THREADS>(Vs, v + head, stride, k0);
    auto load_query_block = [&](int q0, int buf) {
        load_tile<BM, HD, BWD_THREADS>(Qs + buf * TILE_Q, q + head, stride, q0);
        load_tile<BM, HD, BWD_THREADS>(dOs + buf * TILE_Q, dout + out_head, C, q0);
        for (int i = threadIdx.x; i < BM / 4; i += BWD_THREADS) {
            cp_async16(lse_s + buf * BM + 4 * i, lse + stats + q0 + 4 * i);
            cp_async16(delta_s + buf * BM + 4 * i, delta + stats + q0 + 4 * i);
        }
    };
    load_query_block(k0, 0);  // query blocks before k0 see none of these keys
    cp_async_commit();

    const int kw = k0 + 16 * warp;  // the warp's first key
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
        const bool active = q0 + BM - 1 >= kw;  // some query of the block sees some key of the warp
        float st[BM / 8][4] = {}, dpt[BM / 8][4] = {};
        if (active) {
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++) {
                unsigned kf[4], vf[4];
                load_a<HD>(kf, Ks, 16 * warp, kc);
                load_a<HD>(vf, Vs, 16 * warp, kc);
#pragma unroll
                for (int np = 0; np < BM / 16; np++) {
                    unsigned qf[4], of[4];
                    load_b_rows<HD>(qf, Qt, 16 * np, kc);
                    load_b_rows<HD>(of, dOt, 16 * np, kc);
                    mma(st[2 * np], kf, qf[0], qf[1]);
                    mma(st[2 * np + 1], kf, qf[2], qf[3]);
                    mma(dpt[2 * np], vf, of[0], of[1]);
                    mma(dpt[2 * np + 1], vf, of[2], of[3]);
                }
            }
            const bool diagonal = q0 < kw + 15;  // some query of the block is before some key of the warp
            // element (key kw + i, query q0 + j): i = g + 8 (e / 2), j = 8 nb + 2t + e % 2
#pragma unroll
            for (int nb = 0; nb < BM / 8; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = g + 8 * (e >> 1), j = 8 * nb + 2 * t + (e & 1);
                    float p = fast_exp2(fmaf(st[nb][e], scale_log2, -lse_t[j] * LOG2E));
                    if (diagonal && q0 + j < kw + i) p = 0.0f;
                    st[nb][e] = p;
                    dpt[nb][e] = p * (dpt[nb][e] - delta_t[j]) * scale;  // dS^T
                }
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) {
                unsigned pa[4], sa[4];
                c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
                c_to_a(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    unsigned of[4], qf[4];
                    load_b_cols<HD>(of, dOt, 16 * kk, dp);
                    load_b_cols<HD>(qf, Qt, 16 * kk, dp);
                    mma(dv_acc[2 * dp], pa, of[0], of[1]);
                    mma(dv_acc[2 * dp + 1], pa, of[2], of[3]);
                    mma(dk_acc[2 * dp], sa, qf[0], qf[1]);
                    mma(dk_acc[2 * dp + 1], sa, qf[2], qf[3]);
                }
            }
        }
        if constexpr (WITH_DQ) {
            // dQ (BM x HD) += dS (BM x BN) K (BN x HD). The warps hold dS^T in pieces, so dS goes through
            // shared memory: warp w writes dS^T rows (its keys) as columns 16w .. 16w + 15 of dS (zeros
            // when inactive). Then warp w computes dQ rows 0..BM-1, columns w HD/4 .. (w+1) HD/4 - 1 and
            // adds them into dq_accum.
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
                    unsigned sa[4];
                    ldmatrix_x4(sa, dS_s + (16 * mt + lane % 16) * DS_LD + 16 * kk + (lane / 16) * 8);
#pragma unroll
                    for (int dp = 0; dp < NCOL / 16; dp++) {
                        unsigned kf[4];
                        load_b_cols<HD>(kf, Ks, 16 * kk, warp * (NCOL / 16) + dp);
                        mma(dq_part[mt][2 * dp], sa, kf[0], kf[1]);
                        mma(dq_part[mt][2 * dp + 1], sa, kf[2], kf[3]);
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
                        atomicAdd(dq_block + (long)row * C + col, dq_part[mt][nd][e]);
                    }
        }
        __syncthreads();  // before the next iteration's copy overwrites this buffer (and dS_s)
    }
    const float one[2] = {1.0f, 1.0f};
    const long dst = ((long)b * T + kw) * dstride + h * HD;
    store_rows<HD>(Ks, 16 * warp, dk_acc, one, dk + dst, dstride);  // the warp's own K and V rows
    store_rows<HD>(Vs, 16 * warp, dv_acc, one, dv + dst, dstride);
}

// ----------------------------------------------------------------------------
// Backward, dq (version 2). Grid (B * NH, T / DQ_BM); block 4 warps; warp w owns queries q0 + 16w .. +15
// and walks the key blocks up to the diagonal: S = Q K^T, P = exp(S / sqrt(hd) - lse), dP = dO V^T,
// dS = P * (dP - delta) / sqrt(hd), dQ += dS K.

constexpr int DQ_BM = 64, DQ_THREADS = 128;
template <int HD>
__host__ __device__ constexpr int dq_bn() { return HD == 128 ? 32 : 64; }
template <int HD>
constexpr int dq_smem_bytes() { return (2 * DQ_BM + 4 * dq_bn<HD>()) * HD * 2; }  // Q, dO; K, V double-buffered

template <int HD>
__global__ void __launch_bounds__(DQ_THREADS) dq_kernel(floatX* dq, const floatX* dout, const float* lse,
                                                        const float* delta, const floatX* q, const floatX* k,
                                                        const floatX* v, long stride, long dstride, int T, int C, int NH) {
    constexpr int BM = DQ_BM, BN = dq_bn<HD>(), TILE_Q = BM * HD * 2, TILE_KV = BN * HD * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Qs = smem;
    unsigned char* dOs = Qs + TILE_Q;
    unsigned char* Ks = dOs + TILE_Q;      // [2][BN][HD]
    unsigned char* Vs = Ks + 2 * TILE_KV;  // [2][BN][HD]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows of keys first
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    const float scale = rsqrtf((float)HD), scale_log2 = scale * LOG2E;

    load_tile<BM, HD, DQ_THREADS>(Qs, q + head, stride, q0);
    load_tile<BM, HD, DQ_THREADS>(dOs, dout + out_head, C, q0);
    load_tile<BN, HD, DQ_THREADS>(Ks, k + head, stride, 0);
    load_tile<BN, HD, DQ_THREADS>(Vs, v + head, stride, 0);
    cp_async_commit();

    const int qw = q0 + 16 * warp;
    float lse2[2], dlt[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        lse2[hr] = lse[stats + qw + g + 8 * hr] * LOG2E;
        dlt[hr] = delta[stats + qw + g + 8 * hr];
    }
    unsigned qf[HD / 16][4], of[HD / 16][4];
    float dq_acc[HD / 8][4] = {};
    const int num_kb = (q0 + BM) / BN;
    for (int kb = 0; kb < num_kb; kb++) {
        if (kb + 1 < num_kb) {
            load_tile<BN, HD, DQ_THREADS>(Ks + ((kb + 1) & 1) * TILE_KV, k + head, stride, (kb + 1) * BN);
            load_tile<BN, HD, DQ_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (kb == 0)
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc++) {
                load_a<HD>(qf[kc], Qs, 16 * warp, kc);
                load_a<HD>(of[kc], dOs, 16 * warp, kc);
            }
        const unsigned char* Kt = Ks + (kb & 1) * TILE_KV;
        const unsigned char* Vt = Vs + (kb & 1) * TILE_KV;
        const int k0 = kb * BN;
        if (k0 <= qw + 15) {
            float s[BN / 8][4] = {}, dp[BN / 8][4] = {};
#pragma unroll
            for (int np = 0; np < BN / 16; np++)
#pragma unroll
                for (int kc = 0; kc < HD / 16; kc++) {
                    unsigned kf[4], vf[4];
                    load_b_rows<HD>(kf, Kt, 16 * np, kc);
                    load_b_rows<HD>(vf, Vt, 16 * np, kc);
                    mma(s[2 * np], qf[kc], kf[0], kf[1]);
                    mma(s[2 * np + 1], qf[kc], kf[2], kf[3]);
                    mma(dp[2 * np], of[kc], vf[0], vf[1]);
                    mma(dp[2 * np + 1], of[kc], vf[2], vf[3]);
                }
            const bool diagonal = k0 + BN - 1 > qw;
#pragma unroll
            for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int hr = e >> 1;
                    float p = fast_exp2(fmaf(s[nb][e], scale_log2, -lse2[hr]));
                    if (diagonal && k0 + 8 * nb + 2 * t + (e & 1) > qw + g + 8 * hr) p = 0.0f;
                    s[nb][e] = p * (dp[nb][e] - dlt[hr]) * scale;  // dS
                }
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                unsigned sa[4];
                c_to_a(sa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int dp2 = 0; dp2 < HD / 16; dp2++) {
                    unsigned kf[4];
                    load_b_cols<HD>(kf, Kt, 16 * kk, dp2);
                    mma(dq_acc[2 * dp2], sa, kf[0], kf[1]);
                    mma(dq_acc[2 * dp2 + 1], sa, kf[2], kf[3]);
                }
            }
        }
        __syncthreads();
    }
    const float one[2] = {1.0f, 1.0f};
    store_rows<HD>(Qs, 16 * warp, dq_acc, one, dq + ((long)b * T + qw) * dstride + h * HD, dstride);
}

// Version 3's last step: dq (bf16, rows of dstride) = dq_accum (fp32, rows of C), 4 values per thread.
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

// ----------------------------------------------------------------------------
// Launchers

// On a kernel's first launch only (the bytes are a constant of its instantiation), so that the timed
// launches do not repeat it.
template <auto Kernel>
void allow_smem(int bytes) {
    static const bool done =
        (cudaCheck(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)), true);
    (void)done;
}

inline void check_shape(int T, int C, int NH) {
    if (C / NH != 64 && C / NH != 128) unsupported("attention v2/v3: head dimension must be 64 or 128");
    if (T % FWD_BM) unsupported("attention v2/v3: T must be a multiple of 128");
}

template <int HD>
void forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, long stride, int B, int T, int C, int NH) {
    allow_smem<forward_kernel<HD>>(forward_smem_bytes<HD>());
    forward_kernel<HD><<<dim3(B * NH, T / FWD_BM), FWD_THREADS, forward_smem_bytes<HD>()>>>(out, lse, q, k, v, stride, T, C, NH);
    cudaCheck(cudaGetLastError());
}

// dq_accum: null for version 2; for version 3, (B, T, C) fp32 scratch.
template <int HD>
void backward(floatX* dq, floatX* dk, floatX* dv, float* delta, float* dq_accum, const floatX* dout, const floatX* out,
              const float* lse, const floatX* q, const floatX* k, const floatX* v, long stride, long dstride, int B, int T,
              int C, int NH) {
    // delta = rowsum(dout * out): version 1's kernel
    attention_detail::attention_delta_kernel<HD><<<(unsigned)ceil_div((long)B * NH * T, attention_detail::WARPS),
                                                   attention_detail::THREADS>>>(delta, out, dout, B, T, C, NH);
    cudaCheck(cudaGetLastError());
    const dim3 grid_kv(B * NH, T / BWD_BN);
    if (!dq_accum) {
        allow_smem<dkdv_kernel<HD, false>>(dkdv_smem_bytes<HD>(false));
        dkdv_kernel<HD, false><<<grid_kv, BWD_THREADS, dkdv_smem_bytes<HD>(false)>>>(dk, dv, nullptr, dout, lse, delta, q, k,
                                                                                    v, stride, dstride, T, C, NH);
        cudaCheck(cudaGetLastError());
        allow_smem<dq_kernel<HD>>(dq_smem_bytes<HD>());
        dq_kernel<HD><<<dim3(B * NH, T / DQ_BM), DQ_THREADS, dq_smem_bytes<HD>()>>>(dq, dout, lse, delta, q, k, v, stride,
                                                                                    dstride, T, C, NH);
        cudaCheck(cudaGetLastError());
    } else {
        cudaCheck(cudaMemsetAsync(dq_accum, 0, (size_t)B * T * C * sizeof(float)));
        allow_smem<dkdv_kernel<HD, true>>(dkdv_smem_bytes<HD>(true));
        dkdv_kernel<HD, true><<<grid_kv, BWD_THREADS, dkdv_smem_bytes<HD>(true)>>>(dk, dv, dq_accum, dout, lse, delta, q, k,
                                                                                  v, stride, dstride, T, C, NH);
        cudaCheck(cudaGetLastError());
        dq_convert_kernel<<<(unsigned)ceil_div((long)B * T * C / 4, 256), 256>>>(dq, dq_accum, (long)B * T, C, dstride);
        cudaCheck(cudaGetLastError());
    }
}

}  // namespace mma_attention
#endif  // ENABLE_FP32

// ----------------------------------------------------------------------------

static void run_forward(int version, floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, int B,
                        int T, int C, int NH) {
    if (version == 1) {
        attention_forward(out, lse, q, k, v, C, B, T, C, NH, 0);
        return;
    }
#ifndef ENABLE_FP32
    mma_attention::check_shape(T, C, NH);
    if (C / NH == 64) mma_attention::forward<64>(out, lse, q, k, v, C, B, T, C, NH);
    else mma_attention::forward<128>(out, lse, q, k, v, C, B, T, C, NH);
#endif
}

static void run_backward(int version, floatX* dq, floatX* dk, floatX* dv, float* delta, float* dq_accum, const floatX* dout,
                         const floatX* out, const float* lse, const floatX* q, const floatX* k, const floatX* v, int B,
                         int T, int C, int NH) {
    if (version == 1) {
        attention_backward(dq, dk, dv, delta, dout, out, lse, q, k, v, C, C, B, T, C, NH, 0);
        return;
    }
#ifndef ENABLE_FP32
    mma_attention::check_shape(T, C, NH);
    float* acc = version == 3 ? dq_accum : nullptr;
    if (C / NH == 64) mma_attention::backward<64>(dq, dk, dv, delta, acc, dout, out, lse, q, k, v, C, C, B, T, C, NH);
    else mma_attention::backward<128>(dq, dk, dv, delta, acc, dout, out, lse, q, k, v, C, C, B, T, C, NH);
#endif
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
    const int version = parse_version(argc, argv, 3, VERSIONS);
    if (version > 1) require_bf16(version);
    measure_ceilings();
    // Small shapes first, validated only (tile edges: T of one and two register tiles, a partial tile
    // for version 1, both head sizes); then the models' shapes, validated and timed.
    struct Shape { const char* name; int B, T, C, NH; bool timed; };
    std::vector<Shape> shapes = {{"small", 2, 128, 128, 2, false}, {"small", 1, 256, 256, 2, false}};
    if (version == 1) shapes.push_back({"small", 2, 77, 96, 2, false});
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
            if (version > 1 && hd != 64 && hd != 128) {  // the register-level versions' limit (check_shape)
                printf("  version %d: unsupported head dimension %d, skipped\n", version, hd);
                continue;
            }
            DeviceBuffer<floatX> q(N * C), k(N * C), v(N * C), out(N * C), dout(N * C), dq(N * C), dk(N * C), dv(N * C);
            DeviceBuffer<float> lse((size_t)B * NH * T), delta((size_t)B * NH * T), dq_accum(version == 3 ? N * C : 0);
            q.fill_normal(71);
            k.fill_normal(72);
            v.fill_normal(73);
            dout.fill_normal(74);

            // Reference on two heads, gathered as B = 2 sequences of one head (hd columns).
            const std::vector<std::pair<int, int>> heads = {{0, 0}, {B - 1, NH - 1}};
            const int H = (int)heads.size();
            const std::vector<double> q_h = gather_heads(q.download(), heads, T, C, hd),
                                      k_h = gather_heads(k.download(), heads, T, C, hd),
                                      v_h = gather_heads(v.download(), heads, T, C, hd),
                                      dout_h = gather_heads(dout.download(), heads, T, C, hd);
            std::vector<double> out_ref((size_t)H * T * hd), probs((size_t)H * T * T);
            attention_forward(out_ref.data(), probs.data(), q_h.data(), k_h.data(), v_h.data(), H, T, hd, 1);
            const std::vector<double> lse_ref = attention_lse_reference(q_h, k_h, H, T, hd, 1);
            std::vector<double> dq_ref((size_t)H * T * hd, 0.0), dk_ref((size_t)H * T * hd, 0.0),
                dv_ref((size_t)H * T * hd, 0.0);
            attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout_h.data(), probs.data(), q_h.data(),
                               k_h.data(), v_h.data(), H, T, hd, 1);
            const AttentionScales scales = attention_error_scales(probs, q_h, k_h, v_h, out_ref, dout_h, dq_ref, dk_ref,
                                                                  dv_ref, H, T, hd, 1);
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

            auto forward = [&] { run_forward(version, out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, B, T, C, NH); };
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
                             k.ptr, v.ptr, B, T, C, NH);
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
