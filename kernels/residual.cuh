// Residual add, out = s * x + f: Pre-LN's second residual (eq. 2, out = h + MLP(LN_b(h)), s = 1),
// the one add of the layer loop that no norm follows; the others are fused into kernels/rmsnorm.cuh.
// The backward uses it once: a Post-LN layer leaves d x as two parts, d x = s * dsum + d attn_in,
// which the next Post-LN layer's norm backward adds up as it reads them; below the last one (the
// embedding) they are added here.
// CPU reference: residual_forward in kernels/cpu/residual.h.
#pragma once
#include "common.cuh"

__global__ void residual_forward_kernel(floatX* out, const floatX* x, const floatX* f, float s, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (floatX)(s * (float)x[i] + (float)f[i]);
}

inline void residual_forward(floatX* out, const floatX* x, const floatX* f, long n, float s, cudaStream_t stream) {
    const int block = 256;
    residual_forward_kernel<<<(unsigned)ceil_div(n, block), block, 0, stream>>>(out, x, f, s, n);
    cudaCheck(cudaGetLastError());
}
