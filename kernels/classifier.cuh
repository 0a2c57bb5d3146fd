// Softmax + cross-entropy fused on the GPU. CPU reference: kernels/cpu/crossentropy.h.
//   loss_n = logsumexp(z_n) - z_n[target_n],   dz_n = dloss * (softmax(z_n) - onehot(target_n))
// logits (N, V) are read once for the softmax statistics and once more to overwrite them in place with
// their gradient: no probability buffer. Rows whose target is IGNORE_INDEX get loss 0 and gradient 0.
#pragma once
#include "common.cuh"
#include "cpu/crossentropy.h"  // IGNORE_INDEX

// Softmax statistics of a set of logits as (max, sum of exp(z - max)); (-inf, 0) is the empty set.
// Combining two sets rescales both sums to the larger max (the "online softmax" of Milakov & Gimelshein, 2018).
struct SoftmaxCombineOp {
    __device__ float2 operator()(float2 a, float2 b) const {
        const float m = fmaxf(a.x, b.x);
        if (m == -INFINITY) return a;  // both empty: avoid exp(-inf - -inf)
        return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
    }
};

// One block per row n. Each thread folds its strided logits into running (max, sum) statistics, one
// exp per logit; the block combines them; then
//   loss[n] = max + log(sum) - z[target],   and with write_dlogits,  z_i <- dloss * (exp(z_i - max) / sum - [i == target])
__global__ void crossentropy_forward_backward_kernel(floatX* logits, float* losses, const int* targets, int V,
                                                     float dloss, bool write_dlogits) {
    const int n = blockIdx.x;
    floatX* z = logits + (long)n * V;
    const int target = targets[n];
    if (target == IGNORE_INDEX) {  // the same branch for the whole block
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (write_dlogits)
            for (int i = threadIdx.x; i < V; i += blockDim.x) z[i] = (floatX)0.0f;
        return;
    }
    // Read before block_reduce's barriers, hence before any thread overwrites the row.
    const float z_target = (float)z[target];
    float2 stats = make_float2(-INFINITY, 0.0f);
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float zi = (float)z[i];
        if (zi > stats.x) {
            stats.y = stats.y * expf(stats.x - zi) + 1.0f;
            stats.x = zi;
        } else {
            stats.y += expf(zi - stats.x);
        }
    }
    stats = block_reduce(stats, SoftmaxCombineOp(), make_float2(-INFINITY, 0.0f));
    const float row_max = stats.x, row_sum = stats.y;
    if (threadIdx.x == 0) losses[n] = row_max + logf(row_sum) - z_target;
    if (!write_dlogits) return;
    const float inv_sum = 1.0f / row_sum;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = expf((float)z[i] - row_max) * inv_sum;
        z[i] = (floatX)(dloss * (p - (i == target ? 1.0f : 0.0f)));
    }
}

// losses: (N) fp32, the per-row loss (0 on ignored rows); the caller averages over the valid rows.
// dloss = d(objective)/d(loss_n), e.g. 1/n_valid for the mean. With write_dlogits the logits are
// replaced by their gradient; without it (evaluation) they are left untouched.
inline void crossentropy_forward_backward(floatX* logits, float* losses, const int* targets, int N, int V,
                                          float dloss, bool write_dlogits, cudaStream_t stream) {
    const int block = 512;
    crossentropy_forward_backward_kernel<<<N, block, 0, stream>>>(logits, losses, targets, V, dloss, write_dlogits);
    cudaCheck(cudaGetLastError());
}
