// The SwiGLU gate on the GPU (Shazeer, 2020). CPU reference: kernels/cpu/swiglu.h.
//   out = silu(gate) * up,  silu(g) = g * sigmoid(g);  gate, up, out are (N, F), here n = N * F elements.
#pragma once
#include "common.cuh"

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void swiglu_forward_kernel(floatX* out, const floatX* gate, const floatX* up, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = (float)gate[i];
    out[i] = (floatX)(g * sigmoid(g) * (float)up[i]);
}

// Both input gradients in one pass, with s = sigmoid(g) and d silu(g)/dg = s * (1 + g * (1 - s)):
//   dgate = dout * up * s * (1 + g * (1 - s)),   dup = dout * silu(g)
// Writes (the CPU reference accumulates into zeroed buffers). dgate and dup may alias gate and up:
// each thread reads its element before writing it.
__global__ void swiglu_backward_kernel(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate,
                                       const floatX* up, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = (float)gate[i], u = (float)up[i], dy = (float)dout[i];
    const float s = sigmoid(g);
    dgate[i] = (floatX)(dy * u * s * (1.0f + g * (1.0f - s)));
    dup[i] = (floatX)(dy * g * s);
}

inline void swiglu_forward(floatX* out, const floatX* gate, const floatX* up, long n, cudaStream_t stream) {
    const int block = 256;
    swiglu_forward_kernel<<<ceil_div(n, block), block, 0, stream>>>(out, gate, up, n);
    cudaCheck(cudaGetLastError());
}

inline void swiglu_backward(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate, const floatX* up,
                            long n, cudaStream_t stream) {
    const int block = 256;
    swiglu_backward_kernel<<<ceil_div(n, block), block, 0, stream>>>(dgate, dup, dout, gate, up, n);
    cudaCheck(cudaGetLastError());
}
