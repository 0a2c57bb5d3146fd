// Rotary position embedding on the GPU (Su et al., 2021), "rotate half" as Hugging Face's LLaMA.
// CPU reference: kernels/cpu/rope.h. x and out are NH heads of hd elements at the start of each of
// the B*T rows of `stride` elements: (B, T, C) with stride C = NH * hd, or the q and k of a fused
// (B, T, 3C) q|k|v buffer as 2 NH heads with stride 3C (k's heads follow q's; v is left alone). In
// each head element i pairs with i + hd/2 and the pair turns by angle(t, i) = t * theta^(-2i/hd):
//   out[i]        = x[i] * cos - x[i + hd/2] * sin
//   out[i + hd/2] = x[i + hd/2] * cos + x[i] * sin
// The rotation is orthogonal, so the backward is the same map with the angle negated.
#pragma once
#include "common.cuh"

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

// One thread per pair (b, t, h, i). direction = +1 rotates by the angle (forward), -1 back (backward).
// out may alias inp: each thread reads its pair before writing it.
__global__ void rope_kernel(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                            long stride, int direction) {
    const int half = hd / 2;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * NH * half) return;
    const int i = idx % half;
    const long head = idx / half;  // (b * T + t) * NH + h
    const long row = head / NH;    // b * T + t
    const int t = row % T;
    const float2 cs = table[t * half + i];
    const float c = cs.x, s = direction * cs.y;
    const long base = row * stride + (head % NH) * hd;
    const float x1 = (float)inp[base + i], x2 = (float)inp[base + i + half];
    out[base + i] = (floatX)(x1 * c - x2 * s);
    out[base + i + half] = (floatX)(x2 * c + x1 * s);
}

// table: (T, hd/2) float2 of device memory; it serves every sequence length up to T.
inline void rope_table_init(float2* table, int T, int hd, double theta, cudaStream_t stream) {
    const int block = 256;
    rope_table_kernel<<<ceil_div(T * (hd / 2), block), block, 0, stream>>>(table, T, hd, theta);
    cudaCheck(cudaGetLastError());
}

inline void launch_rope(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                        long stride, int direction, cudaStream_t stream) {
    const int block = 256;
    rope_kernel<<<ceil_div((long)B * T * NH * (hd / 2), block), block, 0, stream>>>(out, inp, table, B, T, NH, hd,
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
