// RoPE's turn of VEC pairs (kernels/rope.cuh has the math), apart from the kernels so that the
// standalone rope kernel and attention's fused turn (kernels/attention.cuh) share it without one
// translation unit defining the other's kernels.
#pragma once
#include "common.cuh"

// Turns VEC pairs in place: x1 holds elements i0 .. i0 + VEC - 1 of a head, x2 the same of its second
// half, cs their VEC (cos, sin) (16-byte aligned: VEC / 2 128-bit loads). direction = +1 rotates by the
// angle (forward), -1 back (backward). Explicit FMAs: the standalone kernel (kernels/rope.cuh) and the turn inside
// attention (kernels/attention.cuh) run this one sequence of roundings, so they give the same bits.
__device__ inline void rope_turn(PackedX& x1, PackedX& x2, const float2* cs, float direction) {
#pragma unroll
    for (int p = 0; p < VEC / 2; p++) {
        const float4 c4 = *reinterpret_cast<const float4*>(cs + 2 * p);  // (cos, sin) of pairs 2p and 2p + 1
        const float c[2] = {c4.x, c4.z}, s[2] = {direction * c4.y, direction * c4.w};
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int e = 2 * p + q;
            const float a = (float)x1[e], b = (float)x2[e];
            x1[e] = (floatX)fmaf(a, c[q], -b * s[q]);
            x2[e] = (floatX)fmaf(b, c[q], a * s[q]);
        }
    }
}
