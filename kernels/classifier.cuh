// Softmax + cross-entropy fused on the GPU. CPU reference: kernels/cpu/crossentropy.h.
//   loss_n = logsumexp(z_n) - z_n[target_n],   dz_n = dloss * (softmax(z_n) - onehot(target_n))
// logits (N, V) are read once for the softmax statistics and once more to overwrite them in place with
// their gradient: no probability buffer. Rows whose target is IGNORE_INDEX get loss 0 and gradient 0.
// The objective is loss_scale * (the mean loss over the rows with a target): how many rows those are,
// dloss = loss_scale / n_valid and the mean are computed on the device and kept in LossScalars, so
// that no host code waits for them (and a CUDA graph can hold the whole computation).
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

// A micro-batch's loss bookkeeping, in device memory.
struct LossScalars {
    int n_valid;      // rows whose target is not IGNORE_INDEX
    float dloss;      // loss_scale / n_valid (0 without such rows): d objective / d loss_n
    float mean_loss;  // the mean of loss_n over the n_valid rows (0 without such rows)
};

// One block: counts the rows with a target, and sets dloss.
__global__ void loss_scalars_kernel(LossScalars* scalars, const int* targets, int N, float loss_scale) {
    double count = 0;  // exact: far fewer than 2^53 rows
    for (int n = threadIdx.x; n < N; n += blockDim.x) count += targets[n] != IGNORE_INDEX;
    count = block_reduce(count, AddOp(), 0.0);
    if (threadIdx.x != 0) return;
    scalars->n_valid = (int)count;
    scalars->dloss = count > 0 ? loss_scale / (float)count : 0.0f;
}

// One block: the mean loss, summed in double in an order fixed by blockDim (reproducible); with
// step_loss, adds loss_scale * mean to it (the step's loss, over its micro-batches).
__global__ void mean_loss_kernel(LossScalars* scalars, double* step_loss, const float* losses, int N, float loss_scale) {
    double sum = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) sum += losses[n];  // ignored rows hold 0
    sum = block_reduce(sum, AddOp(), 0.0);
    if (threadIdx.x != 0) return;
    const int n_valid = scalars->n_valid;
    const float mean = n_valid > 0 ? (float)(sum / n_valid) : 0.0f;
    scalars->mean_loss = mean;
    if (step_loss) *step_loss += (double)mean * loss_scale;
}

// One block per row n. Each thread folds its strided logits into running (max, sum) statistics, one
// exp per logit; the block combines them; then
//   loss[n] = max + log(sum) - z[target],   and with write_dlogits,  z_i <- dloss * (exp(z_i - max) / sum - [i == target])
__global__ void crossentropy_forward_backward_kernel(floatX* logits, float* losses, const int* targets, int V,
                                                     const LossScalars* scalars, bool write_dlogits) {
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
    const float inv_sum = 1.0f / row_sum, dloss = scalars->dloss;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = expf((float)z[i] - row_max) * inv_sum;
        z[i] = (floatX)(dloss * (p - (i == target ? 1.0f : 0.0f)));
    }
}

// logits (N, V), targets (N); losses: (N) fp32, the per-row loss (0 on ignored rows); scalars: one
// LossScalars of device memory, which gets n_valid, dloss and the mean loss. With write_dlogits the
// logits are replaced by the gradient of loss_scale * mean loss; without it (evaluation) they are left
// untouched. With step_loss (one double of device memory), loss_scale * mean loss is added to it.
inline void crossentropy_forward_backward(floatX* logits, float* losses, LossScalars* scalars, double* step_loss,
                                          const int* targets, int N, int V, float loss_scale, bool write_dlogits,
                                          cudaStream_t stream) {
    const int block = 512;
    loss_scalars_kernel<<<1, block, 0, stream>>>(scalars, targets, N, loss_scale);
    cudaCheck(cudaGetLastError());
    crossentropy_forward_backward_kernel<<<N, block, 0, stream>>>(logits, losses, targets, V, scalars, write_dlogits);
    cudaCheck(cudaGetLastError());
    mean_loss_kernel<<<1, block, 0, stream>>>(scalars, step_loss, losses, N, loss_scale);
    cudaCheck(cudaGetLastError());
}
