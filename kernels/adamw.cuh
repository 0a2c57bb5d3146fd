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

// One thread per parameter i, with p the fp32 weight (master_params[i], or params[i] when null):
//   g = grad_scale * grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (wd * p + (m / bc1) / (sqrt(v / bc2) + eps)),   bc1 = 1 - b1^t,  bc2 = 1 - b2^t
// With s->skip set (a non-finite gradient norm) it writes nothing: weights, master weights and
// moments keep their bits.
__global__ void adamw_kernel(floatX* params, float* master_params, const float* grads, float* m, float* v, long n,
                             const AdamWScalars* s) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || s->skip) return;
    const float lr = s->lr, beta1 = s->beta1, beta2 = s->beta2, bc1 = s->bias_correction1,
                bc2 = s->bias_correction2, eps = s->eps, weight_decay = s->weight_decay;
    const float g = s->grad_scale * grads[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = master_params ? master_params[i] : (float)params[i];
    p -= lr * (weight_decay * p + (mi / bc1) / (sqrtf(vi / bc2) + eps));
    if (master_params) master_params[i] = p;
    params[i] = (floatX)p;
}

// Stage 1 of the norm: block b adds up g^2 over its grid-strided elements (a fixed set and order per
// thread), reduces over the block, and writes partial[b].
__global__ void grad_norm_partial_kernel(float* partial, const float* grads, long n) {
    float sum_sq = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float g = grads[i];
        sum_sq += g * g;
    }
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

// Stage 1 of the norm: the partial sums of grads^2 into scratch (GRAD_NORM_BLOCKS floats of device
// memory). Returns how many there are, which depends only on n. Data parallelism sums the partials
// of equal slices over the ranks (element by element) before stage 2.
inline int grad_norm_partials(float* scratch, const float* grads, long n, cudaStream_t stream) {
    const int grid = (int)std::min<long>(ceil_div(n, GRAD_NORM_BLOCK_SIZE), GRAD_NORM_BLOCKS);
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
    const int block = 256;
    adamw_kernel<<<ceil_div(n, block), block, 0, stream>>>(params, master_params, grads, m, v, n, scalars);
    cudaCheck(cudaGetLastError());
}
