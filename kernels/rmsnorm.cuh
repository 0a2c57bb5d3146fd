// RMSNorm on the GPU. CPU reference: kernels/cpu/rmsnorm.h.
//   rstd = 1 / sqrt(mean(in^2) + eps),   out = in * rstd * w
// Both layer orderings (the paper's eq. 1 and 2) norm a sum that the sublayer's output product has
// already formed and stored (the residual in its epilogue, kernels/matmul.cuh), so the forward reads
// one tensor and the backward writes the gradient of the norm's input, or adds it to a residual's
// (Pre-LN: dh = d out + rmsnorm_backward(dn)). dweight is fp32 (the weight gradients are, in both
// builds) and deterministic: each block sums its rows into an fp32 partial row, and a second kernel
// adds the partial rows by a fixed tree; no atomics.
//
// Memory access: one warp per row, each lane moving 128 bits (VEC elements) at a time, so a warp's
// step covers 512 contiguous bytes (LDG.E.128 / STG.E.128). Lane `lane` owns the vectors j = lane +
// 32 k (k < VPL) of a row, a compile-time VPL (vectors per lane) of 1, 2, 4, ... chosen from C, so
// the row (forward) or the lane's dweight sums (backward) stay in registers. Preconditions, checked
// at launch: C a multiple of VEC (8 bf16, 4 fp32) and every pointer 16-byte aligned, so that each
// row starts on a 16-byte boundary; C at most RMSNORM_MAX_C. The trainer always meets them: its
// heads are multiples of 16 (the attention kernel's requirement), so C = heads * head size is too,
// and its tensors start on 256-byte boundaries. dev/rmsnorm.cu keeps version 2, one element per
// lane or thread, which has none of these preconditions.
#pragma once
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include "common.cuh"

// The largest C: 128 elements per lane, held in registers (128 dweight sums per lane in the backward:
// 196 registers per thread in bf16, 247 in fp32, no spills; ptxas -v, sm_90a). The presets go to 2048.
constexpr int RMSNORM_MAX_C = 4096;
constexpr int RMSNORM_MAX_VPL = RMSNORM_MAX_C / (32 * VEC);

// Row n's norm from the row in registers (lane `lane` holds the vectors j = lane + 32 k, k < VPL, of
// the row's C / VEC): rstd[n] = 1 / sqrt(mean(in^2) + eps), out = in * rstd * w. Also the end of
// dev/residual.cu's version 2, which forms the row itself.
template <int VPL>
__device__ inline void rmsnorm_row(floatX* out, float* rstd, const PackedX (&in)[VPL], const floatX* w, int n, int C,
                                   float eps) {
    const int lane = threadIdx.x % 32, nvec = C / VEC;
    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        if (lane + 32 * k >= nvec) continue;
#pragma unroll
        for (int e = 0; e < VEC; e++) sum_sq += (float)in[k][e] * (float)in[k][e];
    }
    const float r = rsqrtf(warp_reduce_sum(sum_sq) / C + eps);
    if (lane == 0) rstd[n] = r;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int j = lane + 32 * k;
        if (j >= nvec) continue;
        const PackedX wv = load128(w + j * VEC);
        PackedX o;
#pragma unroll
        for (int e = 0; e < VEC; e++) o[e] = (floatX)((float)in[k][e] * r * (float)wv[e]);
        store128(out + (long)n * C + j * VEC, o);
    }
}

// One warp per row n: the row loaded into registers once, then rmsnorm_row.
template <int VPL>
__global__ void __launch_bounds__(256) rmsnorm_forward_kernel(floatX* out, float* rstd, const floatX* inp,
                                                              const floatX* w, int N, int C, float eps) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (n >= N) return;  // the whole warp leaves together
    PackedX in[VPL];  // the lane's vectors of the row
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int j = lane + 32 * k;
        if (j < C / VEC) in[k] = load128(inp + (long)n * C + j * VEC);
    }
    rmsnorm_row(out, rstd, in, w, n, C, eps);
}

// Warp gw of the grid handles rows gw, gw + (warps in the grid), ... For each row, with dy = dout,
// xhat = in * rstd and g = dy * w:
//   d = rstd * (g - xhat * mean(g * xhat))           (as kernels/cpu/rmsnorm.h)
//   dinp = d + (accumulate ? dinp : 0)
// and each lane adds dy * xhat of its own columns into registers over all the warp's rows. The second
// pass over a row rereads dy and in: the warp read them a moment ago, so they come from L1, and not
// holding them leaves the registers to the dweight sums. At the end the block's warps add their sums
// into a shared row in warp order (fixed), written out as dw_partial[blockIdx.x].
// dinp may alias dout: a lane writes a vector only after it has read it, and no other lane reads
// that vector. The launch bounds' blocks per SM (3, 2, then 1 as VPL grows) give ptxas a register
// budget that holds the dweight sums: with 256 threads alone it spilled two of them in the fp32 build
// at VPL 4 and 16 to fit more blocks (sm_90a: 79 and 120 registers at VPL 4 and 8 in bf16, none spilled).
template <int VPL>
__global__ void __launch_bounds__(256, VPL <= 4 ? 3 : VPL <= 8 ? 2 : 1) rmsnorm_backward_kernel(floatX* dinp, float* dw_partial, const floatX* dout,
                                                               const floatX* inp, const floatX* w, const float* rstd,
                                                               bool accumulate, int N, int C) {
    extern __shared__ float dw_row[];  // C floats
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int nvec = C / VEC;
    float dw_sum[VPL][VEC];
#pragma unroll
    for (int k = 0; k < VPL; k++)
#pragma unroll
        for (int e = 0; e < VEC; e++) dw_sum[k][e] = 0.0f;

    for (int n = blockIdx.x * warps + warp; n < N; n += gridDim.x * warps) {
        const long row = (long)n * C;
        const float r = rstd[n];
        float dot = 0.0f;  // sum_c g_c * in_c (the common factor r applied after the sum)
#pragma unroll
        for (int k = 0; k < VPL; k++) {
            const int j = lane + 32 * k;
            if (j >= nvec) continue;
            const PackedX dy = load128(dout + row + j * VEC), xv = load128(inp + row + j * VEC),
                          wv = load128(w + j * VEC);
#pragma unroll
            for (int e = 0; e < VEC; e++) dot += (float)dy[e] * (float)wv[e] * (float)xv[e];
        }
        const float mean_dot = warp_reduce_sum(dot) * r / C;
#pragma unroll
        for (int k = 0; k < VPL; k++) {
            const int j = lane + 32 * k;
            if (j >= nvec) continue;
            const PackedX dy = load128(dout + row + j * VEC), xv = load128(inp + row + j * VEC),
                          wv = load128(w + j * VEC);
            PackedX prev;
            if (accumulate) prev = load128(dinp + row + j * VEC);
            PackedX d;
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                const float xhat = (float)xv[e] * r;
                float v = r * ((float)dy[e] * (float)wv[e] - xhat * mean_dot);
                if (accumulate) v += (float)prev[e];
                d[e] = (floatX)v;
                dw_sum[k][e] += (float)dy[e] * xhat;
            }
            store128(dinp + row + j * VEC, d);
        }
    }

    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_row[c] = 0.0f;
    __syncthreads();
    for (int turn = 0; turn < warps; turn++) {  // warp 0's sums first, then warp 1's, ...
        if (warp == turn) {
#pragma unroll
            for (int k = 0; k < VPL; k++) {
                const int j = lane + 32 * k;
                if (j >= nvec) continue;
#pragma unroll
                for (int e = 0; e < VEC; e++) dw_row[j * VEC + e] += dw_sum[k][e];
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_partial[(long)blockIdx.x * C + c] = dw_row[c];
}

// dw[c] += sum over b of dw_partial[b, c]. Block x owns the 4 columns c = 4x .. 4x + 3 (one 128-bit load
// of each partial row): thread y adds partial rows y, y + RMSNORM_DW_THREADS, ..., then the block adds its
// threads' sums by a fixed pairwise tree. C / 4 blocks (192 at C = 768, 512 at 2048: every SM busy,
// each thread a few loads from L2, where the partial rows were just written). Deterministic: the order
// of the sums depends only on the number of partial rows.
constexpr int RMSNORM_DW_THREADS = 128;
__global__ void __launch_bounds__(RMSNORM_DW_THREADS) rmsnorm_dweight_kernel(float* dw, const float* dw_partial,
                                                                     int num_partials, int C) {
    __shared__ Packed<float> sums[RMSNORM_DW_THREADS];
    const int c = blockIdx.x * 4, y = threadIdx.x;
    Packed<float> sum = {};
    for (int b = y; b < num_partials; b += RMSNORM_DW_THREADS) {
        const Packed<float> p = load128(dw_partial + (long)b * C + c);
#pragma unroll
        for (int e = 0; e < 4; e++) sum[e] += p[e];
    }
    sums[y] = sum;
    __syncthreads();
    for (int half = RMSNORM_DW_THREADS / 2; half > 0; half /= 2) {
        if (y < half)
#pragma unroll
            for (int e = 0; e < 4; e++) sums[y][e] += sums[y + half][e];
        __syncthreads();
    }
    if (y < 4) dw[c + y] += sums[0][y];
}

// ----------------------------------------------------------------------------
// Launchers. rstd is (N) fp32; N rows of C.

// Exits with a message unless C and the pointers meet the kernels' preconditions (the file's header).
inline void rmsnorm_check_shape(const char* launcher, int C, std::initializer_list<const void*> pointers) {
    uintptr_t bits = 0;
    for (const void* p : pointers) bits |= (uintptr_t)p;
    if (C % VEC == 0 && C <= RMSNORM_MAX_C && bits % 16 == 0) return;
    fprintf(stderr, "%s: C %d must be a multiple of %d and at most %d, and every pointer 16-byte aligned\n", launcher,
            C, VEC, RMSNORM_MAX_C);
    exit(EXIT_FAILURE);
}

// f(std::integral_constant<int, VPL>()) with the smallest VPL of 1, 2, 4, ... whose 32 * VPL vectors
// hold the row's C / VEC.
template <int VPL = 1, typename F>
inline void with_vectors_per_lane(int C, F&& f) {
    if constexpr (VPL < RMSNORM_MAX_VPL) {
        if (C > 32 * VPL * VEC) return with_vectors_per_lane<2 * VPL>(C, f);
    }
    f(std::integral_constant<int, VPL>());
}

// out = rmsnorm(inp) * w
inline void rmsnorm_forward(floatX* out, float* rstd, const floatX* inp, const floatX* w, int N, int C, float eps,
                            cudaStream_t stream) {
    rmsnorm_check_shape("rmsnorm forward", C, {out, inp, w});
    const int block = 256;
    with_vectors_per_lane(C, [&](auto vpl) {
        rmsnorm_forward_kernel<decltype(vpl)::value><<<ceil_div(N, block / 32), block, 0, stream>>>(out, rstd, inp, w,
                                                                                                    N, C, eps);
    });
    cudaCheck(cudaGetLastError());
}

// At most this many blocks in the backward, so the dweight scratch holds this many fp32 rows of C.
constexpr int RMSNORM_BACKWARD_BLOCKS = 512;
inline long rmsnorm_backward_scratch_floats(int C) { return (long)RMSNORM_BACKWARD_BLOCKS * C; }

// dinp = rmsnorm_backward(dout) + (accumulate ? dinp : 0),  dw (fp32) += dweight: the kernel, then the
// dweight reduction over its blocks. accumulate: Pre-LN's dh = d out + norm backward; without it, the
// gradient of a Post-LN norm's sum and the final norm's input (dinp needs no zeroing). scratch:
// rmsnorm_backward_scratch_floats(C) floats. The grid is one full wave (as many blocks as the device
// runs at once: ~396 on 132 SMs at C = 768), at most RMSNORM_BACKWARD_BLOCKS and no more than there
// are rows to give each warp one. It depends only on the device, N and C, so two runs on the same
// inputs add the same partials in the same order.
inline void rmsnorm_backward(floatX* dinp, float* dw, float* scratch, const floatX* dout, const floatX* inp,
                             const floatX* w, const float* rstd, bool accumulate, int N, int C, cudaStream_t stream) {
    rmsnorm_check_shape("rmsnorm backward", C, {dinp, scratch, dout, inp, w});
    const int block = 256;
    const size_t shared = C * sizeof(float);
    int device = 0, sms = 0, grid = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    with_vectors_per_lane(C, [&](auto vpl) {
        constexpr int VPL = decltype(vpl)::value;
        int per_sm = 0;
        cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rmsnorm_backward_kernel<VPL>, block, shared));
        grid = (int)std::min<long>({(long)std::max(per_sm, 1) * sms, RMSNORM_BACKWARD_BLOCKS, ceil_div(N, block / 32)});
        rmsnorm_backward_kernel<VPL><<<grid, block, shared, stream>>>(dinp, scratch, dout, inp, w, rstd, accumulate, N,
                                                                      C);
    });
    cudaCheck(cudaGetLastError());
    rmsnorm_dweight_kernel<<<C / 4, RMSNORM_DW_THREADS, 0, stream>>>(dw, scratch, grid, C);
    cudaCheck(cudaGetLastError());
}
