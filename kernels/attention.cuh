// Causal multi-head attention, FlashAttention-2 style (Dao, 2023): tiled over queries and keys with an
// online softmax held in registers, never materializing the T x T scores; the forward saves one
// logsumexp per row for the backward. CPU reference: kernels/cpu/attention.h. The simpler version
// this one replaced (WMMA from shared memory) and a one-kernel backward with atomics are versions 1 and 3
// of dev/attention.cu (this is version 2).
//
//   q, k, v: rows of `stride` elements, (B, T, stride); head h occupies columns [h*HD, (h+1)*HD).
//            stride = C for separate q, k, v buffers, 3C for a fused qkv buffer (k = q + C, v = q + 2C).
//   out, dout: (B, T, C);  lse: (B, NH, T) fp32, lse = log(sum_j exp(s_j)) with s = q.k / sqrt(HD).
// Any T >= 1 and HD in {16, 32, ..., 128}, each HD a template instance.
//
// Tiles are copied to shared memory by cp.async (16 bytes a copy, rows past T zero-filled), the next
// tile's copy overlapping this tile's math (double buffering). Each warp owns 16 rows of its block and
// computes with mma.sync m16n8k16 (bf16 in, fp32 accumulate) from fragments loaded by ldmatrix; the
// scores, the softmax and the probabilities stay in the warp's registers: an m16n8 accumulator has the
// layout of an m16n8k16 A operand, so P is the A operand of P V as it stands (FlashAttention-2). In the
// fp32 build (-DENABLE_FP32) the same code runs on fp32 fragments (see FragA): plain FMAs, no tensor
// cores (a checking build, not a fast one).
//
// The causal mask: blocks wholly after the diagonal are never visited, warps skip key blocks wholly
// after their queries, only blocks that straddle the diagonal are masked. Keys past T are after every
// query before T, so the causal mask covers them too; rows past T are computed on zeros and not stored.
//
// The backward is deterministic (no atomics): one kernel per query block accumulates dQ over the key
// blocks, then another per key block accumulates dK and dV in registers over the query blocks that
// see it; both recompute P = exp(s - lse) from the forward's lse: 7 tile products per tile pair
// instead of FlashAttention-2's 5. The dQ kernel also makes the softmax backward's row terms delta =
// rowsum(dO * O) in its prologue, from the dO tile it holds, for itself and the dK dV kernel.
//
// RoPE fused (the `rope` table of rope_table_init, kernels/rope.cuh; nullptr: q and k used as given):
// q and k are read as the q|k|v product wrote them and each tile is turned in shared memory as it
// lands, by the standalone kernel's own rope_turn (the same bits); the backward turns dQ and dK back
// in registers before storing them (q' = R q gives dq = R^T dq'). The trainer saves RoPE's two round
// trips through memory per layer; the turn costs one pass over each tile in shared memory and a barrier.
#pragma once
#include "common.cuh"
#include "ptx.cuh"
#include "rope_turn.cuh"

namespace attention_detail {

constexpr float LN2 = 0.6931471805599453f;

// ----------------------------------------------------------------------------
// Shared-memory tiles: R rows of HD floatX, rows PITCH bytes apart: HD * sizeof(floatX) + 16. The
// 16 extra bytes make a row an odd number of 16-byte chunks (HD is a multiple of 16), so 8 consecutive
// rows at the same column sit in the 8 different 16-byte bank groups of a 128-byte line: ldmatrix
// (8 rows of 16 bytes a matrix) and the cp.async fills are free of bank conflicts at every HD.

template <int HD>
constexpr int PITCH = HD * (int)sizeof(floatX) + 16;
constexpr int CHUNK = 16 / (int)sizeof(floatX);  // elements per 16-byte copy

template <int HD>
__device__ inline int at(int row, int col) { return row * PITCH<HD> + col * (int)sizeof(floatX); }  // byte offset

// Starts copying rows row0 .. row0 + R - 1 of a (T, stride) slice into a tile (the caller commits);
// rows past T become zeros.
template <int R, int HD, int THREADS>
__device__ inline void load_tile(unsigned char* tile, const floatX* src, long stride, int row0, int T) {
    constexpr int CH = HD / CHUNK;
#pragma unroll
    for (int i = threadIdx.x; i < R * CH; i += THREADS) {
        const int r = i / CH, c = i % CH;
        const bool valid = row0 + r < T;
        cp_async16(tile + at<HD>(r, c * CHUNK), src + (long)(valid ? row0 + r : 0) * stride + c * CHUNK, valid);
    }
}

// Turns the rows of a tile that are before T by RoPE: row r is position pos0 + r.
template <int R, int HD, int THREADS>
__device__ inline void rope_tile(unsigned char* tile, const float2* rope, int pos0, int T) {
    constexpr int HALF = HD / 2, CH = HALF / CHUNK;  // a row: CH 16-byte chunks per half (HD / 2 % 8 == 0)
#pragma unroll 1  // one chunk's registers at a time: unrolled, the fp32 build spilled (forward at HD 64)
    for (int i = threadIdx.x; i < R * CH; i += THREADS) {
        const int r = i / CH, c = i % CH * CHUNK;
        if (pos0 + r >= T) continue;  // rows past T are zeros and stay so
        PackedX* first = reinterpret_cast<PackedX*>(tile + at<HD>(r, c));
        PackedX* second = reinterpret_cast<PackedX*>(tile + at<HD>(r, c + HALF));
        PackedX x1 = *first, x2 = *second;
        rope_turn(x1, x2, rope + (long)(pos0 + r) * HALF + c, 1.0f);
        *first = x1;
        *second = x2;
    }
}

// ----------------------------------------------------------------------------
// Fragments of m16n8k16 (the layouts: kernels/ptx.cuh). FragA: a 16x16 A operand; FragB: two 16x8 B
// operands side by side (columns 0..7 and 8..15 of a 16x16 block).
//   bf16: the tensor-core registers, loaded by ldmatrix (x[0], x[1] the first B operand, x[2], x[3]
//         the second), each register two bf16 of consecutive columns, low half first.
//   fp32: a lane keeps all 16 k of its rows of A (g and g + 8) in registers; a B fragment is a view of
//         its shared-memory tile, read inside the product. The product is then 64 FMAs a lane with no
//         exchange between lanes; only an A operand made from accumulators (c_to_a) gathers its rows
//         from the quad by shuffles.

#ifdef ENABLE_FP32
struct FragA {
    float x[2][16];  // [row g, g + 8][k]
};
struct FragB {
    const unsigned char* tile;
    int pitch;       // the tile's row pitch in bytes
    int row0, col0;  // B(k, n) = tile(row0 + n, col0 + k), or with cols tile(row0 + k, col0 + n)
    bool cols;
    __device__ float operator()(int k, int n) const {
        const int row = cols ? row0 + k : row0 + n, col = cols ? col0 + n : col0 + k;
        return *reinterpret_cast<const float*>(tile + row * pitch + col * 4);
    }
};
#else
struct FragA {
    unsigned x[4];
};
struct FragB {
    unsigned x[4];
};
#endif

// The A fragment of rows row0 .. row0 + 15, columns 16 kc .. 16 kc + 15 of a tile.
template <int HD>
__device__ inline void load_a(FragA& a, const unsigned char* tile, int row0, int kc) {
    const int lane = threadIdx.x % 32;
#ifdef ENABLE_FP32
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int k = 0; k < 16; k++)
            a.x[r][k] = *reinterpret_cast<const float*>(tile + at<HD>(row0 + lane / 4 + 8 * r, 16 * kc + k));
#else
    ldmatrix_x4(a.x, tile + at<HD>(row0 + lane % 16, 16 * kc + 8 * (lane / 16)));
#endif
}
// The B fragments of a 16x16 block where B(k, n) = tile(row0 + n, 16 kc + k): the tile holds B^T (K for
// S = Q K^T). Columns n in rows row0 .. + 7 for the first operand, row0 + 8 .. + 15 for the second.
template <int HD>
__device__ inline void load_b_rows(FragB& b, const unsigned char* tile, int row0, int kc) {
#ifdef ENABLE_FP32
    b = FragB{tile, PITCH<HD>, row0, 16 * kc, false};
#else
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(b.x, tile + at<HD>(row0 + lane % 8 + 8 * (lane / 16), 16 * kc + 8 * ((lane / 8) % 2)));
#endif
}
// The B fragments of a 16x16 block where B(k, n) = tile(row0 + k, 16 dp + n): the tile holds B (V for
// O = P V). Columns 16 dp .. + 7 for the first operand, 16 dp + 8 .. + 15 for the second.
template <int HD>
__device__ inline void load_b_cols(FragB& b, const unsigned char* tile, int row0, int dp) {
#ifdef ENABLE_FP32
    b = FragB{tile, PITCH<HD>, row0, 16 * dp, true};
#else
    const int lane = threadIdx.x % 32;
    ldmatrix_x4_trans(b.x, tile + at<HD>(row0 + lane % 8 + 8 * ((lane / 8) % 2), 16 * dp + 8 * (lane / 16)));
#endif
}

// d (16x8 fp32) += A (16x16) B(:, 8 half .. 8 half + 7) for the B fragment's half 0 or 1.
__device__ inline void mma(float (&d)[4], const FragA& a, const FragB& b, int half) {
#ifdef ENABLE_FP32
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int j = 0; j < 2; j++) {  // d[j] = D(g, 2t + j), d[2 + j] = D(g + 8, 2t + j)
        const int n = 8 * half + 2 * t + j;
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const float bk = b(k, n);
            d[j] = fmaf(a.x[0][k], bk, d[j]);
            d[2 + j] = fmaf(a.x[1][k], bk, d[2 + j]);
        }
    }
#else
    mma_bf16_16816(d, a.x, b.x[2 * half], b.x[2 * half + 1]);
#endif
}

// The accumulators of two adjacent 8-column blocks c0, c1 as the A operand of columns 0..15 (the C
// layout of m16n8 is the A layout of m16n8k16), rounded to floatX.
__device__ inline void c_to_a(FragA& a, const float (&c0)[4], const float (&c1)[4]) {
#ifdef ENABLE_FP32
    // column 2s + j of row g (+8 r) is c0[2r + j] of quad member s; column 8 + 2s + j is its c1[2r + j]
    const int g = threadIdx.x % 32 / 4;
#pragma unroll
    for (int s = 0; s < 4; s++)
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                a.x[r][2 * s + j] = __shfl_sync(FULL_WARP_MASK, c0[2 * r + j], 4 * g + s);
                a.x[r][8 + 2 * s + j] = __shfl_sync(FULL_WARP_MASK, c1[2 * r + j], 4 * g + s);
            }
#else
    auto pack = [](float lo, float hi) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const unsigned*>(&v);
    };
    a.x[0] = pack(c0[0], c0[1]);
    a.x[1] = pack(c0[2], c0[3]);
    a.x[2] = pack(c1[0], c1[1]);
    a.x[3] = pack(c1[2], c1[3]);
#endif
}

// The two products every kernel here is made of, for one warp's 16 rows. acc (16 x N) += A B^T, with A
// the 16 rows of tile a from a_row and B^T the N rows of tile b from its first (S = Q K^T, dP = dO V^T,
// and with keys and queries swapped their transposes).
template <int HD, int N>
__device__ inline void warp_product_rows(float (&acc)[N / 8][4], const unsigned char* a, int a_row,
                                         const unsigned char* b) {
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) {
        FragA af;
        load_a<HD>(af, a, a_row, kc);
#pragma unroll
        for (int np = 0; np < N / 16; np++) {
            FragB bf;
            load_b_rows<HD>(bf, b, 16 * np, kc);
            mma(acc[2 * np], af, bf, 0);
            mma(acc[2 * np + 1], af, bf, 1);
        }
    }
}
// acc (16 x HD) += P B, with P (16 x N) the warp's accumulators, rounded to floatX as the A operand,
// and B the N rows of tile b from its first (O = P V, dV = P^T dO, dK = dS^T Q, dQ = dS K).
template <int HD, int N>
__device__ inline void warp_product_cols(float (&acc)[HD / 8][4], const float (&p)[N / 8][4], const unsigned char* b) {
#pragma unroll
    for (int kk = 0; kk < N / 16; kk++) {
        FragA pa;
        c_to_a(pa, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            FragB bf;
            load_b_cols<HD>(bf, b, 16 * kk, dp);
            mma(acc[2 * dp], pa, bf, 0);
            mma(acc[2 * dp + 1], pa, bf, 1);
        }
    }
}

// Turns a warp's 16 x HD fp32 accumulators of rows pos0 .. pos0 + 15 back by RoPE (R^T: the gradient
// with respect to the unrotated q or k). A lane holds columns 8 nd + 2t + j of rows g and g + 8 for
// every nd, so column i and its partner i + HD/2 (block nd + HD/16) are in the same lane.
template <int HD>
__device__ inline void rope_turn_back(float (&acc)[HD / 8][4], const float2* rope, int pos0, int T) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int pos = pos0 + g + 8 * hr;
        if (pos >= T) continue;  // not stored
#pragma unroll
        for (int nd = 0; nd < HD / 16; nd++) {
            const float4 cs = *reinterpret_cast<const float4*>(rope + (long)pos * (HD / 2) + 8 * nd + 2 * t);
            const float c[2] = {cs.x, cs.z}, sn[2] = {cs.y, cs.w};
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const float a = acc[nd][2 * hr + j], b = acc[nd + HD / 16][2 * hr + j];
                acc[nd][2 * hr + j] = fmaf(a, c[j], b * sn[j]);
                acc[nd + HD / 16][2 * hr + j] = fmaf(b, c[j], -a * sn[j]);
            }
        }
    }
}

// Writes a warp's 16 x HD fp32 accumulators (rows g and g + 8 scaled by scale[0] and scale[1]) as
// floatX to dst (row r at dst + r * dst_stride, the first `rows` rows only), through the warp's own 16
// rows row0.. of a shared tile, so that the global stores are 16-byte vectors covering whole rows.
template <int HD>
__device__ inline void store_rows(unsigned char* tile, int row0, const float (&acc)[HD / 8][4], const float (&scale)[2],
                                  floatX* dst, long dst_stride, int rows) {
    constexpr int CH = HD / CHUNK;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nd = 0; nd < HD / 8; nd++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++)
            store_pair(tile + at<HD>(row0 + g + 8 * hr, 8 * nd + 2 * t), acc[nd][2 * hr] * scale[hr],
                       acc[nd][2 * hr + 1] * scale[hr]);
    __syncwarp();
    for (int i = lane; i < 16 * CH; i += 32) {
        const int r = i / CH, c = i % CH;
        if (r < rows)
            *reinterpret_cast<int4*>(dst + (long)r * dst_stride + c * CHUNK) =
                *reinterpret_cast<const int4*>(tile + at<HD>(row0 + r, c * CHUNK));
    }
}

// ----------------------------------------------------------------------------
// Forward. Grid (B * NH, ceil(T / FWD_BM)); 8 warps; warp w owns queries q0 + 16w .. q0 + 16w + 15; its
// Q fragments are read from shared memory once per key block (HD / 16 ldmatrix against the block's
// 2 BN HD / 256 for K and V), which leaves the registers to the scores and the output.

constexpr int FWD_BM = 128, FWD_BN = 64, FWD_THREADS = 256;

template <int HD>
constexpr int forward_smem_bytes() { return (FWD_BM + 4 * FWD_BN) * PITCH<HD>; }  // Q; K, V double-buffered

template <int HD>
__global__ void __launch_bounds__(FWD_THREADS, HD <= 64 ? 2 : 1)
    attention_forward_kernel(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, long stride,
                             int T, int C, int NH, const float2* rope) {
    constexpr int BM = FWD_BM, BN = FWD_BN, TILE_KV = BN * PITCH<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Qs = smem;
    unsigned char* Ks = Qs + BM * PITCH<HD>;  // [2][BN rows]
    unsigned char* Vs = Ks + 2 * TILE_KV;     // [2][BN rows]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows of keys first
    const long head = (long)b * T * stride + h * HD;
    const float scale_log2 = rsqrtf((float)HD) * LOG2E;

    load_tile<BM, HD, FWD_THREADS>(Qs, q + head, stride, q0, T);
    load_tile<BN, HD, FWD_THREADS>(Ks, k + head, stride, 0, T);
    load_tile<BN, HD, FWD_THREADS>(Vs, v + head, stride, 0, T);
    cp_async_commit();

    const int num_kb = (int)ceil_div(min(q0 + BM, T), BN);  // causal: keys before the block's last query
    const int qw = q0 + 16 * warp;                          // the warp's first query
    const bool warp_active = qw < T;                        // else all its rows are past T
    float o[HD / 8][4] = {};
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // rows g, g + 8; m in log2 units

    for (int kb = 0; kb < num_kb; kb++) {
        if (kb + 1 < num_kb) {
            load_tile<BN, HD, FWD_THREADS>(Ks + ((kb + 1) & 1) * TILE_KV, k + head, stride, (kb + 1) * BN, T);
            load_tile<BN, HD, FWD_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (rope) {  // the tiles that just landed: Q once, each K block
            if (kb == 0) rope_tile<BM, HD, FWD_THREADS>(Qs, rope, q0, T);
            rope_tile<BN, HD, FWD_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN, T);
            __syncthreads();
        }
        const unsigned char* Kt = Ks + (kb & 1) * TILE_KV;
        const unsigned char* Vt = Vs + (kb & 1) * TILE_KV;
        const int k0 = kb * BN;
        if (warp_active && k0 <= qw + 15) {  // else every key of the block is after every query of the warp
            float s[BN / 8][4] = {};  // S = Q K^T, the warp's Q fragments read once per key block
            warp_product_rows<HD, BN>(s, Qs, 16 * warp, Kt);
            if (k0 + BN - 1 > qw) {  // the diagonal: mask keys after the query (and so every key past T)
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
                const float m_new = fmaxf(m_run[hr], mx * scale_log2);  // finite: key 0 is in block 0
                const float correction = fast_exp2(m_run[hr] - m_new);
                m_run[hr] = m_new;
                float sum = 0.0f;
#pragma unroll
                for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
                    for (int e = 2 * hr; e < 2 * hr + 2; e++) {
                        s[nb][e] = fast_exp2(fmaf(s[nb][e], scale_log2, -m_new));
                        sum += s[nb][e];
                    }
                l_run[hr] = l_run[hr] * correction + sum;  // this lane's share; the quad adds up at the end
#pragma unroll
                for (int nd = 0; nd < HD / 8; nd++) {
                    o[nd][2 * hr] *= correction;
                    o[nd][2 * hr + 1] *= correction;
                }
            }
            warp_product_cols<HD, BN>(o, s, Vt);  // O += P V, P rounded to floatX as the A operand
        }
        __syncthreads();  // every warp is done with this K, V buffer before the next iteration refills it
    }
    if (!warp_active) return;

    float inv_l[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float l = l_run[hr];
        l += __shfl_xor_sync(FULL_WARP_MASK, l, 1);
        l += __shfl_xor_sync(FULL_WARP_MASK, l, 2);
        inv_l[hr] = 1.0f / l;
        // lse = ln(sum_j e^{s_j}) = ln(2^m l) with m in log2 units
        const int row = qw + g + 8 * hr;
        if (t == 0 && row < T) lse[((long)b * NH + h) * T + row] = m_run[hr] * LN2 + logf(l);
    }
    store_rows<HD>(Qs, 16 * warp, o, inv_l, out + ((long)b * T + qw) * C + h * HD, C, T - qw);  // the warp's own Q rows
}

// ----------------------------------------------------------------------------
// Backward, dK and dV. Grid (B * NH, ceil(T / BWD_BN)); 4 warps; warp w owns keys k0 + 16w .. + 15, and
// the block walks the query blocks of BWD_BM rows that can see its keys. Per query block, with the
// row statistics of the queries (columns here):
//   S^T = K Q^T,  P^T = exp(S^T / sqrt(hd) - lse),  dP^T = V dO^T,  dS^T = P^T * (dP^T - delta) / sqrt(hd)
//   dV += P^T dO,  dK += dS^T Q

constexpr int BWD_BN = 64, BWD_THREADS = 128;
template <int HD>
constexpr int BWD_BM = HD > 64 || FLOATX_IS_FP32 ? 32 : 64;  // query rows per step: registers at large HD

template <int HD>
constexpr int dkdv_smem_bytes() {  // K, V; Q, dO double-buffered; lse, delta double-buffered
    return (2 * BWD_BN + 4 * BWD_BM<HD>) * PITCH<HD> + 4 * BWD_BM<HD> * (int)sizeof(float);
}

// (Launch bounds with 1 block per SM said outright: without it ptxas spilled 60 bytes in the fp32 build
// at HD 80, at 168 of its 255 registers.)
template <int HD>
__global__ void __launch_bounds__(BWD_THREADS, 1)
    attention_backward_dkdv_kernel(floatX* dk, floatX* dv, const floatX* dout, const float* lse, const float* delta,
                                   const floatX* q, const floatX* k, const floatX* v, long stride, long dstride, int T,
                                   int C, int NH, const float2* rope) {
    constexpr int BN = BWD_BN, BM = BWD_BM<HD>, TILE_Q = BM * PITCH<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Ks = smem;
    unsigned char* Vs = Ks + BN * PITCH<HD>;
    unsigned char* Qs = Vs + BN * PITCH<HD>;    // [2][BM rows]
    unsigned char* dOs = Qs + 2 * TILE_Q;       // [2][BM rows]
    float* lse_s = (float*)(dOs + 2 * TILE_Q);  // [2][BM]
    float* delta_s = lse_s + 2 * BM;            // [2][BM]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int k0 = blockIdx.y * BN;  // key block 0 first: it is seen by every query
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    const float scale = rsqrtf((float)HD), scale_log2 = scale * LOG2E;

    load_tile<BN, HD, BWD_THREADS>(Ks, k + head, stride, k0, T);
    load_tile<BN, HD, BWD_THREADS>(Vs, v + head, stride, k0, T);
    // Copies and stores into buffer buf: its readers finished before the last loop iteration's barrier.
    auto load_query_block = [&](int q0, int buf) {
        load_tile<BM, HD, BWD_THREADS>(Qs + buf * TILE_Q, q + head, stride, q0, T);
        load_tile<BM, HD, BWD_THREADS>(dOs + buf * TILE_Q, dout + out_head, C, q0, T);
        for (int i = threadIdx.x; i < BM; i += BWD_THREADS) {  // lse 0 past T: P = 1 there, on zero Q and dO rows
            lse_s[buf * BM + i] = q0 + i < T ? lse[stats + q0 + i] * LOG2E : 0.0f;
            delta_s[buf * BM + i] = q0 + i < T ? delta[stats + q0 + i] : 0.0f;
        }
    };
    load_query_block(k0, 0);  // query blocks before k0 see none of these keys (BM divides BN)
    cp_async_commit();
    if (rope) {  // K turned once, here: in the loop, where dK and dV fill the registers, the fp32 build spilled
        cp_async_wait<0>();
        __syncthreads();
        rope_tile<BN, HD, BWD_THREADS>(Ks, rope, k0, T);  // ordered before its readers by the loop's barrier
    }

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
        if (rope) {  // the Q block that just landed
            rope_tile<BM, HD, BWD_THREADS>(Qs + buf * TILE_Q, rope, q0, T);
            __syncthreads();
        }
        const unsigned char* Qt = Qs + buf * TILE_Q;
        const unsigned char* dOt = dOs + buf * TILE_Q;
        const float* lse_t = lse_s + buf * BM;  // in log2 units
        const float* delta_t = delta_s + buf * BM;
        // some query of the block sees some key of the warp, and the warp has a key before T
        if (q0 + BM - 1 >= kw && kw < T) {
            float st[BM / 8][4] = {}, dpt[BM / 8][4] = {};
            warp_product_rows<HD, BM>(st, Ks, 16 * warp, Qt);   // S^T = K Q^T
            warp_product_rows<HD, BM>(dpt, Vs, 16 * warp, dOt);  // dP^T = V dO^T
            const bool diagonal = q0 < kw + 15;  // some query of the block is before some key of the warp
            // element (key kw + i, query q0 + j): i = g + 8 (e / 2), j = 8 nb + 2t + e % 2
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
        __syncthreads();  // before the next iteration's copy overwrites this buffer
    }
    if (kw >= T) return;
    if (rope) rope_turn_back<HD>(dk_acc, rope, kw, T);
    const float one[2] = {1.0f, 1.0f};
    const long dst = ((long)b * T + kw) * dstride + h * HD;
    store_rows<HD>(Ks, 16 * warp, dk_acc, one, dk + dst, dstride, T - kw);  // the warp's own K and V rows
    store_rows<HD>(Vs, 16 * warp, dv_acc, one, dv + dst, dstride, T - kw);
}

// ----------------------------------------------------------------------------
// Backward, dQ. Grid (B * NH, ceil(T / DQ_BM)); 4 warps; warp w owns queries q0 + 16w .. + 15 (Q and
// dO fragments read once per key block) and walks the key blocks up to the diagonal: S = Q K^T,
// P = exp(S / sqrt(hd) - lse), dP = dO V^T, dS = P * (dP - delta) / sqrt(hd), dQ += dS K.
// First, with Q and dO landed, each warp makes delta for its rows and stores it (B, NH, T):
// delta = sum_d dO[t,d] O[t,d], the row term of the softmax backward dS = P * (dP - delta), since
// sum_j P_j dP_j = dO . (sum_j P_j v_j) = dO . O. The lanes g, g + 8 of the m16n8 layout (lane = 4g +
// t) hold rows g and g + 8; lane t adds the 16-byte chunks t, t + 4, ... of dO (shared memory, as
// copied) times O (global memory, 128-bit loads), and the four lanes of a row add their sums.

constexpr int DQ_BM = 64, DQ_THREADS = 128;
template <int HD>
constexpr int DQ_BN = HD > 64 ? 32 : 64;  // key rows per step
template <int HD>
constexpr int dq_smem_bytes() { return (2 * DQ_BM + 4 * DQ_BN<HD>) * PITCH<HD>; }  // Q, dO; K, V double-buffered

template <int HD>
__global__ void __launch_bounds__(DQ_THREADS)
    attention_backward_dq_kernel(floatX* dq, float* delta, const floatX* dout, const floatX* out, const float* lse,
                                 const floatX* q, const floatX* k, const floatX* v, long stride, long dstride, int T,
                                 int C, int NH, const float2* rope) {
    constexpr int BM = DQ_BM, BN = DQ_BN<HD>, TILE_KV = BN * PITCH<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* Qs = smem;
    unsigned char* dOs = Qs + BM * PITCH<HD>;
    unsigned char* Ks = dOs + BM * PITCH<HD>;  // [2][BN rows]
    unsigned char* Vs = Ks + 2 * TILE_KV;      // [2][BN rows]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM;  // the longest rows of keys first
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    const float scale = rsqrtf((float)HD), scale_log2 = scale * LOG2E;

    load_tile<BM, HD, DQ_THREADS>(Qs, q + head, stride, q0, T);
    load_tile<BM, HD, DQ_THREADS>(dOs, dout + out_head, C, q0, T);
    cp_async_commit();
    load_tile<BN, HD, DQ_THREADS>(Ks, k + head, stride, 0, T);
    load_tile<BN, HD, DQ_THREADS>(Vs, v + head, stride, 0, T);
    cp_async_commit();

    const int qw = q0 + 16 * warp;
    const bool warp_active = qw < T;
    float lse2[2], dlt[2] = {};  // rows g, g + 8; lse in log2 units
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int row = qw + g + 8 * hr;
        lse2[hr] = row < T ? lse[stats + row] * LOG2E : 0.0f;
    }
    cp_async_wait<1>();  // Q and dO (the first K and V may still be landing)
    __syncthreads();
    if (warp_active) {
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const int r = 16 * warp + g + 8 * hr, row = q0 + r;
            if (row < T)
                for (int c = t * CHUNK; c < HD; c += 4 * CHUNK) {
                    const PackedX d = *reinterpret_cast<const PackedX*>(dOs + at<HD>(r, c));
                    const PackedX o = load128(out + out_head + (long)row * C + c);
#pragma unroll
                    for (int e = 0; e < CHUNK; e++) dlt[hr] += (float)d[e] * (float)o[e];
                }
            dlt[hr] += __shfl_xor_sync(0xffffffffu, dlt[hr], 1);
            dlt[hr] += __shfl_xor_sync(0xffffffffu, dlt[hr], 2);
            if (t == 0 && row < T) delta[stats + row] = dlt[hr];
        }
    }
    float dq_acc[HD / 8][4] = {};
    const int num_kb = (int)ceil_div(min(q0 + BM, T), BN);
    for (int kb = 0; kb < num_kb; kb++) {
        if (kb + 1 < num_kb) {
            load_tile<BN, HD, DQ_THREADS>(Ks + ((kb + 1) & 1) * TILE_KV, k + head, stride, (kb + 1) * BN, T);
            load_tile<BN, HD, DQ_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (rope) {  // the tiles that just landed: Q once, each K block
            if (kb == 0) rope_tile<BM, HD, DQ_THREADS>(Qs, rope, q0, T);
            rope_tile<BN, HD, DQ_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN, T);
            __syncthreads();
        }
        const unsigned char* Kt = Ks + (kb & 1) * TILE_KV;
        const unsigned char* Vt = Vs + (kb & 1) * TILE_KV;
        const int k0 = kb * BN;
        if (warp_active && k0 <= qw + 15) {
            float s[BN / 8][4] = {}, dp[BN / 8][4] = {};
            warp_product_rows<HD, BN>(s, Qs, 16 * warp, Kt);   // S = Q K^T
            warp_product_rows<HD, BN>(dp, dOs, 16 * warp, Vt);  // dP = dO V^T
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
            warp_product_cols<HD, BN>(dq_acc, s, Kt);  // dQ += dS K
        }
        __syncthreads();  // before the next iteration's copy overwrites this buffer
    }
    if (!warp_active) return;
    if (rope) rope_turn_back<HD>(dq_acc, rope, qw, T);
    const float one[2] = {1.0f, 1.0f};
    store_rows<HD>(Qs, 16 * warp, dq_acc, one, dq + ((long)b * T + qw) * dstride + h * HD, dstride, T - qw);
}

// ----------------------------------------------------------------------------
// Launchers

template <int HD>
void forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, long stride, int B, int T,
             int C, int NH, const float2* rope, cudaStream_t stream) {
    constexpr int smem = forward_smem_bytes<HD>();
    allow_smem<attention_forward_kernel<HD>>(smem);
    const dim3 grid(B * NH, (unsigned)ceil_div(T, FWD_BM));
    attention_forward_kernel<HD><<<grid, FWD_THREADS, smem, stream>>>(out, lse, q, k, v, stride, T, C, NH, rope);
    cudaCheck(cudaGetLastError());
}

template <int HD>
void backward(floatX* dq, floatX* dk, floatX* dv, float* delta, const floatX* dout, const floatX* out, const float* lse,
              const floatX* q, const floatX* k, const floatX* v, long stride, long dstride, int B, int T, int C, int NH,
              const float2* rope, cudaStream_t stream) {
    allow_smem<attention_backward_dq_kernel<HD>>(dq_smem_bytes<HD>());
    attention_backward_dq_kernel<HD><<<dim3(B * NH, (unsigned)ceil_div(T, DQ_BM)), DQ_THREADS, dq_smem_bytes<HD>(),
                                       stream>>>(dq, delta, dout, out, lse, q, k, v, stride, dstride, T, C, NH, rope);
    cudaCheck(cudaGetLastError());
    allow_smem<attention_backward_dkdv_kernel<HD>>(dkdv_smem_bytes<HD>());
    attention_backward_dkdv_kernel<HD><<<dim3(B * NH, (unsigned)ceil_div(T, BWD_BN)), BWD_THREADS, dkdv_smem_bytes<HD>(),
                                         stream>>>(dk, dv, dout, lse, delta, q, k, v, stride, dstride, T, C, NH, rope);
    cudaCheck(cudaGetLastError());
}

// Calls f(std::integral_constant<int, HD>()) for the head dimension C / NH, one of 16, 32, ..., 128;
// exits naming it if it is none of them.
template <int HD = 16, typename F>
void with_head_dim(int C, int NH, F&& f) {
    if constexpr (HD <= 128) {
        if (C == HD * NH) f(std::integral_constant<int, HD>());
        else with_head_dim<HD + 16>(C, NH, f);
    } else {
        fprintf(stderr, "attention: %d heads of d %d: the head dimension must be a multiple of 16 up to 128\n", NH, C);
        exit(EXIT_FAILURE);
    }
}

}  // namespace attention_detail

// The head dimensions the kernels are built for: multiples of 16 (the mma's k) up to 128.
inline bool attention_head_dim_supported(int hd) { return hd >= 16 && hd <= 128 && hd % 16 == 0; }

// out (B, T, C) and lse (B, NH, T) from q, k, v with rows of `stride` elements (C, or 3C when fused).
// rope: RoPE's (cos, sin) table of at least T positions (rope_table_init), turning q and k as they are
// read; nullptr: q and k are used as they are.
inline void attention_forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, long stride,
                              int B, int T, int C, int NH, const float2* rope, cudaStream_t stream) {
    attention_detail::with_head_dim(C, NH, [&](auto hd) {
        attention_detail::forward<decltype(hd)::value>(out, lse, q, k, v, stride, B, T, C, NH, rope, stream);
    });
}

// Writes (does not accumulate) dq, dk, dv with rows of `dstride` elements; delta is (B, NH, T) fp32
// scratch. out and lse are the forward's, q, k, v and rope the forward's inputs: with rope, dq and dk
// are the gradients with respect to the unturned q and k.
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, float* delta, const floatX* dout, const floatX* out,
                               const float* lse, const floatX* q, const floatX* k, const floatX* v, long stride,
                               long dstride, int B, int T, int C, int NH, const float2* rope, cudaStream_t stream) {
    attention_detail::with_head_dim(C, NH, [&](auto hd) {
        attention_detail::backward<decltype(hd)::value>(dq, dk, dv, delta, dout, out, lse, q, k, v, stride, dstride, B, T, C,
                                                        NH, rope, stream);
    });
}
