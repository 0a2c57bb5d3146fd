// Why the GPU trainer keeps its weight gradients in fp32 (docs/gpu.md, "Gradient accumulation"): an
// emulation, on the CPU, of summing one weight gradient dW (OC, C) += dout^T inp over a step's
// micro-batches through cuBLAS's beta = 1. Each micro-batch's product is computed in fp32 from bf16
// inputs (as the tensor cores do); the running sum is then either rounded to bf16 after every add (a
// bf16 dW: D = bf16(product + C)) or kept in fp32 (the trainer's dW). Both are compared with the same
// sum in double.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>
#include "bf16_rounding.h"
#include "catch_compat.h"
#include "../core/rng.h"

struct AccumulationErrors {
    double l2, max;  // ||dW - ref|| / ||ref||,  max |dW - ref| / rms(ref)
};

static AccumulationErrors errors_against(const std::vector<float>& dW, const std::vector<double>& ref) {
    double diff_sq = 0, ref_sq = 0, worst = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        const double d = dW[i] - ref[i];
        diff_sq += d * d;
        ref_sq += ref[i] * ref[i];
        worst = std::max(worst, std::fabs(d));
    }
    return {std::sqrt(diff_sq / ref_sq), worst / std::sqrt(ref_sq / ref.size())};
}

TEST_CASE("gradient accumulation over 32 micro-batches: fp32 dW against bf16 dW (emulated)") {
    const int MICRO_BATCHES = 32, N = 64, C = 96, OC = 128;  // N rows (tokens) per micro-batch
    Rng rng(1001);
    std::vector<float> dW_bf16((size_t)OC * C, 0.0f), dW_fp32((size_t)OC * C, 0.0f);
    std::vector<double> ref((size_t)OC * C, 0.0);
    std::vector<float> inp((size_t)N * C), dout((size_t)N * OC);
    for (int micro = 0; micro < MICRO_BATCHES; micro++) {
        for (float& x : inp) x = round_bf16((float)rng.normal());
        for (float& x : dout) x = round_bf16((float)rng.normal() / MICRO_BATCHES);  // loss scale 1/32
        for (int o = 0; o < OC; o++) {
            for (int c = 0; c < C; c++) {
                float product = 0.0f;  // the tensor cores' fp32 dot product over the micro-batch's rows
                double exact = 0.0;
                for (int n = 0; n < N; n++) {
                    product += dout[(size_t)n * OC + o] * inp[(size_t)n * C + c];
                    exact += (double)dout[(size_t)n * OC + o] * inp[(size_t)n * C + c];
                }
                const size_t i = (size_t)o * C + c;
                dW_bf16[i] = round_bf16(product + dW_bf16[i]);  // beta = 1 into a bf16 D
                dW_fp32[i] = product + dW_fp32[i];                 // beta = 1 into an fp32 D
                ref[i] += exact;
            }
        }
    }
    std::vector<float> once_rounded(dW_fp32.size());  // the fp32 sum rounded to bf16 once, for scale
    for (size_t i = 0; i < once_rounded.size(); i++) once_rounded[i] = round_bf16(dW_fp32[i]);
    const AccumulationErrors bf16 = errors_against(dW_bf16, ref), fp32 = errors_against(dW_fp32, ref),
                             once = errors_against(once_rounded, ref);
    std::printf("gradient accumulation, %d micro-batches of %d rows, dW %d x %d, against double:\n", MICRO_BATCHES, N,
                OC, C);
    std::printf("  bf16 dW (rounded after each add): L2 %.2e, max %.2e of rms\n", bf16.l2, bf16.max);
    std::printf("  fp32 dW:                          L2 %.2e, max %.2e of rms\n", fp32.l2, fp32.max);
    std::printf("  fp32 sum rounded to bf16 once:    L2 %.2e, max %.2e of rms\n", once.l2, once.max);
    // One rounding to bf16 (8 significant bits) errs by ~1.5e-3 rms relative. Accumulating in bf16
    // rounds the running sum of k products (size ~sqrt(k)) at k = 1..32: the errors add up to
    // 1.5e-3 * sqrt(1 + 2 + ... + 32) / sqrt(32) ~ 6e-3 of the final sum (measured: 6.8e-3 L2, 5.4e-2
    // of rms on the worst element). fp32: the same at 2^-24, plus the fp32 dot products' rounding.
    CHECK(bf16.l2 > 4e-3);
    CHECK(bf16.l2 < 1e-2);
    CHECK(fp32.l2 < 1e-6);
    CHECK(fp32.max < 1e-5);
    CHECK(bf16.l2 > 1000 * fp32.l2);
    CHECK(bf16.l2 > 3 * once.l2);  // accumulating in bf16 costs several times one final rounding
}
