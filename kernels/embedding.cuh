// Token embedding on the GPU. CPU reference: kernels/cpu/embedding.h.
//   forward:  out (N, C) = scale * wte[tokens[n]],  wte (V, C)
//   backward: dwte[v] += scale * sum of dout[n] over the positions n with tokens[n] = v, dwte in fp32
// Both move VEC columns per thread, 128 bits at a time when C is a multiple of VEC (every preset and
// every head size the trainer takes), else one element at a time.
// The backward is deterministic and stays on the device: instead of atomically adding each
// position's row into dwte (whose order would vary run to run), a radix sort of the token ids (CUB's,
// stable) lists each token's positions in increasing order, a run of equal tokens. The sorted list is
// cut into chunks of EMBEDDING_CHUNK positions, one block (per slice of columns) each, which sums the
// runs inside its chunk in position order. A run that lies in one chunk is added into its dwte row
// there; a run that crosses a chunk edge (a frequent token: ~9% of the positions for the most frequent
// of dev/embedding.cu's Zipf(1) tokens) leaves an fp32 partial row per chunk it touches, and a second
// kernel adds those in chunk order. Every order is fixed by the tokens alone, so the result is bitwise the same whatever the
// schedule, and no block sums more than EMBEDDING_CHUNK rows (or one partial per chunk of a run),
// where one block per token would add all of a frequent token's rows one after the other.
#pragma once
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <cub/device/device_radix_sort.cuh>
#include "common.cuh"

// The kernels' `wide` argument: C is a multiple of VEC and the arrays start 16-byte aligned, so every
// row of floatX (and of fp32: VEC is a multiple of 4) does too, and VEC columns are 128-bit accesses.
inline bool embedding_rows_wide(int C, std::initializer_list<const void*> arrays) {
    bool wide = C % VEC == 0;
    for (const void* p : arrays) wide = wide && (uintptr_t)p % 16 == 0;
    return wide;
}

// x = the columns [c, c + VEC) of a row (floatX, or fp32: VEC / 4 vectors), as fp32; with !wide, those
// below C (the rest 0).
template <typename T>
__device__ inline void load_columns(float (&x)[VEC], const T* row, int c, int C, bool wide) {
    constexpr int per_vector = Packed<T>::size;
    if (wide) {
#pragma unroll
        for (int q = 0; q < VEC / per_vector; q++) {
            const Packed<T> v = load128(row + c + q * per_vector);
#pragma unroll
            for (int e = 0; e < per_vector; e++) x[q * per_vector + e] = (float)v[e];
        }
    } else {
#pragma unroll
        for (int e = 0; e < VEC; e++) x[e] = c + e < C ? (float)row[c + e] : 0.0f;
    }
}

// Columns [c, c + VEC) of an fp32 row (those below C): row = x, or row += scale * x with `add`.
__device__ inline void write_columns(float* row, const float (&x)[VEC], float scale, bool add, int c, int C, bool wide) {
    if (wide) {
#pragma unroll
        for (int q = 0; q < VEC / 4; q++) {
            Packed<float> r = add ? load128(row + c + 4 * q) : Packed<float>();
#pragma unroll
            for (int e = 0; e < 4; e++) r[e] = add ? r[e] + scale * x[4 * q + e] : x[4 * q + e];
            store128(row + c + 4 * q, r);
        }
    } else {
#pragma unroll
        for (int e = 0; e < VEC; e++)
            if (c + e < C) row[c + e] = add ? row[c + e] + scale * x[e] : x[e];
    }
}

// Thread (n, g) writes the columns [g VEC, g VEC + VEC) of output row n.
__global__ void embedding_forward_kernel(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale,
                                         bool wide) {
    const int groups = (int)ceil_div(C, VEC);
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * groups) return;
    const long n = idx / groups;
    const int c = (int)(idx % groups) * VEC;
    float w[VEC];
    load_columns(w, wte + (long)tokens[n] * C, c, C, wide);
    floatX* o = out + n * C;
    if (wide) {
        PackedX v;
#pragma unroll
        for (int e = 0; e < VEC; e++) v[e] = (floatX)(scale * w[e]);
        store128(o + c, v);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; e++)
            if (c + e < C) o[c + e] = (floatX)(scale * w[e]);
    }
}

// positions[i] = i: the values the sort carries along with the token ids.
__global__ void embedding_positions_kernel(int* positions, int N) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) positions[i] = i;
}

// Chunk k of the sorted list is its positions [k EMBEDDING_CHUNK, (k + 1) EMBEDDING_CHUNK). It has two
// partial rows: slot 2k for its first run if that crosses one of the chunk's edges, slot 2k + 1 for
// its last run if that crosses the right edge and is not the first.
constexpr int EMBEDDING_CHUNK = 32;
constexpr int EMBEDDING_ROWS_IN_FLIGHT = 4;  // dout rows a thread loads before adding them

// sorted_tokens (N): the token ids in increasing order; positions (N): where each stood, a token's
// positions in increasing order. Block (k, y) takes chunk k, thread x the columns c = (y blockDim.x + x)
// VEC .. c + VEC - 1. Each run of equal tokens in the chunk is summed in order; a run inside the chunk
// adds scale * sum into its token's dwte row, a run crossing an edge stores its sum in the chunk's slot.
__global__ void embedding_backward_chunk_kernel(float* dwte, float* partials, const floatX* dout,
                                                const int* sorted_tokens, const int* positions, int N, int C,
                                                float scale, bool wide) {
    const int k = blockIdx.x, begin = k * EMBEDDING_CHUNK, end = min(N, begin + EMBEDDING_CHUNK);
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (c >= C) return;
    float sum[VEC] = {};
    int run_begin = begin;  // where the run being summed starts (in the chunk)
    for (int i = begin; i < end; i += EMBEDDING_ROWS_IN_FLIGHT) {
        float rows[EMBEDDING_ROWS_IN_FLIGHT][VEC];
#pragma unroll
        for (int u = 0; u < EMBEDDING_ROWS_IN_FLIGHT; u++)
            if (i + u < end) load_columns(rows[u], dout + (long)positions[i + u] * C, c, C, wide);
#pragma unroll
        for (int u = 0; u < EMBEDDING_ROWS_IN_FLIGHT; u++) {
            const int r = i + u;
            if (r >= end) break;
#pragma unroll
            for (int e = 0; e < VEC; e++) sum[e] += rows[u][e];
            const int token = sorted_tokens[r];
            if (r + 1 < end && sorted_tokens[r + 1] == token) continue;  // the run goes on in the chunk
            // The run [run_begin, r] ends here: does the token's run cross the chunk's left or right edge?
            const bool split = (run_begin == begin && begin > 0 && sorted_tokens[begin - 1] == token) ||
                               (r + 1 == end && end < N && sorted_tokens[end] == token);
            if (split) {
                const int slot = run_begin == begin ? 2 * k : 2 * k + 1;
                write_columns(partials + (long)slot * C, sum, 1.0f, false, c, C, wide);
            } else {
                write_columns(dwte + (long)token * C, sum, scale, true, c, C, wide);
            }
#pragma unroll
            for (int e = 0; e < VEC; e++) sum[e] = 0.0f;
            run_begin = r + 1;
        }
    }
}

// Block (k, y): if a run that crosses chunk edges ends in chunk k, it adds that run's partial rows in
// chunk order, from the chunk a where it starts to k, and scale * their sum into the token's dwte row.
__global__ void embedding_backward_combine_kernel(float* dwte, const float* partials, const int* sorted_tokens, int N,
                                                  int C, float scale, bool wide) {
    const int k = blockIdx.x, begin = k * EMBEDDING_CHUNK, next = begin + EMBEDDING_CHUNK;
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (c >= C || k == 0) return;
    const int token = sorted_tokens[begin];
    if (sorted_tokens[begin - 1] != token) return;        // chunk k's first run starts in it
    if (next < N && sorted_tokens[next] == token) return;  // it goes on into chunk k + 1
    int a = k - 1;  // back to the chunk where the run starts: while the run enters chunk a from its left
    while (a > 0 && sorted_tokens[a * EMBEDDING_CHUNK - 1] == token) a--;
    // In chunk a the run is the first (slot 2a) if it starts at the chunk's start, else the last.
    const int first_slot = sorted_tokens[a * EMBEDDING_CHUNK] == token ? 2 * a : 2 * a + 1;
    float sum[VEC], part[VEC];
    load_columns(sum, partials + (long)first_slot * C, c, C, wide);
    for (int j = a + 1; j <= k; j++) {
        load_columns(part, partials + (long)(2 * j) * C, c, C, wide);
#pragma unroll
        for (int e = 0; e < VEC; e++) sum[e] += part[e];
    }
    write_columns(dwte + (long)token * C, sum, scale, true, c, C, wide);
}

inline void embedding_forward(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale,
                              cudaStream_t stream) {
    const int block = 256;
    const bool wide = embedding_rows_wide(C, {out, wte});
    embedding_forward_kernel<<<ceil_div((long)N * ceil_div(C, VEC), block), block, 0, stream>>>(out, tokens, wte, N, C,
                                                                                                 scale, wide);
    cudaCheck(cudaGetLastError());
}

// The backward's device workspace: the sorted tokens, the positions before and after the sort (N
// ints each), two fp32 partial rows of C per chunk, each array padded to 256 bytes, then CUB's scratch,
// which it sizes from N and the key bits (at most 32). Sizes only: nothing is launched. Grows with N and
// C, so a workspace made for N rows of C serves any fewer of any narrower.
constexpr long EMBEDDING_ARRAY_ALIGN = 64;  // ints or floats: 256 bytes
inline long embedding_padded(long count) { return ceil_div(count, EMBEDDING_ARRAY_ALIGN) * EMBEDDING_ARRAY_ALIGN; }
inline size_t embedding_sort_scratch_bytes(int N, int key_bits) {
    size_t bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const unsigned*)nullptr, (unsigned*)nullptr,
                                              (const int*)nullptr, (int*)nullptr, N, 0, key_bits));
    return bytes;
}
inline long embedding_partials_floats(int N, int C) { return embedding_padded(2 * ceil_div(N, EMBEDDING_CHUNK) * C); }
inline long embedding_backward_workspace_ints(int N, int C) {
    return 3 * embedding_padded(N) + embedding_partials_floats(N, C) + ceil_div(embedding_sort_scratch_bytes(N, 32), 4);
}

// tokens: the N tokens of the forward, in device memory. V: the vocabulary (the sort reads only the
// bits of ids below V). workspace: embedding_backward_workspace_ints(n, c) ints of device memory, n >= N,
// c >= C. Launches only device work: no host copy, no wait, no allocation (a CUDA graph can hold it).
inline void embedding_backward(float* dwte, const floatX* dout, const int* tokens, int* workspace, int N, int C, int V,
                               float scale, cudaStream_t stream) {
    const long array = embedding_padded(N);
    int* sorted_tokens = workspace, *positions_in = workspace + array, *positions = workspace + 2 * array;
    float* partials = reinterpret_cast<float*>(workspace + 3 * array);
    void* scratch = workspace + 3 * array + embedding_partials_floats(N, C);
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
    // A thread per VEC columns: up to 256 threads a block (whole warps), more slices of columns beyond.
    const int groups = (int)ceil_div(C, VEC);
    const int threads = (int)std::min<long>(256, ceil_div(groups, 32) * 32);
    const dim3 grid((unsigned)ceil_div(N, EMBEDDING_CHUNK), (unsigned)ceil_div(groups, threads));
    const bool wide = embedding_rows_wide(C, {dwte, dout, partials});
    embedding_backward_chunk_kernel<<<grid, threads, 0, stream>>>(dwte, partials, dout, sorted_tokens, positions, N, C,
                                                                  scale, wide);
    cudaCheck(cudaGetLastError());
    embedding_backward_combine_kernel<<<grid, threads, 0, stream>>>(dwte, partials, sorted_tokens, N, C, scale, wide);
    cudaCheck(cudaGetLastError());
}
