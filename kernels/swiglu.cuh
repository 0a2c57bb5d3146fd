// The SwiGLU gate on the GPU (Shazeer, 2020). CPU reference: kernels/cpu/swiglu.h.
//   out = silu(gate) * up,  silu(g) = g * sigmoid(g);  out is (N, F).
// gate and up are read by row stride: the model's one gate|up product leaves them side by side in
// rows of 2F, (N, 2F) = [gate | up] with up = gate + F and stride 2F; separate (N, F) tensors are
// stride F. The backward writes dgate and dup with the same stride (d gate|up for the one dW and
// d mlp_in products).
#pragma once
#include <algorithm>
#include "common.cuh"

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Grid: (ceil(F / blockDim.x), up to 65535 rows). Thread (f, y) handles column f of rows y, y +
// gridDim.y, ...: element (n, f) of out, dout is n * F + f; of gate, up, dgate, dup n * stride + f.
constexpr int SWIGLU_BLOCK = 256;
inline dim3 swiglu_grid(int N, int F) { return dim3((unsigned)ceil_div(F, SWIGLU_BLOCK), (unsigned)std::min(N, 65535)); }

__global__ void swiglu_forward_kernel(floatX* out, const floatX* gate, const floatX* up, long stride, int N, int F) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    for (long n = blockIdx.y; n < N; n += gridDim.y) {
        const float g = (float)gate[n * stride + f];
        out[n * F + f] = (floatX)(g * sigmoid(g) * (float)up[n * stride + f]);
    }
}

// Both input gradients in one pass, with s = sigmoid(g) and d silu(g)/dg = s * (1 + g * (1 - s)):
//   dgate = dout * up * s * (1 + g * (1 - s)),   dup = dout * silu(g)
// Writes (the CPU reference accumulates into zeroed buffers). dgate and dup may alias gate and up:
// each thread reads its elements before writing them.
__global__ void swiglu_backward_kernel(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate,
                                       const floatX* up, long stride, int N, int F) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    for (long n = blockIdx.y; n < N; n += gridDim.y) {
        const long j = n * stride + f;
        const float g = (float)gate[j], u = (float)up[j], dy = (float)dout[n * F + f];
        const float s = sigmoid(g);
        dgate[j] = (floatX)(dy * u * s * (1.0f + g * (1.0f - s)));
        dup[j] = (floatX)(dy * g * s);
    }
}

// out (N, F) from gate and up in rows of `stride` elements.
inline void swiglu_forward(floatX* out, const floatX* gate, const floatX* up, long stride, int N, int F,
                           cudaStream_t stream) {
    swiglu_forward_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK, 0, stream>>>(out, gate, up, stride, N, F);
    cudaCheck(cudaGetLastError());
}

// dgate, dup in rows of `stride` elements, as gate and up; dout (N, F).
inline void swiglu_backward(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate, const floatX* up,
                            long stride, int N, int F, cudaStream_t stream) {
    swiglu_backward_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK, 0, stream>>>(dgate, dup, dout, gate, up, stride, N, F);
    cudaCheck(cudaGetLastError());
}
