// The optimizer step on the GPU: the global gradient norm (for clipping) and AdamW (Loshchilov &
// Hutter, 2019) in torch.optim.AdamW's order. CPU reference: kernels/cpu/adamw.h.
// The update works on fp32 weights: in BF16 mode an fp32 master copy, from which the bf16 weights
// are rounded after every step; in FP32 mode the weights themselves, and there is no master copy.
// The gradients are fp32 in both builds.
// The step's scalars (learning rate, bias corrections, the clipping factor) are read from device
// memory (AdamWScalars), not passed by value: the host hands them over without waiting, and a CUDA
// graph that holds the step reads each step's values.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include "common.cuh"
#include "cpu/adamw.h"  // grad_clip_scale

// One step's scalars, in device memory. The host sets all but grad_scale and skip (adamw_step_scalars)
// before the step; grad_clip_kernel sets them from the gradient norm, on the device.
struct AdamWScalars {
    float lr, beta1, beta2, eps, weight_decay;
    float bias_correction1, bias_correction2;  // 1 - beta1^t, 1 - beta2^t
    float grad_scale;                          // the clipping factor every gradient is multiplied by
    double max_norm;                           // clip the norm to this (-g); <= 0: no clipping
    int skip;                                  // 1: the norm is not finite, adamw_kernel changes nothing
};

// The host's part of step t's (1-based) scalars; grad_scale 1 and skip 0 until grad_clip_kernel sets them.
inline AdamWScalars adamw_step_scalars(double lr, int t, double beta1, double beta2, double eps, double weight_decay,
                                       double max_norm) {
    AdamWScalars s;
    s.lr = (float)lr;
    s.beta1 = (float)beta1;
    s.beta2 = (float)beta2;
    s.eps = (float)eps;
    s.weight_decay = (float)weight_decay;
    s.bias_correction1 = (float)(1.0 - std::pow((double)s.beta1, t));
    s.bias_correction2 = (float)(1.0 - std::pow((double)s.beta2, t));
    s.grad_scale = 1.0f;
    s.max_norm = max_norm;
    s.skip = 0;
    return s;
}

// One thread: s->grad_scale = grad_clip_scale(*norm, s->max_norm), the CPU's formula, in double, and
// s->skip = update_skipped(*norm): a norm of inf or NaN skips the update (an inf norm gave a factor of
// 0, and 0 * inf = NaN; a NaN norm a factor of 1). The host sees the same norm in the step's result
// and asks the same question of it, so it knows the update was skipped without another read.
__global__ void grad_clip_kernel(AdamWScalars* s, const float* norm) {
    const double n = (double)*norm;
    s->skip = update_skipped(n) ? 1 : 0;
    s->grad_scale = (float)grad_clip_scale(n, s->max_norm);
}

// One parameter, with p its fp32 weight, m and v its moments (updated in place); returns the new weight:
//   g = grad_scale * grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (wd * p + (m / bc1) / (sqrt(v / bc2) + eps)),   bc1 = 1 - b1^t,  bc2 = 1 - b2^t
__device__ inline float adamw_param(float p, float grad, float& m, float& v, const AdamWScalars& s) {
    const float g = s.grad_scale * grad;
    m = s.beta1 * m + (1.0f - s.beta1) * g;
    v = s.beta2 * v + (1.0f - s.beta2) * g * g;
    return p - s.lr * (s.weight_decay * p + (m / s.bias_correction1) / (sqrtf(v / s.bias_correction2) + s.eps));
}

// Thread t updates the VEC parameters [t VEC, (t + 1) VEC), with p the fp32 weight (master_params,
// or params when null): 128-bit accesses, one vector of floatX weights and VEC / 4 of each fp32 array
// (every array starts 16-byte aligned, which adamw_update checks, and t VEC is a multiple of VEC).
// The thread of the last n % VEC parameters updates them one at a time. With s->skip set (a non-finite
// gradient norm) it writes nothing: weights, master weights and moments keep their bits.
constexpr int ADAMW_F4 = VEC / 4;  // vectors of 4 floats per VEC parameters
__global__ void adamw_kernel(floatX* params, float* master_params, const float* grads, float* m, float* v, long n,
                             const AdamWScalars* scalars) {
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i >= n || scalars->skip) return;
    const AdamWScalars s = *scalars;
    if (i + VEC > n) {
        for (long k = i; k < n; k++) {
            const float p = adamw_param(master_params ? master_params[k] : (float)params[k], grads[k], m[k], v[k], s);
            if (master_params) master_params[k] = p;
            params[k] = (floatX)p;
        }
        return;
    }
    Packed<float> g[ADAMW_F4], mv[ADAMW_F4], vv[ADAMW_F4], p[ADAMW_F4];
    if (master_params) {
#pragma unroll
        for (int q = 0; q < ADAMW_F4; q++) p[q] = load128(master_params + i + 4 * q);
    } else {
        const PackedX px = load128(params + i);
#pragma unroll
        for (int e = 0; e < VEC; e++) p[e / 4][e % 4] = (float)px[e];
    }
#pragma unroll
    for (int q = 0; q < ADAMW_F4; q++) {
        g[q] = load128(grads + i + 4 * q);
        mv[q] = load128(m + i + 4 * q);
        vv[q] = load128(v + i + 4 * q);
    }
    PackedX out;
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        p[e / 4][e % 4] = adamw_param(p[e / 4][e % 4], g[e / 4][e % 4], mv[e / 4][e % 4], vv[e / 4][e % 4], s);
        out[e] = (floatX)p[e / 4][e % 4];
    }
#pragma unroll
    for (int q = 0; q < ADAMW_F4; q++) {
        store128(m + i + 4 * q, mv[q]);
        store128(v + i + 4 * q, vv[q]);
        if (master_params) store128(master_params + i + 4 * q, p[q]);
    }
    store128(params + i, out);
}

// Stage 1 of the norm: block b adds up g^2 over its grid-strided vectors of 4 gradients (128-bit loads,
// four in flight per thread; a fixed set and order per thread), block 0 also over the last n % 4
// gradients; it reduces over the block and writes partial[b]. grads starts 16-byte aligned.
__global__ void grad_norm_partial_kernel(float* partial, const float* grads, long n) {
    const long nvec = n / 4, stride = (long)gridDim.x * blockDim.x;
    float sum_sq = 0.0f;
    long j = (long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; j + 3 * stride < nvec; j += 4 * stride) {
        Packed<float> g[4];
#pragma unroll
        for (int u = 0; u < 4; u++) g[u] = load128(grads + 4 * (j + u * stride));
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int e = 0; e < 4; e++) sum_sq += g[u][e] * g[u][e];
    }
    for (; j < nvec; j += stride) {
        const Packed<float> g = load128(grads + 4 * j);
#pragma unroll
        for (int e = 0; e < 4; e++) sum_sq += g[e] * g[e];
    }
    if (blockIdx.x == 0)
        for (long k = 4 * nvec + threadIdx.x; k < n; k += blockDim.x) sum_sq += grads[k] * grads[k];
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum_sq;
}

// Stage 2: one block adds the partials in a fixed order; norm = sqrt of the total.
__global__ void grad_norm_final_kernel(float* norm, const float* partial, int num_partials) {
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < num_partials; i += blockDim.x) sum_sq += partial[i];
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) *norm = sqrtf(sum_sq);
}

// ----------------------------------------------------------------------------

// At most this many blocks in stage 1; the scratch holds one fp32 partial per block.
constexpr int GRAD_NORM_BLOCKS = 1024;

constexpr int GRAD_NORM_BLOCK_SIZE = 512;

// The 128-bit kernels' precondition: every array they read or write starts 16-byte aligned (cudaMalloc
// gives 256; the trainer's ZeRO-1 slices start at multiples of ZERO_SHARD_ALIGN elements).
inline void require_16_byte_aligned(const void* p, const char* what) {
    if ((uintptr_t)p % 16 != 0) {
        fprintf(stderr, "%s must start 16-byte aligned (128-bit accesses)\n", what);
        exit(EXIT_FAILURE);
    }
}

// Stage 1 of the norm: the partial sums of grads^2 into scratch (GRAD_NORM_BLOCKS floats of device
// memory). Returns how many there are, which depends only on n. Data parallelism sums the partials
// of equal slices over the ranks (element by element) before stage 2.
inline int grad_norm_partials(float* scratch, const float* grads, long n, cudaStream_t stream) {
    require_16_byte_aligned(grads, "grad_norm_partials: the gradients");
    const int grid = (int)std::min<long>(ceil_div(n, 4 * GRAD_NORM_BLOCK_SIZE), GRAD_NORM_BLOCKS);
    grad_norm_partial_kernel<<<grid, GRAD_NORM_BLOCK_SIZE, 0, stream>>>(scratch, grads, n);
    cudaCheck(cudaGetLastError());
    return grid;
}

// Stage 2: *norm (device fp32) = sqrt of the sum of the partials.
inline void grad_norm_from_partials(float* norm, const float* scratch, int num_partials, cudaStream_t stream) {
    grad_norm_final_kernel<<<1, GRAD_NORM_BLOCK_SIZE, 0, stream>>>(norm, scratch, num_partials);
    cudaCheck(cudaGetLastError());
}

// *norm (device fp32) = sqrt(sum of grads^2) over n gradients. The grid depends only on n, so the
// result is bitwise reproducible. scratch: GRAD_NORM_BLOCKS floats of device memory.
inline void global_grad_norm(float* norm, float* scratch, const float* grads, long n, cudaStream_t stream) {
    grad_norm_from_partials(norm, scratch, grad_norm_partials(scratch, grads, n, stream), stream);
}

// The clipping factor of the norm (device fp32, e.g. from global_grad_norm) into scalars->grad_scale.
inline void grad_clip(AdamWScalars* scalars, const float* norm, cudaStream_t stream) {
    grad_clip_kernel<<<1, 1, 0, stream>>>(scalars, norm);
    cudaCheck(cudaGetLastError());
}

// One AdamW step on n parameters, with the scalars (device memory) of adamw_step_scalars and
// grad_clip; none if grad_clip found the norm not finite. master_params: the fp32 master weights in BF16 mode; must be null in FP32 mode, where
// params are updated in place.
inline void adamw_update(floatX* params, float* master_params, const float* grads, float* m, float* v, long n,
                         const AdamWScalars* scalars, cudaStream_t stream) {
    if ((master_params == nullptr) != FLOATX_IS_FP32) {
        fprintf(stderr, "adamw_update: master weights are required in BF16 mode and unused in FP32 mode\n");
        exit(EXIT_FAILURE);
    }
    for (const void* p : {(const void*)params, (const void*)master_params, (const void*)grads, (const void*)m,
                          (const void*)v})
        require_16_byte_aligned(p, "adamw_update: params, master_params, grads, m and v");
    const int block = 256;
    adamw_kernel<<<ceil_div(ceil_div(n, VEC), block), block, 0, stream>>>(params, master_params, grads, m, v, n, scalars);
    cudaCheck(cudaGetLastError());
}
