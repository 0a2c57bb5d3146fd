// Softmax + cross-entropy fused on the GPU. CPU reference: kernels/cpu/crossentropy.h.
//   loss_n = logsumexp(z_n) - z_n[target_n],   dz_n = dloss * (softmax(z_n) - onehot(target_n))
// logits (N, V) are read once for the softmax statistics and once more to overwrite them in place with
// their gradient (128 bits at a time): no probability buffer. Rows whose target is IGNORE_INDEX get loss 0 and gradient 0.
// The objective is loss_scale * (the mean loss over the rows with a target): how many rows those are,
// dloss = loss_scale / n_valid and the mean are computed on the device and kept in LossScalars, so
// that no host code waits for them (and a CUDA graph can hold the whole computation).
#pragma once
#include <cstdint>
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

// A row of logits in 128-bit accesses: the `head` elements before its first 16-byte boundary, `nvec`
// vectors of VEC from there, and the tail, elements [tail_begin, V). Rows of a V that is not a
// multiple of VEC start at varying offsets, hence the head; head and tail hold fewer than VEC each.
struct LogitRow {
    floatX* z;  // the row's V logits
    int head, nvec, tail_begin;
    __device__ LogitRow(floatX* row, int V) : z(row) {
        const int misaligned = (int)((uintptr_t)row % 16 / sizeof(floatX));
        head = min(V, (VEC - misaligned) % VEC);
        nvec = (V - head) / VEC;
        tail_begin = head + nvec * VEC;
    }
    __device__ floatX* vector(int j) const { return z + head + j * VEC; }  // 16-byte aligned
};

// Folds one logit into running softmax statistics (max, sum of exp(z - max)).
__device__ inline void softmax_fold(float2& stats, float zi) {
    if (zi > stats.x) {
        stats.y = stats.y * expf(stats.x - zi) + 1.0f;
        stats.x = zi;
    } else {
        stats.y += expf(zi - stats.x);
    }
}

// Folds VEC logits: the max moves once (one rescale of the sum), then one exp per logit.
__device__ inline void softmax_fold(float2& stats, const PackedX& v) {
    float vmax = stats.x;
#pragma unroll
    for (int e = 0; e < VEC; e++) vmax = fmaxf(vmax, (float)v[e]);
    if (vmax > stats.x) {
        stats.y *= expf(stats.x - vmax);  // 0 while the sum is empty (stats.x = -inf)
        stats.x = vmax;
    }
#pragma unroll
    for (int e = 0; e < VEC; e++) stats.y += expf((float)v[e] - stats.x);
}

// One block of CROSSENTROPY_BLOCK threads per row n, 128-bit loads and stores (LogitRow), four vectors
// in flight per thread; the first threads also take the head's and the tail's few elements one at a
// time. Each thread folds its logits into running (max, sum) statistics; the block combines them; then
//   loss[n] = max + log(sum) - z[target],   and with write_dlogits,  z_i <- dloss * (exp(z_i - max) / sum - [i == target])
// reading the row a second time (from L2 while it is still there: 64 KB per row at V = 32000 in bf16).
constexpr int CROSSENTROPY_BLOCK = 512, CROSSENTROPY_UNROLL = 4;
__global__ void __launch_bounds__(CROSSENTROPY_BLOCK) crossentropy_forward_backward_kernel(
    floatX* logits, float* losses, const int* targets, int V, const LossScalars* scalars, bool write_dlogits) {
    constexpr int threads = CROSSENTROPY_BLOCK, unroll = CROSSENTROPY_UNROLL;
    const int n = blockIdx.x;
    const LogitRow row(logits + (long)n * V, V);
    floatX* z = row.z;
    const int target = targets[n];
    if (target == IGNORE_INDEX) {  // the same branch for the whole block
        if (threadIdx.x == 0) losses[n] = 0.0f;
        if (!write_dlogits) return;
        PackedX zero;
#pragma unroll
        for (int e = 0; e < VEC; e++) zero[e] = (floatX)0.0f;
        for (int j = threadIdx.x; j < row.nvec; j += threads) store128(row.vector(j), zero);
        for (int i = threadIdx.x; i < row.head; i += threads) z[i] = (floatX)0.0f;
        for (int i = row.tail_begin + threadIdx.x; i < V; i += threads) z[i] = (floatX)0.0f;
        return;
    }
    // Read before block_reduce's barriers, hence before any thread overwrites the row.
    const float z_target = (float)z[target];
    float2 stats = make_float2(-INFINITY, 0.0f);
    int j = threadIdx.x;
    for (; j + (unroll - 1) * threads < row.nvec; j += unroll * threads) {
        PackedX v[unroll];
#pragma unroll
        for (int u = 0; u < unroll; u++) v[u] = load128(row.vector(j + u * threads));
#pragma unroll
        for (int u = 0; u < unroll; u++) softmax_fold(stats, v[u]);
    }
    for (; j < row.nvec; j += threads) softmax_fold(stats, load128(row.vector(j)));
    for (int i = threadIdx.x; i < row.head; i += threads) softmax_fold(stats, (float)z[i]);
    for (int i = row.tail_begin + threadIdx.x; i < V; i += threads) softmax_fold(stats, (float)z[i]);
    stats = block_reduce(stats, SoftmaxCombineOp(), make_float2(-INFINITY, 0.0f));
    const float row_max = stats.x, row_sum = stats.y;
    if (threadIdx.x == 0) losses[n] = row_max + logf(row_sum) - z_target;
    if (!write_dlogits) return;
    const float inv_sum = 1.0f / row_sum, dloss = scalars->dloss;
    auto dlogit = [&](float zi, int i) {
        const float p = expf(zi - row_max) * inv_sum;
        return (floatX)(dloss * (p - (i == target ? 1.0f : 0.0f)));
    };
    auto write_vector = [&](int k, const PackedX& v) {  // vector k of the row, whose logits were v
        PackedX g;
        const int i0 = row.head + k * VEC;
#pragma unroll
        for (int e = 0; e < VEC; e++) g[e] = dlogit((float)v[e], i0 + e);
        store128(row.vector(k), g);
    };
    for (j = threadIdx.x; j + (unroll - 1) * threads < row.nvec; j += unroll * threads) {
        PackedX v[unroll];
#pragma unroll
        for (int u = 0; u < unroll; u++) v[u] = load128(row.vector(j + u * threads));
#pragma unroll
        for (int u = 0; u < unroll; u++) write_vector(j + u * threads, v[u]);
    }
    for (; j < row.nvec; j += threads) write_vector(j, load128(row.vector(j)));
    for (int i = threadIdx.x; i < row.head; i += threads) z[i] = dlogit((float)z[i], i);
    for (int i = row.tail_begin + threadIdx.x; i < V; i += threads) z[i] = dlogit((float)z[i], i);
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
    crossentropy_forward_backward_kernel<<<N, CROSSENTROPY_BLOCK, 0, stream>>>(logits, losses, targets, V, scalars,
                                                                                write_dlogits);
    cudaCheck(cudaGetLastError());
    mean_loss_kernel<<<1, block, 0, stream>>>(scalars, step_loss, losses, N, loss_scale);
    cudaCheck(cudaGetLastError());
}
