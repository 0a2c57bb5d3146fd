// Residual add, out = s * x + f: Pre-LN's second residual (eq. 2, out = h + MLP(LN_b(h)), s = 1) where
// no norm reads out next (before a Post-LN layer) or where the backward recomputes the layer; every
// other add of the layer loop is fused with the norm after it (kernels/rmsnorm.cuh).
// The backward uses it once: a Post-LN layer leaves d x as two parts, d x = s * dsum + d attn_in,
// which the next Post-LN layer's norm backward adds up as it reads them; below the last one (the
// embedding) they are added here.
// CPU reference: residual_forward in kernels/cpu/residual.h.
#pragma once
#include <cstdint>
#include "common.cuh"

// Thread i handles elements i * VEC .. i * VEC + VEC - 1 with one 128-bit load of x and of f and one
// store (LDG.E.128 / STG.E.128); the thread of the last, partial vector (n not a multiple of VEC) adds
// its elements one at a time. out may alias x or f.
__global__ void residual_forward_kernel(floatX* out, const floatX* x, const floatX* f, float s, long n) {
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i + VEC <= n) {
        const PackedX xv = load128(x + i), fv = load128(f + i);
        PackedX o;
#pragma unroll
        for (int e = 0; e < VEC; e++) o[e] = (floatX)(s * (float)xv[e] + (float)fv[e]);
        store128(out + i, o);
    } else {
#pragma unroll 1  // at most VEC - 1 elements: a loop, not unrolled code
        for (long k = i; k < n; k++) out[k] = (floatX)(s * (float)x[k] + (float)f[k]);
    }
}

// out, x and f must be 16-byte aligned (checked): cudaMalloc's and the trainer's tensors are (256 bytes).
inline void residual_forward(floatX* out, const floatX* x, const floatX* f, long n, float s, cudaStream_t stream) {
    if (((uintptr_t)out | (uintptr_t)x | (uintptr_t)f) % 16) {
        fprintf(stderr, "residual forward: out, x and f must be 16-byte aligned\n");
        exit(EXIT_FAILURE);
    }
    const int block = 256;
    residual_forward_kernel<<<(unsigned)ceil_div(ceil_div(n, VEC), block), block, 0, stream>>>(out, x, f, s, n);
    cudaCheck(cudaGetLastError());
}
