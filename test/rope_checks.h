// The reference side of RoPE fused into the attention kernels (kernels/attention.cuh with a rope
// table), for the GPU tests (test/test_gpu_attention.cu) and the benchmark (dev/attention.cu): the
// reference's q and k are the inputs turned exactly as the kernels turn them in shared memory, so that
// the attention checks of test/attention_checks.h apply with their bounds unchanged.
#pragma once
#include <cmath>
#include <vector>

// The table of rope_table_init (kernels/rope.cuh): (T, hd/2) (cos, sin) of t * theta^(-2i/hd), in
// double rounded to fp32.
inline std::vector<float2> rope_table_reference(int T, int hd, double theta) {
    std::vector<float2> table((size_t)T * (hd / 2));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hd / 2; i++) {
            const double angle = t * std::pow(theta, -2.0 * i / hd);
            table[(size_t)t * (hd / 2) + i] = make_float2((float)std::cos(angle), (float)std::sin(angle));
        }
    return table;
}

// Turns the first `heads` heads of each of the N rows of x (`stride` elements a row, row n at position
// n % T) as kernels/rope_turn.cuh does: the same fp32 FMAs, rounded to floatX, so the same bits.
inline void rope_turn_reference(std::vector<float>& x, const std::vector<float2>& table, long N, int T, int heads,
                                int hd, long stride) {
    for (long n = 0; n < N; n++)
        for (int h = 0; h < heads; h++) {
            float* head = x.data() + n * stride + (long)h * hd;
            for (int i = 0; i < hd / 2; i++) {
                const float2 cs = table[(size_t)(n % T) * (hd / 2) + i];
                const float a = head[i], b = head[i + hd / 2];
                head[i] = (float)(floatX)fmaf(a, cs.x, -b * cs.y);
                head[i + hd / 2] = (float)(floatX)fmaf(b, cs.x, a * cs.y);
            }
        }
}

// The per-element scales (attention_error_scales) of a gradient turned back by RoPE: element i and its
// partner i + hd/2 are each a combination of both unturned elements, so each gets the root-sum-square
// of the pair's scales. scale: N rows of NH heads of hd.
inline void rope_combine_scales(std::vector<double>& scale, long N, int NH, int hd) {
    for (long n = 0; n < N; n++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < hd / 2; i++) {
                double& a = scale[(n * NH + h) * hd + i];
                double& b = scale[(n * NH + h) * hd + i + hd / 2];
                a = b = std::sqrt(a * a + b * b);
            }
}
