// Residual add, out = x + f: Pre-LN's second residual (eq. 2, out = h + MLP(LN_b(h))), the one add
// of the layer loop that no norm follows; the others are fused into kernels/rmsnorm.cuh.
// CPU reference: residual_forward in kernels/cpu/residual.h with scale 1. Its backward is the
// identity on both inputs, which the layer loop's backward uses without a kernel.
#pragma once
#include "common.cuh"

__global__ void residual_forward_kernel(floatX* out, const floatX* x, const floatX* f, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (floatX)((float)x[i] + (float)f[i]);
}

inline void residual_forward(floatX* out, const floatX* x, const floatX* f, long n, cudaStream_t stream) {
    const int block = 256;
    residual_forward_kernel<<<(unsigned)ceil_div(n, block), block, 0, stream>>>(out, x, f, n);
    cudaCheck(cudaGetLastError());
}
