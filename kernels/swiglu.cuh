// The SwiGLU gate on the GPU (Shazeer, 2020). CPU reference: kernels/cpu/swiglu.h.
//   out = silu(gate) * up,  silu(g) = g * sigmoid(g);  out is (N, F).
// gate and up are read by row stride: the model's one gate|up product leaves them side by side in
// rows of 2F, (N, 2F) = [gate | up] with up = gate + F and stride 2F; separate (N, F) tensors are
// stride F. The backward writes dgate and dup with the same stride (d gate|up for the one dW and
// d mlp_in products).
//
// Memory access: each thread loads and stores 128 bits (VEC = 8 bf16 or 4 fp32 elements) of each
// tensor (LDG.E.128 / STG.E.128). Preconditions, checked at launch: F and the stride multiples of VEC
// and every pointer 16-byte aligned, so that each thread's vectors start on 16-byte boundaries. The
// trainer always meets them: its F is the stored ffn, a multiple of 64 (core/config.h's ffn_stored),
// and its tensors start on 256-byte boundaries. dev/swiglu.cu keeps version 1, one element per
// thread, which has no such preconditions.
#pragma once
#include <cstdint>
#include "common.cuh"

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// One element: out = silu(g) * u.
__device__ inline float swiglu_value(float g, float u) { return g * sigmoid(g) * u; }

// One element's input gradients, with s = sigmoid(g) and d silu(g)/dg = s * (1 + g * (1 - s)):
//   dgate = dout * up * s * (1 + g * (1 - s)),   dup = dout * silu(g)
__device__ inline void swiglu_gradients(float dout, float g, float u, float* dgate, float* dup) {
    const float s = sigmoid(g);
    *dgate = dout * u * s * (1.0f + g * (1.0f - s));
    *dup = dout * g * s;
}

// Grid: (N, ceil(F / VEC / SWIGLU_BLOCK)). Thread t of block (n, b) handles the VEC columns from
// f = (b * SWIGLU_BLOCK + t) * VEC of row n: element (n, f) of out, dout is n * F + f; of gate, up,
// dgate, dup n * stride + f.
constexpr int SWIGLU_BLOCK = 128;
inline dim3 swiglu_grid(int N, int F) { return dim3((unsigned)N, (unsigned)ceil_div(F / VEC, SWIGLU_BLOCK)); }

__global__ void __launch_bounds__(SWIGLU_BLOCK) swiglu_forward_kernel(floatX* out, const floatX* gate,
                                                                      const floatX* up, long stride, int F) {
    const int f = (blockIdx.y * SWIGLU_BLOCK + threadIdx.x) * VEC;
    if (f >= F) return;
    const long n = blockIdx.x, in = n * stride + f;
    const PackedX g = load128(gate + in), u = load128(up + in);
    PackedX o;
#pragma unroll
    for (int e = 0; e < VEC; e++) o[e] = (floatX)swiglu_value((float)g[e], (float)u[e]);
    store128(out + n * F + f, o);
}

// Both input gradients in one pass (swiglu_gradients). Writes (the CPU reference accumulates into zeroed buffers). dgate and dup may alias gate and up:
// each thread reads its vectors before writing them.
__global__ void __launch_bounds__(SWIGLU_BLOCK) swiglu_backward_kernel(floatX* dgate, floatX* dup, const floatX* dout,
                                                                       const floatX* gate, const floatX* up,
                                                                       long stride, int F) {
    const int f = (blockIdx.y * SWIGLU_BLOCK + threadIdx.x) * VEC;
    if (f >= F) return;
    const long n = blockIdx.x, in = n * stride + f;
    const PackedX g = load128(gate + in), u = load128(up + in), dy = load128(dout + n * F + f);
    PackedX dg, du;
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        float dgf, duf;
        swiglu_gradients((float)dy[e], (float)g[e], (float)u[e], &dgf, &duf);
        dg[e] = (floatX)dgf;
        du[e] = (floatX)duf;
    }
    store128(dgate + in, dg);
    store128(dup + in, du);
}

// Exits with a message unless F, the stride and the pointers meet the kernels' preconditions (above).
inline void swiglu_check_shape(const char* launcher, int F, long stride, const void* a, const void* b, const void* c,
                               const void* d, const void* e = nullptr) {
    const uintptr_t bits = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d | (uintptr_t)e;
    if (F % VEC == 0 && stride % VEC == 0 && bits % 16 == 0) return;
    fprintf(stderr, "%s: F %d and the stride %ld must be multiples of %d, and every pointer 16-byte aligned\n",
            launcher, F, stride, VEC);
    exit(EXIT_FAILURE);
}

// out (N, F) from gate and up in rows of `stride` elements.
inline void swiglu_forward(floatX* out, const floatX* gate, const floatX* up, long stride, int N, int F,
                           cudaStream_t stream) {
    swiglu_check_shape("swiglu forward", F, stride, out, gate, up, nullptr);
    swiglu_forward_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK, 0, stream>>>(out, gate, up, stride, F);
    cudaCheck(cudaGetLastError());
}

// dgate, dup in rows of `stride` elements, as gate and up; dout (N, F).
inline void swiglu_backward(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate, const floatX* up,
                            long stride, int N, int F, cudaStream_t stream) {
    swiglu_check_shape("swiglu backward", F, stride, dgate, dup, dout, gate, up);
    swiglu_backward_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK, 0, stream>>>(dgate, dup, dout, gate, up, stride, F);
    cudaCheck(cudaGetLastError());
}
