// Shared by the GPU tests: host <-> device buffers, random inputs rounded to floatX, the error metric
// and the tolerances.
//
// Method. Inputs are random normals rounded to floatX, and the CPU reference runs in double on exactly
// those rounded values, so it is the exact result for the GPU's input and the comparison sees only
// the GPU's own errors. Every output buffer is poisoned before the GPU run (all bytes 0xFF: NaN in
// bf16 and in fp32), so an element a kernel fails to write fails the comparison. Buffers a kernel
// accumulates into start from random values instead, which the reference accumulates into too.
//
// Error metric: max_i |gpu_i - ref_i| / max(|ref_i|, rms(ref)), infinite if any gpu_i is not finite.
// It is the relative error for elements of typical size or larger; small elements are judged relative
// to the tensor's rms, since where they come from cancellation (sums, differences) their rounding
// error scales with the terms, not with the result.
//
// Tolerances, as bounds on that metric (each test says which it uses and why that one applies):
// - FP32_TOL = 1e-5, for fp32 arithmetic. The kernels add up at most ~1000 fp32 terms in one sequence
//   (a row of C <= 1000, a thread's share of V = 50001 logits, a dot product of K = 1000); rounding to
//   nearest makes the errors a random walk of about 2^-24 * sqrt(1000) ~ 2e-6 of the result's scale,
//   and CUDA's expf, logf, rsqrtf, sqrtf are within 2 ulp (1.2e-7). 1e-5 leaves a margin of ~5 over
//   that, while a wrong formula or a wrong index misses it by orders of magnitude.
// - STORE_TOL, for an fp32 result stored as floatX: FP32_TOL plus the one rounding to floatX, 2^-8
//   relative in bf16 (round to nearest with 8 significant bits), nothing in fp32.
// - MATMUL_TOL: in FP32 mode cuBLAS computes in true fp32 (FFMA, round to nearest): FP32_TOL. In BF16
//   mode the tensor cores accumulate in fp32 but may truncate instead of rounding at each step (Fasi et
//   al., 2021), which can bias the sum by up to K * 2^-23 ~ 1.2e-4 of its scale for K = 1000: 2e-4 on
//   top of the 2^-8 of the output rounding.
// STORE_TOL cannot be exceeded by a correct kernel that rounds once: round to nearest bf16 is off by at
// most 2^-8 / (1 + 2^-8) relative, 2.5e-5 under STORE_TOL, far more than the fp32 arithmetic before it.
// Flash attention rounds many times per output and has its own metrics and calibrated bounds
// (test/attention_checks.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "catch_compat.h"
#include "../core/rng.h"
#include "../kernels/common.cuh"

constexpr double FP32_TOL = 1e-5;
constexpr double STORE_TOL = FLOATX_IS_FP32 ? FP32_TOL : FP32_TOL + 0x1p-8;
constexpr double MATMUL_TOL = FLOATX_IS_FP32 ? FP32_TOL : 2e-4 + 0x1p-8;

// Every launch goes to the legacy default stream, so the synchronous copies below wait for it.
static const cudaStream_t STREAM = 0;

// ----------------------------------------------------------------------------
// Host <-> device

// n elements of T in device memory, filled from and read back to host vectors through float.
template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;

    explicit DeviceBuffer(size_t count) : n(count) { cudaCheck(cudaMalloc(&ptr, n * sizeof(T))); }
    template <typename H>
    explicit DeviceBuffer(const std::vector<H>& host) : DeviceBuffer(host.size()) { upload(host); }
    ~DeviceBuffer() { cudaCheck(cudaFree(ptr)); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    template <typename H>
    void upload(const std::vector<H>& host) {
        REQUIRE(host.size() == n);
        std::vector<T> converted(n);
        for (size_t i = 0; i < n; i++) converted[i] = (T)host[i];
        cudaCheck(cudaMemcpy(ptr, converted.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> raw() const {
        std::vector<T> host(n);
        cudaCheck(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
    std::vector<float> download() const {
        const std::vector<T> host = raw();
        return std::vector<float>(host.begin(), host.end());
    }
    void poison() { cudaCheck(cudaMemset(ptr, 0xFF, n * sizeof(T))); }
};

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// n normal values times scale, rounded to floatX: the values the GPU will hold.
static std::vector<float> random_floatX(size_t n, Rng& rng, double scale = 1.0) {
    std::vector<float> v(n);
    for (float& x : v) x = (float)(floatX)(float)(scale * rng.normal());
    return v;
}

// n normal values times scale in fp32, for the buffers that are fp32 in both precisions.
static std::vector<float> random_fp32(size_t n, Rng& rng, double scale = 1.0) {
    std::vector<float> v(n);
    for (float& x : v) x = (float)(scale * rng.normal());
    return v;
}

static std::vector<int> random_tokens(size_t n, Rng& rng, int V) {
    std::vector<int> v(n);
    for (int& t : v) t = (int)rng.below(V);
    return v;
}

static std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// The error metric of the header comment.
static double relative_error(const std::vector<float>& gpu, const std::vector<double>& ref) {
    REQUIRE(gpu.size() == ref.size());
    double sum_sq = 0;
    for (double r : ref) sum_sq += r * r;
    const double rms = std::sqrt(sum_sq / ref.size());
    double worst = 0;
    for (size_t i = 0; i < gpu.size(); i++) {
        if (!std::isfinite(gpu[i])) return INFINITY;
        const double scale = std::max({std::fabs(ref[i]), rms, 1e-300});
        worst = std::max(worst, std::fabs(gpu[i] - ref[i]) / scale);
    }
    return worst;
}

