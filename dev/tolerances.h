// The dev/ benchmarks' validation metric and tolerances, in plain C++ so that the CPU test of the
// tolerances (test/test_dev_tolerances.cpp) judges its emulated kernels and planted bugs with exactly
// what dev/common.cuh judges the GPU with.
//
// Metric, as the GPU tests' (test/gpu_test_utils.cuh):
//   max_i |gpu_i - ref_i| / max(|ref_i|, rms(ref)),  infinite if any gpu_i is not finite,
// a relative error for elements of typical size or larger, and relative to the tensor's rms for the
// small ones, whose rounding error comes from cancellation and scales with the terms.
// Tolerances: FP32_TOL for fp32 arithmetic over sums of at most a few thousand terms (a random walk of
// 2^-24 steps, plus 2 ulp per CUDA math function); store_tol adds the one rounding of an fp32 result
// stored as bf16 (2^-8 relative). Kernels with more roundings say so where they check.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

constexpr double FP32_TOL = 1e-5;
constexpr double bf16_rounding(bool bf16) { return bf16 ? 0x1p-8 : 0.0; }
constexpr double store_tol(bool bf16) { return FP32_TOL + bf16_rounding(bf16); }

// A matrix product with fp32 accumulation of K-term dot products (dev/matmul.cu, through cuBLASLt), on
// the metric above. The fp32 build's FFMA rounds the running sum to nearest, 2^-24 of it per step; the
// bf16 build's tensor cores may truncate it instead (Fasi et al., 2021), up to 2^-23 per step and all
// in one direction. For sums of random signs the running sum stays within about the result's rms, so K
// steps move it by at most K times that per step, relative to the rms; then the one rounding of a
// floatX output (out, dinp; not the fp32 dW). Worst cases, not calibrated: test/test_dev_tolerances.cpp
// shows a truncating emulation at K = 16384 within half of it and a wrong operand far outside.
inline double matmul_tol(bool bf16, long K, bool output_rounded) {
    return (bf16 ? 0x1p-23 : 0x1p-24) * K + (output_rounded ? bf16_rounding(bf16) : 0.0) + FP32_TOL;
}

inline double max_relative_error(const std::vector<float>& gpu, const std::vector<double>& ref) {
    if (gpu.size() != ref.size()) {
        fprintf(stderr, "validation: %zu values from the GPU, %zu from the reference\n", gpu.size(), ref.size());
        exit(EXIT_FAILURE);
    }
    double sum_sq = 0;
    for (double r : ref) sum_sq += r * r;
    const double rms = ref.empty() ? 0.0 : std::sqrt(sum_sq / ref.size());
    double worst = 0;
    for (size_t i = 0; i < gpu.size(); i++) {
        if (!std::isfinite(gpu[i])) return INFINITY;
        worst = std::max(worst, std::fabs(gpu[i] - ref[i]) / std::max({std::fabs(ref[i]), rms, 1e-300}));
    }
    return worst;
}

// The relative error of __expf(x), from the CUDA Programming Guide's table of intrinsic functions:
// at most 2 + floor(|1.173 x|) ulp, and one ulp of a normal fp32 result is at most 2^-23 of it.
inline double fast_exp_relative_error(double x) { return (2.0 + std::floor(std::fabs(1.173 * x))) * 0x1p-23; }

// __fdividef(x, y): 2 ulp for |y| in [2^-126, 2^126] (the same table).
constexpr double FAST_DIVIDE_RELATIVE_ERROR = 2 * 0x1p-23;

// SwiGLU with the fast sigmoid s = __fdividef(1, 1 + __expf(-g)) (dev/swiglu.cu version 3), on gates
// with |g| <= max_abs_gate: s is off by at most the exp's error (ds/s = -(1 - s) de/e, and 1 - s <= 1),
// one rounding of 1 + e (2^-24) and the division's error. silu = g s carries it as is, and so do the
// backward's s and (1 - s) = e s (computed that way where s >= 1/2, so it has the same relative error
// and no cancellation); the factor 2 covers both appearing in one product. The fp32 products and the
// final rounding are the tolerance it adds to, store_tol.
inline double fast_sigmoid_tol(bool bf16, double max_abs_gate) {
    const double sigmoid_error = fast_exp_relative_error(max_abs_gate) + 0x1p-24 + FAST_DIVIDE_RELATIVE_ERROR;
    return store_tol(bf16) + 2 * sigmoid_error;
}
