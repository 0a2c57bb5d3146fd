// Token embedding on the GPU. CPU reference: kernels/cpu/embedding.h.
//   forward:  out (N, C) = scale * wte[tokens[n]],  wte (V, C)
//   backward: dwte[v] += scale * sum of dout[n] over the positions n with tokens[n] = v, dwte in fp32
// The backward is deterministic: instead of atomically adding each position's row into dwte (whose
// order would vary run to run), the positions are grouped by token on the host, and each group's
// dwte row is owned by one block that sums its positions in increasing order.
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>
#include "common.cuh"

// One thread per output element.
__global__ void embedding_forward_kernel(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    const long n = idx / C;
    const int c = idx % C;
    out[idx] = (floatX)(scale * (float)wte[(long)tokens[n] * C + c]);
}

// groups describes K distinct tokens: token[k] = groups[k], and the positions holding token[k] are
// positions[start[k] .. start[k+1]) in increasing order, with start = groups + K (K + 1 entries) and
// positions = groups + 2K + 1. Block (k, j) handles row token[k], columns j*blockDim.x + threadIdx.x.
__global__ void embedding_backward_kernel(float* dwte, const floatX* dout, const int* groups, int K, int C, float scale) {
    const int k = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int* start = groups + K;
    const int* positions = groups + 2 * K + 1;
    float sum = 0.0f;
    for (int i = start[k]; i < start[k + 1]; i++) sum += (float)dout[(long)positions[i] * C + c];
    dwte[(long)groups[k] * C + c] += scale * sum;
}

inline void embedding_forward(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale,
                              cudaStream_t stream) {
    const int block = 256;
    embedding_forward_kernel<<<ceil_div((long)N * C, block), block, 0, stream>>>(out, tokens, wte, N, C, scale);
    cudaCheck(cudaGetLastError());
}

// The device workspace embedding_backward needs, in ints: K + (K + 1) + N with K <= N distinct tokens.
inline long embedding_backward_workspace_ints(int N) { return 3L * N + 1; }

// tokens_host: the N tokens of the forward, on the host (where the data loader produced them).
// workspace: embedding_backward_workspace_ints(N) ints of device memory.
inline void embedding_backward(float* dwte, const floatX* dout, const int* tokens_host, int* workspace,
                               int N, int C, float scale, cudaStream_t stream) {
    // A stable sort by token keeps each token's positions in increasing order.
    std::vector<int> order(N);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return tokens_host[a] < tokens_host[b]; });
    std::vector<int> token, start;
    for (int i = 0; i < N; i++) {
        if (i == 0 || tokens_host[order[i]] != tokens_host[order[i - 1]]) {
            token.push_back(tokens_host[order[i]]);
            start.push_back(i);
        }
    }
    start.push_back(N);
    const int K = (int)token.size();
    std::vector<int> groups = token;
    groups.insert(groups.end(), start.begin(), start.end());
    groups.insert(groups.end(), order.begin(), order.end());
    // From pageable memory the copy returns once groups is staged, so groups may go out of scope.
    cudaCheck(cudaMemcpyAsync(workspace, groups.data(), groups.size() * sizeof(int), cudaMemcpyHostToDevice, stream));
    const int block = 256;
    const dim3 grid(K, ceil_div(C, block));
    embedding_backward_kernel<<<grid, block, 0, stream>>>(dwte, dout, workspace, K, C, scale);
    cudaCheck(cudaGetLastError());
}
