// Version 1 of the causal flash attention (dev/attention.cu), the trainer's until the register-level
// kernels of kernels/attention.cuh replaced it: kept as the simple version to compare against. Flash
// style (Dao et al., 2022): tiled over queries and keys with an online softmax; interface and layouts as
// kernels/attention.cuh.
//
// Every block works on one (batch, head) pair and one tile of TILE rows (queries in the forward and in
// the dq kernel, keys in the dk/dv kernel). The tile products run on tensor cores (WMMA, bf16 in,
// fp32 accumulate) from shared memory, the scores through fp32 shared memory, the softmax one warp per
// row, the tiles loaded element by element; in the fp32 build (-DENABLE_FP32) the same products run
// as plain fp32 FMAs. Any T; head dimensions: multiples of 16 (WMMA's tile edge) from 16 to 128.
//
// The backward avoids atomics, so it is deterministic: one kernel per key tile accumulates dk and dv
// over the query tiles, another per query tile accumulates dq over the key tiles. Both recompute the
// probabilities P = exp(s - lse): 7 tile products per tile pair. delta = rowsum(dout * out) is
// kernels/attention.cuh's kernel.
#pragma once
#include <mma.h>
#include "../kernels/attention.cuh"

namespace attention_v1 {

// delta[b,h,t] = sum_d dout[t,d] * out[t,d]: the row term of the softmax backward, dS = P * (dP -
// delta), since sum_j P_j dP_j = dout . (sum_j P_j v_j) = dout . out. One warp per row, a kernel of its
// own (kernels/attention.cuh makes it in its dQ kernel instead).
constexpr int DELTA_THREADS = 128;
template <int HD>
__global__ void attention_delta_kernel(float* delta, const floatX* out, const floatX* dout, int B, int T, int C, int NH) {
    const long row = (long)blockIdx.x * (DELTA_THREADS / 32) + threadIdx.x / 32;  // over (b, h, t)
    if (row >= (long)B * NH * T) return;
    const int t = row % T, h = (row / T) % NH, b = row / ((long)T * NH);
    const long base = ((long)b * T + t) * C + h * HD;
    float sum = 0.0f;
    for (int c = threadIdx.x % 32; c < HD; c += 32) sum += (float)dout[base + c] * (float)out[base + c];
    sum = warp_reduce_sum(sum);
    if (threadIdx.x % 32 == 0) delta[row] = sum;
}

// Rows of a query or key tile: 64 in bf16; 32 in the fp32 build, whose fp32 tiles would not fit the
// 227 KB of shared memory an H100 block can have at head dimension 128.
constexpr int TILE = FLOATX_IS_FP32 ? 32 : 64;
constexpr int THREADS = 128;  // 4 warps
constexpr int WARPS = THREADS / 32;

// C (M x N, fp32, leading dimension ldc) = or += A (M x K) B (K x N), all in shared memory. A is read
// as A[m*lda + k], or A[k*lda + m] when A_T; B as B[k*ldb + n], or B[n*ldb + k] when B_T. M, N, K are
// multiples of 16. Ends with a barrier.
template <int M, int N, int K, bool A_T, bool B_T>
__device__ void smem_gemm(float* C, int ldc, const floatX* A, int lda, const floatX* B, int ldb, bool accumulate) {
    if constexpr (FLOATX_IS_FP32) {
        for (int idx = threadIdx.x; idx < M * N; idx += blockDim.x) {
            const int m = idx / N, n = idx % N;
            float sum = accumulate ? C[m * ldc + n] : 0.0f;
            for (int k = 0; k < K; k++)
                sum += (float)A[A_T ? k * lda + m : m * lda + k] * (float)B[B_T ? n * ldb + k : k * ldb + n];
            C[m * ldc + n] = sum;
        }
    } else {
        using namespace nvcuda;
        using LayoutA = typename std::conditional<A_T, wmma::col_major, wmma::row_major>::type;
        using LayoutB = typename std::conditional<B_T, wmma::col_major, wmma::row_major>::type;
        const int warp = threadIdx.x / 32;
        for (int tile = warp; tile < (M / 16) * (N / 16); tile += blockDim.x / 32) {
            const int m0 = (tile / (N / 16)) * 16, n0 = (tile % (N / 16)) * 16;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
            if (accumulate) wmma::load_matrix_sync(c, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
            else wmma::fill_fragment(c, 0.0f);
            for (int k0 = 0; k0 < K; k0 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> b;
                wmma::load_matrix_sync(a, A + (A_T ? k0 * lda + m0 : m0 * lda + k0), lda);
                wmma::load_matrix_sync(b, B + (B_T ? n0 * ldb + k0 : k0 * ldb + n0), ldb);
                wmma::mma_sync(c, a, b, c);
            }
            wmma::store_matrix_sync(C + m0 * ldc + n0, c, ldc, wmma::mem_row_major);
        }
    }
    __syncthreads();
}

// Copies rows [row0, row0 + TILE) of one head (HD columns) into a TILE x HD shared tile, zero past T.
template <int HD>
__device__ void load_tile(floatX* tile, const floatX* src, long stride, int row0, int T) {
    for (int idx = threadIdx.x; idx < TILE * HD; idx += blockDim.x) {
        const int r = idx / HD, c = idx % HD;
        tile[idx] = row0 + r < T ? src[(long)(row0 + r) * stride + c] : (floatX)0.0f;
    }
}

// Shared memory of the forward: the Q, K, V tiles (floatX), S and O (fp32), P (floatX), row max and sum.
template <int HD>
constexpr size_t forward_smem_bytes() {
    return 3 * TILE * HD * sizeof(floatX) + TILE * TILE * sizeof(float) + TILE * HD * sizeof(float) +
           TILE * TILE * sizeof(floatX) + 2 * TILE * sizeof(float);
}

// Grid: (ceil(T / TILE), B * NH). One block: queries [q0, q0 + TILE) of one (b, h).
template <int HD>
__global__ void __launch_bounds__(THREADS) attention_forward_kernel(floatX* out, float* lse, const floatX* q,
                                                                     const floatX* k, const floatX* v, long stride,
                                                                     int T, int C, int NH) {
    extern __shared__ __align__(128) unsigned char smem[];
    floatX* Qs = (floatX*)smem;
    floatX* Ks = Qs + TILE * HD;
    floatX* Vs = Ks + TILE * HD;
    float* S = (float*)(Vs + TILE * HD);   // TILE x TILE scores, then probabilities
    float* O = S + TILE * TILE;            // TILE x HD unnormalized output
    floatX* P = (floatX*)(O + TILE * HD);  // TILE x TILE probabilities in floatX for the P V product
    float* row_max = (float*)(P + TILE * TILE);
    float* row_sum = row_max + TILE;

    const int q0 = blockIdx.x * TILE, b = blockIdx.y / NH, h = blockIdx.y % NH;
    const long head = (long)b * T * stride + h * HD;
    const float scale = rsqrtf((float)HD);
    load_tile<HD>(Qs, q + head, stride, q0, T);
    for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) O[i] = 0.0f;
    for (int i = threadIdx.x; i < TILE; i += blockDim.x) { row_max[i] = -INFINITY; row_sum[i] = 0.0f; }
    __syncthreads();

    const int last_key = min(q0 + TILE, T) - 1;  // causal: no key after the tile's last query
    for (int k0 = 0; k0 <= last_key; k0 += TILE) {
        load_tile<HD>(Ks, k + head, stride, k0, T);
        load_tile<HD>(Vs, v + head, stride, k0, T);
        __syncthreads();
        smem_gemm<TILE, TILE, HD, false, true>(S, TILE, Qs, HD, Ks, HD, false);  // S = Q K^T
        // Online softmax, one warp per row: the running max m and sum l absorb this tile, and the
        // output so far is rescaled by exp(m_old - m_new) (FlashAttention, Algorithm 1).
        for (int r = threadIdx.x / 32; r < TILE; r += WARPS) {
            const int lane = threadIdx.x % 32, qi = q0 + r;
            float local_max = -INFINITY;
            for (int c = lane; c < TILE; c += 32) {
                const int kj = k0 + c;
                const float s = (kj <= qi && kj < T) ? S[r * TILE + c] * scale : -INFINITY;
                S[r * TILE + c] = s;
                local_max = fmaxf(local_max, s);
            }
            const float m_old = row_max[r];
            const float m_new = fmaxf(m_old, warp_reduce(local_max, [](float a, float x) { return fmaxf(a, x); }));
            // a row with no visible key yet (only rows past T) keeps m = -inf: use 0 to avoid inf - inf
            const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
            float local_sum = 0.0f;
            for (int c = lane; c < TILE; c += 32) {
                const float p = __expf(S[r * TILE + c] - m_safe);
                P[r * TILE + c] = (floatX)p;
                local_sum += p;
            }
            const float correction = __expf(m_old - m_safe);
            const float tile_sum = warp_reduce_sum(local_sum);
            for (int c = lane; c < HD; c += 32) O[r * HD + c] *= correction;
            __syncwarp();  // every lane has read row_max[r] (m_old) before lane 0 overwrites it
            if (lane == 0) { row_max[r] = m_new; row_sum[r] = row_sum[r] * correction + tile_sum; }
        }
        __syncthreads();
        smem_gemm<TILE, HD, TILE, false, false>(O, HD, P, TILE, Vs, HD, true);  // O += P V
    }
    for (int idx = threadIdx.x; idx < TILE * HD; idx += blockDim.x) {
        const int r = idx / HD, c = idx % HD;
        if (q0 + r < T) out[((long)b * T + q0 + r) * C + h * HD + c] = (floatX)(O[idx] / row_sum[r]);
    }
    for (int r = threadIdx.x; r < TILE; r += blockDim.x)
        if (q0 + r < T) lse[((long)b * NH + h) * T + q0 + r] = row_max[r] + logf(row_sum[r]);
}

// Shared memory of both backward kernels: four floatX tiles (Q, K, V, dO), one fp32 TILE x TILE
// buffer (the scores, then dP), the probabilities and dS (floatX), two fp32 accumulators for this
// block's gradients (the dq kernel uses one), lse and delta.
template <int HD>
constexpr size_t backward_smem_bytes() {
    return 4 * TILE * HD * sizeof(floatX) + TILE * TILE * sizeof(float) + 2 * TILE * TILE * sizeof(floatX) +
           2 * TILE * HD * sizeof(float) + 2 * TILE * sizeof(float);
}

// The backward kernels' shared memory, as laid out by backward_smem_bytes.
template <int HD>
struct BackwardTiles {
    floatX *Qs, *Ks, *Vs, *dOs;  // TILE x HD each
    float* SdP;                  // TILE x TILE: the scores, then dP
    floatX *P, *dS;              // TILE x TILE each
    float* acc;                  // 2 x TILE x HD: the block's gradient accumulators
    float *lse_tile, *delta_tile;  // TILE each

    __device__ explicit BackwardTiles(unsigned char* smem) {
        Qs = (floatX*)smem;
        Ks = Qs + TILE * HD;
        Vs = Ks + TILE * HD;
        dOs = Vs + TILE * HD;
        SdP = (float*)(dOs + TILE * HD);
        P = (floatX*)(SdP + TILE * TILE);
        dS = P + TILE * TILE;
        acc = (float*)(dS + TILE * TILE);
        lse_tile = acc + 2 * TILE * HD;
        delta_tile = lse_tile + TILE;
    }
};

// Recomputes, for query tile q0 and key tile k0 already in shared memory, P = exp(s - lse) (masked)
// and dS = P * (dP - delta) * scale with dP = dO V^T, both as floatX for the next products. SdP holds
// the scores, then dP. dS uses P as rounded to floatX (exact in the fp32 build; in bf16 a 2^-8
// relative rounding, the same the P^T dO product already sees).
template <int HD>
__device__ void probabilities_and_dscores(floatX* P, floatX* dS, float* SdP, const floatX* Qs, const floatX* Ks,
                                          const floatX* Vs, const floatX* dOs, const float* lse_tile,
                                          const float* delta_tile, int q0, int k0, int T) {
    const float scale = rsqrtf((float)HD);
    smem_gemm<TILE, TILE, HD, false, true>(SdP, TILE, Qs, HD, Ks, HD, false);  // S = Q K^T
    for (int idx = threadIdx.x; idx < TILE * TILE; idx += blockDim.x) {
        const int r = idx / TILE, c = idx % TILE, qi = q0 + r, kj = k0 + c;
        const bool visible = qi < T && kj < T && kj <= qi;
        P[idx] = (floatX)(visible ? __expf(SdP[idx] * scale - lse_tile[r]) : 0.0f);
    }
    __syncthreads();
    smem_gemm<TILE, TILE, HD, false, true>(SdP, TILE, dOs, HD, Vs, HD, false);  // dP = dO V^T
    for (int idx = threadIdx.x; idx < TILE * TILE; idx += blockDim.x) {
        const int r = idx / TILE;
        dS[idx] = (floatX)((float)P[idx] * (SdP[idx] - delta_tile[r]) * scale);
    }
    __syncthreads();
}

template <int HD>
__device__ void load_row_stats(float* lse_tile, float* delta_tile, const float* lse, const float* delta, int q0, int T) {
    for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        lse_tile[r] = q0 + r < T ? lse[q0 + r] : 0.0f;
        delta_tile[r] = q0 + r < T ? delta[q0 + r] : 0.0f;
    }
}

// Grid: (ceil(T / TILE), B * NH). One block: keys [k0, k0 + TILE) of one (b, h); sums over the query
// tiles that can see them: dV = sum_i P_i^T dO_i,  dK = sum_i dS_i^T Q_i.
template <int HD>
__global__ void __launch_bounds__(THREADS) attention_backward_dkdv_kernel(floatX* dk, floatX* dv, const floatX* dout,
                                                                           const float* lse, const float* delta, const floatX* q,
                                                                           const floatX* k, const floatX* v, long stride,
                                                                           long dstride, int T, int C, int NH) {
    extern __shared__ __align__(128) unsigned char smem[];
    BackwardTiles<HD> t(smem);
    float* dK = t.acc;
    float* dV = t.acc + TILE * HD;

    const int k0 = blockIdx.x * TILE, b = blockIdx.y / NH, h = blockIdx.y % NH;
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    load_tile<HD>(t.Ks, k + head, stride, k0, T);
    load_tile<HD>(t.Vs, v + head, stride, k0, T);
    for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) { dK[i] = 0.0f; dV[i] = 0.0f; }
    for (int q0 = k0; q0 < T; q0 += TILE) {  // causal: query tiles before k0 see none of these keys
        load_tile<HD>(t.Qs, q + head, stride, q0, T);
        load_tile<HD>(t.dOs, dout + out_head, C, q0, T);
        load_row_stats<HD>(t.lse_tile, t.delta_tile, lse + stats, delta + stats, q0, T);
        __syncthreads();
        probabilities_and_dscores<HD>(t.P, t.dS, t.SdP, t.Qs, t.Ks, t.Vs, t.dOs, t.lse_tile, t.delta_tile, q0, k0, T);
        smem_gemm<TILE, HD, TILE, true, false>(dV, HD, t.P, TILE, t.dOs, HD, true);  // dV += P^T dO
        smem_gemm<TILE, HD, TILE, true, false>(dK, HD, t.dS, TILE, t.Qs, HD, true);  // dK += dS^T Q
    }
    for (int idx = threadIdx.x; idx < TILE * HD; idx += blockDim.x) {
        const int r = idx / HD, c = idx % HD;
        if (k0 + r >= T) continue;
        const long o = ((long)b * T + k0 + r) * dstride + h * HD + c;
        dk[o] = (floatX)dK[idx];
        dv[o] = (floatX)dV[idx];
    }
}

// Grid: (ceil(T / TILE), B * NH). One block: queries [q0, q0 + TILE); dQ = sum_j dS_j K_j over the
// key tiles up to the diagonal.
template <int HD>
__global__ void __launch_bounds__(THREADS) attention_backward_dq_kernel(floatX* dq, const floatX* dout, const float* lse,
                                                                         const float* delta, const floatX* q, const floatX* k,
                                                                         const floatX* v, long stride, long dstride,
                                                                         int T, int C, int NH) {
    extern __shared__ __align__(128) unsigned char smem[];
    BackwardTiles<HD> t(smem);
    float* dQ = t.acc;

    const int q0 = blockIdx.x * TILE, b = blockIdx.y / NH, h = blockIdx.y % NH;
    const long head = (long)b * T * stride + h * HD, out_head = (long)b * T * C + h * HD;
    const long stats = ((long)b * NH + h) * T;
    load_tile<HD>(t.Qs, q + head, stride, q0, T);
    load_tile<HD>(t.dOs, dout + out_head, C, q0, T);
    load_row_stats<HD>(t.lse_tile, t.delta_tile, lse + stats, delta + stats, q0, T);
    for (int i = threadIdx.x; i < TILE * HD; i += blockDim.x) dQ[i] = 0.0f;
    for (int k0 = 0; k0 < min(q0 + TILE, T); k0 += TILE) {
        load_tile<HD>(t.Ks, k + head, stride, k0, T);
        load_tile<HD>(t.Vs, v + head, stride, k0, T);
        __syncthreads();
        probabilities_and_dscores<HD>(t.P, t.dS, t.SdP, t.Qs, t.Ks, t.Vs, t.dOs, t.lse_tile, t.delta_tile, q0, k0, T);
        smem_gemm<TILE, HD, TILE, false, false>(dQ, HD, t.dS, TILE, t.Ks, HD, true);  // dQ += dS K
    }
    for (int idx = threadIdx.x; idx < TILE * HD; idx += blockDim.x) {
        const int r = idx / HD, c = idx % HD;
        if (q0 + r < T) dq[((long)b * T + q0 + r) * dstride + h * HD + c] = (floatX)dQ[idx];
    }
}

template <int HD>
void forward(floatX* out, float* lse, const floatX* q, const floatX* k, const floatX* v, long stride, int B, int T,
             int C, int NH, cudaStream_t stream) {
    const size_t smem = forward_smem_bytes<HD>();
    allow_smem<attention_forward_kernel<HD>>(smem);
    const dim3 grid((unsigned)ceil_div(T, TILE), B * NH);
    attention_forward_kernel<HD><<<grid, THREADS, smem, stream>>>(out, lse, q, k, v, stride, T, C, NH);
    cudaCheck(cudaGetLastError());
}

template <int HD>
void backward(floatX* dq, floatX* dk, floatX* dv, float* delta, const floatX* dout, const floatX* out, const float* lse,
              const floatX* q, const floatX* k, const floatX* v, long stride, long dstride, int B, int T, int C, int NH,
              cudaStream_t stream) {
    attention_delta_kernel<HD><<<(unsigned)ceil_div((long)B * NH * T, DELTA_THREADS / 32), DELTA_THREADS, 0, stream>>>(
        delta, out, dout, B, T, C, NH);
    cudaCheck(cudaGetLastError());
    const size_t smem = backward_smem_bytes<HD>();
    allow_smem<attention_backward_dkdv_kernel<HD>>(smem);
    allow_smem<attention_backward_dq_kernel<HD>>(smem);
    const dim3 grid((unsigned)ceil_div(T, TILE), B * NH);
    attention_backward_dkdv_kernel<HD><<<grid, THREADS, smem, stream>>>(dk, dv, dout, lse, delta, q, k, v, stride, dstride, T, C, NH);
    cudaCheck(cudaGetLastError());
    attention_backward_dq_kernel<HD><<<grid, THREADS, smem, stream>>>(dq, dout, lse, delta, q, k, v, stride, dstride, T, C, NH);
    cudaCheck(cudaGetLastError());
}

}  // namespace attention_v1
