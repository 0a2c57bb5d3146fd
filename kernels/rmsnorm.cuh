// RMSNorm on the GPU, alone and fused with the residual add of either layer ordering.
// CPU references: kernels/cpu/rmsnorm.h and kernels/cpu/residual.h.
//   rstd = 1 / sqrt(mean(in^2) + eps),   out = in * rstd * w
// The two orderings (the paper's eq. 1 and 2) need the same fused pair with different bookkeeping:
//   Pre-LN   h = x + f;  n = rmsnorm(h)        forward writes h (the residual stream) and n
//            backward: dh = dh_residual + rmsnorm_backward(dn)          (rmsnorm_backward, accumulating)
//   Post-LN  y = rmsnorm(s*x + f(x))           forward keeps the sum s*x + f for the backward
//            backward: dsum = rmsnorm_backward(dy) = df; dx = s*dsum + f'(x)^T dsum is not formed
//            here: the layer's GEMM writes the second term, and the next norm backward adds s*dsum
//            to it as it reads it, dy = dout + s*dres (residual_rmsnorm_backward)
// so one forward kernel (optional residual) and one backward kernel (optional accumulation and second
// incoming gradient) serve both. dweight is fp32 (the weight gradients are, in both builds) and
// deterministic: each block sums its rows into an fp32 partial row, and a second kernel adds the
// partial rows in block order; no atomics.
#pragma once
#include "common.cuh"

// One warp per row n:  in = s * x + f  (in = x when f is null), then  out = in * rstd * w.
// With f, in is rounded to floatX and stored to sum first, so the norm, its backward and the stored
// sum all see the same values.
__global__ void rmsnorm_forward_kernel(floatX* out, float* rstd, floatX* sum, const floatX* x, const floatX* f,
                                       const floatX* w, float s, int N, int C, float eps) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (n >= N) return;  // the whole warp leaves together
    const long row = (long)n * C;
    float sum_sq = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float v = (float)x[row + c];
        if (f) {
            const floatX stored = (floatX)(s * v + (float)f[row + c]);
            sum[row + c] = stored;
            v = (float)stored;
        }
        sum_sq += v * v;
    }
    const float r = rsqrtf(warp_reduce_sum(sum_sq) / C + eps);
    if (lane == 0) rstd[n] = r;
    const floatX* in = f ? sum : x;  // each lane rereads only the elements it wrote itself
    for (int c = lane; c < C; c += 32) out[row + c] = (floatX)((float)in[row + c] * r * (float)w[c]);
}

// Block b handles rows b, b + gridDim.x, ... For each row, with dy = dout + s * dres (dres null: dy =
// dout), xhat = in * rstd and g = dy * w:
//   d = rstd * (g - xhat * mean(g * xhat))           (as kernels/cpu/rmsnorm.h)
//   dinp = d + (accumulate ? dinp : 0)
// and each thread adds dy * xhat of its own columns into the block's shared fp32 dweight row
// (blockDim.x * k + threadIdx.x: no two threads share a slot), written out as dw_partial[b] at the end.
// dinp may alias dout or dres: a thread writes only the elements it has read, after the row's
// reduction (a barrier) ends every read of the first pass.
__global__ void rmsnorm_backward_kernel(floatX* dinp, float* dw_partial, const floatX* dout, const floatX* dres,
                                        float s, const floatX* inp, const floatX* w, const float* rstd,
                                        bool accumulate, int N, int C) {
    extern __shared__ float dw_row[];  // C floats
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_row[c] = 0.0f;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const long row = (long)n * C;
        const float r = rstd[n];
        auto dy_at = [&](int c) { return (float)dout[row + c] + (dres ? s * (float)dres[row + c] : 0.0f); };
        float dot = 0.0f;  // sum_c g_c * xhat_c, without the common factor r
        for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dy_at(c) * (float)w[c] * (float)inp[row + c];
        const float mean_dot = block_reduce_sum(dot) * r / C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float dy = dy_at(c);
            const float xhat = (float)inp[row + c] * r;
            float d = r * (dy * (float)w[c] - xhat * mean_dot);
            if (accumulate) d += (float)dinp[row + c];
            dinp[row + c] = (floatX)d;
            dw_row[c] += dy * xhat;
        }
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_partial[(long)blockIdx.x * C + c] = dw_row[c];
}

// dw[c] += sum over b = 0, 1, ..., num_partials - 1 of dw_partial[b, c]: a fixed order.
__global__ void rmsnorm_dweight_kernel(float* dw, const float* dw_partial, int num_partials, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int b = 0; b < num_partials; b++) sum += dw_partial[(long)b * C + c];
    dw[c] += sum;
}

// ----------------------------------------------------------------------------
// Launchers. rstd is (N) fp32; N rows of C.

// out = rmsnorm(inp) * w: Pre-LN's norm of the embedding output, and the final norm.
inline void rmsnorm_forward(floatX* out, float* rstd, const floatX* inp, const floatX* w, int N, int C, float eps,
                            cudaStream_t stream) {
    const int block = 256;
    rmsnorm_forward_kernel<<<ceil_div(N, block / 32), block, 0, stream>>>(out, rstd, nullptr, inp, nullptr, w,
                                                                           1.0f, N, C, eps);
    cudaCheck(cudaGetLastError());
}

// sum = s * x + f,  out = rmsnorm(sum) * w: Pre-LN (s = 1, sum is the residual stream h) and Post-LN
// (sum is kept as the norm's input for the backward; s != 1 for DeepNorm).
inline void residual_rmsnorm_forward(floatX* sum, floatX* out, float* rstd, const floatX* x, const floatX* f,
                                     const floatX* w, float s, int N, int C, float eps, cudaStream_t stream) {
    const int block = 256;
    rmsnorm_forward_kernel<<<ceil_div(N, block / 32), block, 0, stream>>>(out, rstd, sum, x, f, w, s, N, C, eps);
    cudaCheck(cudaGetLastError());
}

// At most this many blocks in the backward, so the dweight scratch holds this many fp32 rows of C.
constexpr int RMSNORM_BACKWARD_BLOCKS = 512;
inline long rmsnorm_backward_scratch_floats(int C) { return (long)RMSNORM_BACKWARD_BLOCKS * C; }

// Both backward launchers: the kernel, then the dweight reduction over its blocks. The grid depends
// only on N, so two runs on the same inputs add the same partials in the same order.
inline void launch_rmsnorm_backward(floatX* dinp, float* dw, float* scratch, const floatX* dout, const floatX* dres,
                                    float s, const floatX* inp, const floatX* w, const float* rstd, bool accumulate,
                                    int N, int C, cudaStream_t stream) {
    const int block = 256;
    const int grid = N < RMSNORM_BACKWARD_BLOCKS ? N : RMSNORM_BACKWARD_BLOCKS;
    rmsnorm_backward_kernel<<<grid, block, C * sizeof(float), stream>>>(dinp, scratch, dout, dres, s, inp, w, rstd,
                                                                         accumulate, N, C);
    cudaCheck(cudaGetLastError());
    rmsnorm_dweight_kernel<<<ceil_div(C, block), block, 0, stream>>>(dw, scratch, grid, C);
    cudaCheck(cudaGetLastError());
}

// dinp = rmsnorm_backward(dout) + (accumulate ? dinp : 0),  dw (fp32) += dweight.  accumulate is Pre-LN's
// dh = dh_residual + norm backward; without it, the final norm's backward (dinp needs no zeroing).
// scratch: rmsnorm_backward_scratch_floats(C) floats.
inline void rmsnorm_backward(floatX* dinp, float* dw, float* scratch, const floatX* dout, const floatX* inp,
                             const floatX* w, const float* rstd, bool accumulate, int N, int C, cudaStream_t stream) {
    launch_rmsnorm_backward(dinp, dw, scratch, dout, nullptr, 1.0f, inp, w, rstd, accumulate, N, C, stream);
}

// Post-LN, the backward of y = rmsnorm(sum), sum = s * x + f: writes dsum (= df), dw (fp32) += dweight.
// y feeds the next sublayer and, scaled by s, the next Post-LN norm's sum, so its gradient arrives in
// two parts, dy = dout + s * dres: dout through the sublayer's input product, dres the next norm's
// dsum (null where y has no such second use: dy = dout). dsum may be dres's buffer (in place).
inline void residual_rmsnorm_backward(floatX* dsum, float* dw, float* scratch, const floatX* dout, const floatX* dres,
                                      float s, const floatX* sum, const floatX* w, const float* rstd, int N, int C,
                                      cudaStream_t stream) {
    launch_rmsnorm_backward(dsum, dw, scratch, dout, dres, s, sum, w, rstd, false, N, C, stream);
}
