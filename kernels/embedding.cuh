// Token embedding on the GPU. CPU reference: kernels/cpu/embedding.h.
//   forward:  out (N, C) = scale * wte[tokens[n]],  wte (V, C)
//   backward: dwte[v] += scale * sum of dout[n] over the positions n with tokens[n] = v, dwte in fp32
// The backward is deterministic and stays on the device: instead of atomically adding each
// position's row into dwte (whose order would vary run to run), a radix sort of the token ids (CUB's,
// stable) lists each token's positions in increasing order, and each token's dwte row is owned by
// one block that sums its positions in that order.
#pragma once
#include <cub/device/device_radix_sort.cuh>
#include "common.cuh"

// One thread per output element.
__global__ void embedding_forward_kernel(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    const long n = idx / C;
    const int c = idx % C;
    out[idx] = (floatX)(scale * (float)wte[(long)tokens[n] * C + c]);
}

// positions[i] = i: the values the sort carries along with the token ids.
__global__ void embedding_positions_kernel(int* positions, int N) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) positions[i] = i;
}

// sorted_tokens (N): the token ids in increasing order; positions (N): where each stood, a token's
// positions in increasing order. Block (i, j) returns unless i starts a run of equal tokens; if it
// does, it sums the run's rows of dout in order for columns j*blockDim.x + threadIdx.x, and adds
// scale * sum into that token's row of dwte.
__global__ void embedding_backward_kernel(float* dwte, const floatX* dout, const int* sorted_tokens,
                                          const int* positions, int N, int C, float scale) {
    const int i = blockIdx.x;
    const int token = sorted_tokens[i];
    if (i > 0 && sorted_tokens[i - 1] == token) return;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int k = i; k < N && sorted_tokens[k] == token; k++) sum += (float)dout[(long)positions[k] * C + c];
    dwte[(long)token * C + c] += scale * sum;
}

inline void embedding_forward(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale,
                              cudaStream_t stream) {
    const int block = 256;
    embedding_forward_kernel<<<ceil_div((long)N * C, block), block, 0, stream>>>(out, tokens, wte, N, C, scale);
    cudaCheck(cudaGetLastError());
}

// The backward's device workspace: the sorted tokens, the positions before and after the sort (N
// ints each, each array padded to 256 bytes), then CUB's scratch, which it sizes from N and the key
// bits (at most 32). Sizes only: nothing is launched. Grows with N, so a workspace made for N rows
// serves any fewer.
constexpr long EMBEDDING_ARRAY_ALIGN = 64;  // ints: 256 bytes
inline size_t embedding_sort_scratch_bytes(int N, int key_bits) {
    size_t bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const unsigned*)nullptr, (unsigned*)nullptr,
                                              (const int*)nullptr, (int*)nullptr, N, 0, key_bits));
    return bytes;
}
inline long embedding_backward_workspace_ints(int N) {
    return 3 * ceil_div(N, EMBEDDING_ARRAY_ALIGN) * EMBEDDING_ARRAY_ALIGN + ceil_div(embedding_sort_scratch_bytes(N, 32), 4);
}

// tokens: the N tokens of the forward, in device memory. V: the vocabulary (the sort reads only the
// bits of ids below V). workspace: embedding_backward_workspace_ints(n) ints of device memory, n >= N.
// Launches only device work: no host copy, no wait, no allocation (a CUDA graph can hold it).
inline void embedding_backward(float* dwte, const floatX* dout, const int* tokens, int* workspace, int N, int C, int V,
                               float scale, cudaStream_t stream) {
    const long array = ceil_div(N, EMBEDDING_ARRAY_ALIGN) * EMBEDDING_ARRAY_ALIGN;
    int* sorted_tokens = workspace, *positions_in = workspace + array, *positions = workspace + 2 * array;
    void* scratch = workspace + 3 * array;
    int key_bits = 1;
    while (key_bits < 31 && (1L << key_bits) < V) key_bits++;
    size_t scratch_bytes = embedding_sort_scratch_bytes(N, key_bits);
    const int block = 256;
    embedding_positions_kernel<<<ceil_div(N, block), block, 0, stream>>>(positions_in, N);
    cudaCheck(cudaGetLastError());
    // Token ids are >= 0: sorted as unsigned, their low key_bits bits are the whole id.
    cudaCheck(cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, reinterpret_cast<const unsigned*>(tokens),
                                              reinterpret_cast<unsigned*>(sorted_tokens), positions_in, positions, N, 0,
                                              key_bits, stream));
    const dim3 grid(N, ceil_div(C, block));
    embedding_backward_kernel<<<grid, block, 0, stream>>>(dwte, dout, sorted_tokens, positions, N, C, scale);
    cudaCheck(cudaGetLastError());
}
