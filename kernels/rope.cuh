// Rotary position embedding on the GPU (Su et al., 2021), "rotate half" as Hugging Face's LLaMA.
// CPU reference: kernels/cpu/rope.h. x and out are NH heads of hd elements at the start of each of
// the B*T rows of `stride` elements: (B, T, C) with stride C = NH * hd, or the q and k of a fused
// (B, T, 3C) q|k|v buffer as 2 NH heads with stride 3C (k's heads follow q's; v is left alone). In
// each head element i pairs with i + hd/2 and the pair turns by angle(t, i) = t * theta^(-2i/hd):
//   out[i]        = x[i] * cos - x[i + hd/2] * sin
//   out[i + hd/2] = x[i + hd/2] * cos + x[i] * sin
// The rotation is orthogonal, so the backward is the same map with the angle negated.
//
// The trainer turns q and k inside the attention kernels (attention_forward / attention_backward with
// the table: kernels/attention.cuh), saving this kernel's round trip through memory in both passes;
// the standalone kernel here is the unfused path that dev/attention.cu and the tests compare with.
//
// Preconditions of the 128-bit accesses, checked at launch: hd / 2 and the stride multiples of VEC (8
// bf16, 4 fp32) and the pointers 16-byte aligned, so that both halves of every head start on 16-byte
// boundaries. The trainer always meets them: its heads are multiples of 16 (the attention kernel's
// requirement) and its tensors start on 256-byte boundaries. dev/rope.cu keeps version 1, one pair
// per thread, which has no such preconditions.
#pragma once
#include <cstdint>
#include "common.cuh"
#include "rope_turn.cuh"

// table[t * hd/2 + i] = (cos, sin) of angle(t, i), for t < T. Built once, in double as the reference
// (then rounded to fp32), so positions far into the sequence keep their accuracy.
__global__ void rope_table_kernel(float2* table, int T, int hd, double theta) {
    const int half = hd / 2;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * half) return;
    const int t = idx / half, i = idx % half;
    const double angle = t * pow(theta, -2.0 * i / hd);
    table[idx] = make_float2((float)cos(angle), (float)sin(angle));
}

// One thread per VEC pairs (8 bf16, 4 fp32): pairs i0 .. i0 + VEC - 1 of head `head` (over (b, t, h)),
// i0 = VEC * (idx % (hd / 2 / VEC)): two 128-bit loads and stores of x (its first and second half)
// and VEC / 2 128-bit loads of the (cos, sin) table, where one pair per thread takes 2-byte accesses
// (LDG.E.128 / STG.E.128 in the SASS). out may alias inp: each thread reads its vectors before
// writing them.
__global__ void rope_kernel(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                            long stride, int direction) {
    const int half = hd / 2, chunks = half / VEC;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * NH * chunks) return;
    const int i0 = (int)(idx % chunks) * VEC;
    const long head = idx / chunks;  // (b * T + t) * NH + h
    const long row = head / NH;      // b * T + t
    const int t = (int)(row % T);
    const long base = row * stride + (head % NH) * hd + i0;
    PackedX x1 = load128(inp + base), x2 = load128(inp + base + half);
    rope_turn(x1, x2, table + (long)t * half + i0, (float)direction);
    store128(out + base, x1);
    store128(out + base + half, x2);
}

// table: (T, hd/2) float2 of device memory; it serves every sequence length up to T.
inline void rope_table_init(float2* table, int T, int hd, double theta, cudaStream_t stream) {
    const int block = 256;
    rope_table_kernel<<<ceil_div(T * (hd / 2), block), block, 0, stream>>>(table, T, hd, theta);
    cudaCheck(cudaGetLastError());
}

inline void launch_rope(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                        long stride, int direction, cudaStream_t stream) {
    const uintptr_t bits = (uintptr_t)out | (uintptr_t)inp | (uintptr_t)table;
    if ((hd / 2) % VEC || stride % VEC || bits % 16) {
        fprintf(stderr, "rope: hd / 2 (%d) and the stride (%ld) must be multiples of %d, the pointers 16-byte "
                "aligned\n", hd / 2, stride, VEC);
        exit(EXIT_FAILURE);
    }
    const int block = 256;
    rope_kernel<<<ceil_div((long)B * T * NH * (hd / 2 / VEC), block), block, 0, stream>>>(out, inp, table, B, T, NH, hd,
                                                                                          stride, direction);
    cudaCheck(cudaGetLastError());
}

inline void rope_forward(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                         long stride, cudaStream_t stream) {
    launch_rope(out, inp, table, B, T, NH, hd, stride, +1, stream);
}

// dinp = R(-angle) dout; dinp may alias dout.
inline void rope_backward(floatX* dinp, const floatX* dout, const float2* table, int B, int T, int NH, int hd,
                          long stride, cudaStream_t stream) {
    launch_rope(dinp, dout, table, B, T, NH, hd, stride, -1, stream);
}
