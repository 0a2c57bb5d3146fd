// The harness every dev/<kernel>.cu benchmark shares (issue 3): device buffers with random contents,
// an L2 flush between timed runs, benchmark_kernel (CUDA events, warm-up, median of many runs), the
// device's measured ceilings (copy bandwidth, bf16 GEMM rate), validation against the CPU references
// of kernels/cpu, and the one output format run_all.sh reads:
//
//   <kernel> <shape> v<version>: <value> <GB/s|TFLOP/s> (<pct>% of <copy|gemm>) <time> us ...
//
// Method. Each benchmark validates the version it runs against the CPU reference, in double on the
// same floatX values, before timing each shape; a shape that fails a check is not timed, the others
// still are, and the benchmark then exits with status 1. Every timed run
// starts from a cold L2: a kernel first reads a buffer of 4x the L2 size (untimed), which leaves L2
// full of clean lines. L2 is write-back, so a kernel whose output fits in L2 (the 130M shapes: 25 MB
// against 50 MB) would end before its writes reach DRAM, and its GB/s would be too high; so the timed
// window also covers a second read of 2x the L2 size from another buffer, which writes back whatever
// the kernel left dirty, and that read's own time on a clean L2 (calibrated once, median) is
// subtracted. Memory-bound results use this time ("with write-back"); the FLOP rates of compute-bound
// kernels use the kernel's own time, between events recorded right around it (both are printed).
// Times are medians over DEV_REPEATS (default 50) runs after 5 warm-up runs. GB/s counts the bytes a
// kernel must read and write (each kernel file says which), so 100% of copy would be a kernel moving
// its data at the rate of cudaMemcpy on a buffer much larger than L2, counted read plus written.
//
// Exit status of every benchmark: 0 ok, 1 a failed validation or CUDA error, 2 bad command line,
// 3 the version is not available in this build's precision (run_all.sh reports it as skipped).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>
#include "../kernels/common.cuh"
#include "../kernels/ptx.cuh"  // fast_exp2, LOG2E and the PTX wrappers
#include "tolerances.h"

// ----------------------------------------------------------------------------
// Command line: every benchmark takes one version number; --num-versions prints how many there are.

inline int parse_version(int argc, char** argv, int num_versions, const char* const* descriptions) {
    if (argc == 2 && strcmp(argv[1], "--num-versions") == 0) {
        printf("%d\n", num_versions);
        exit(0);
    }
    const int version = argc >= 2 ? atoi(argv[1]) : 1;
    if (argc > 2 || version < 1 || version > num_versions) {
        fprintf(stderr, "usage: %s [version]   (default 1)  |  %s --num-versions\n", argv[0], argv[0]);
        for (int v = 1; v <= num_versions; v++) fprintf(stderr, "  %d: %s\n", v, descriptions[v - 1]);
        exit(2);
    }
    printf("version %d: %s   (storage %s)\n", version, descriptions[version - 1], FLOATX_IS_FP32 ? "fp32" : "bf16");
    return version;
}

// A version that only exists in the bf16 build (tensor-core code) says so and exits with status 3.
inline void require_bf16(int version) {
    if (FLOATX_IS_FP32) {
        printf("version %d needs bf16 storage (tensor cores); skipped in the fp32 build\n", version);
        exit(3);
    }
}

inline int env_int(const char* name, int fallback) {
    const char* s = getenv(name);
    return s && *s ? atoi(s) : fallback;
}

// DEV_SMALL_ONLY=1: a benchmark with small validation shapes checks only those, times nothing and
// skips the ceilings; quick enough to run under compute-sanitizer, which sees out-of-bounds accesses
// in the vector tails that a comparison might not:
//   DEV_SMALL_ONLY=1 compute-sanitizer --tool memcheck build/dev/swiglu 3
inline bool small_shapes_only() { return env_int("DEV_SMALL_ONLY", 0) != 0; }

// ----------------------------------------------------------------------------
// Device buffers filled on the device (hashing the index, so contents do not depend on the grid and
// billion-element buffers fill in milliseconds) and read back as floats for validation.

__device__ __host__ inline uint64_t mix64(uint64_t z) {  // SplitMix64's finalizer
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// p[i] = mean + std * normal (Box-Muller on two 24-bit uniforms of hash(seed, i)); uniform = true gives
// mean + std * U[0, 1) instead.
template <typename T>
__global__ void fill_random_kernel(T* p, long n, uint64_t seed, float mean, float std, bool uniform) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const uint64_t r = mix64(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i);
        const float u1 = ((r >> 40) + 1) * 0x1p-24f;        // (0, 1]
        const float u2 = ((r >> 16) & 0xFFFFFF) * 0x1p-24f;  // [0, 1)
        const float z = uniform ? u2 : sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
        p[i] = (T)(mean + std * z);
    }
}

template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;

    explicit DeviceBuffer(size_t count) : n(count) { cudaCheck(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T))); }
    ~DeviceBuffer() { cudaCheck(cudaFree(ptr)); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    size_t bytes() const { return n * sizeof(T); }
    void fill_normal(uint64_t seed, float std = 1.0f, float mean = 0.0f) { fill(seed, mean, std, false); }
    void fill_uniform(uint64_t seed, float lo, float hi) { fill(seed, lo, hi - lo, true); }
    void zero() { cudaCheck(cudaMemset(ptr, 0, bytes())); }
    // all bytes 0xFF: NaN in bf16 and fp32, so an element a kernel fails to write fails validation
    void poison() { cudaCheck(cudaMemset(ptr, 0xFF, bytes())); }
    void copy_from(const DeviceBuffer& other) {
        cudaCheck(cudaMemcpy(ptr, other.ptr, std::min(bytes(), other.bytes()), cudaMemcpyDeviceToDevice));
    }
    std::vector<T> raw(size_t offset = 0, size_t count = SIZE_MAX) const {
        count = std::min(count, n - offset);
        std::vector<T> host(count);
        cudaCheck(cudaMemcpy(host.data(), ptr + offset, count * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
    void upload_raw(const std::vector<T>& host, size_t offset = 0) {
        cudaCheck(cudaMemcpy(ptr + offset, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    // elements [offset, offset + count) as floats
    std::vector<float> download(size_t offset = 0, size_t count = SIZE_MAX) const {
        const std::vector<T> host = raw(offset, count);
        std::vector<float> out(host.size());
        for (size_t i = 0; i < host.size(); i++) out[i] = (float)host[i];
        return out;
    }
    // rows `rows` of a (?, C) matrix, concatenated
    std::vector<float> download_rows(const std::vector<long>& rows, long C) const {
        std::vector<float> out;
        out.reserve(rows.size() * C);
        for (long r : rows) {
            const std::vector<float> row = download((size_t)r * C, C);
            out.insert(out.end(), row.begin(), row.end());
        }
        return out;
    }

private:
    void fill(uint64_t seed, float a, float b, bool uniform) {
        fill_random_kernel<<<1024, 256>>>(ptr, (long)n, seed, a, b, uniform);
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaDeviceSynchronize());
    }
};

// Rows checked when a tensor is too large to check whole: the first, middle and last `each` rows.
inline std::vector<long> sample_rows(long N, long each) {
    std::vector<long> rows;
    for (long start : {0L, N / 2, N - each})
        for (long r = start; r < start + each; r++)
            if (r >= 0 && r < N && (rows.empty() || r > rows.back())) rows.push_back(r);
    return rows;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// ----------------------------------------------------------------------------
// Validation: the metric and tolerances of dev/tolerances.h (plain C++, shared with the CPU test that
// shows each tolerance passes the emulated kernel and fails planted bugs), for this build's storage.

constexpr double STORE_TOL = store_tol(!FLOATX_IS_FP32);

// The checks of one (kernel, shape, version): each prints its error; a failed one marks the shape as
// not to be timed (passed false) and is counted, and the benchmark goes on to the next shape, ending
// with exit status 1 (validation_exit_status) so that run_all.sh reports it.
inline int failed_validations = 0;

struct Validation {
    bool passed = true;

    // One output, `error` against `bound` (described by `metric`).
    void record(const char* what, size_t count, const char* metric, double error, double bound) {
        const bool ok = error <= bound;  // false for NaN
        printf("  check %-10s %9zu values, %s %.2e, tolerance %.2e %s\n", what, count, metric, error, bound,
               ok ? "ok" : "FAILED");
        if (!ok) {
            fprintf(stderr, "VALIDATION FAILED: %s (%s %.2e > %.2e); not timed\n", what, metric, error, bound);
            passed = false;
            failed_validations++;
        }
    }
    // The metric above.
    void check(const char* what, const std::vector<float>& gpu, const std::vector<double>& ref, double tol) {
        record(what, gpu.size(), "max error", max_relative_error(gpu, ref), tol);
    }
};

inline int validation_exit_status() {
    if (failed_validations) fprintf(stderr, "%d validation(s) FAILED\n", failed_validations);
    return failed_validations ? EXIT_FAILURE : 0;
}

// Kernels templated on a count of vectors per thread are instantiated for powers of two: this calls
// f(std::integral_constant<int, P>()) with the smallest P in {1, 2, 4, 8, 16} that is >= n, and
// returns false when n > 16 (the caller reports the shape as unsupported).
template <typename F>
bool dispatch_pow2(int n, F&& f) {
    if (n <= 1) f(std::integral_constant<int, 1>());
    else if (n <= 2) f(std::integral_constant<int, 2>());
    else if (n <= 4) f(std::integral_constant<int, 4>());
    else if (n <= 8) f(std::integral_constant<int, 8>());
    else if (n <= 16) f(std::integral_constant<int, 16>());
    else return false;
    return true;
}

[[noreturn]] inline void unsupported(const char* what) {
    fprintf(stderr, "unsupported shape: %s\n", what);
    exit(EXIT_FAILURE);
}

// ----------------------------------------------------------------------------
// The device, the ceilings and the timer.

struct Bench {
    cudaDeviceProp prop;
    cudaEvent_t start, mid, stop;
    int4* flush_buffer = nullptr;  // 4x L2: makes L2 cold before a timed run
    int4* drain_buffer = nullptr;  // 2x L2: writes back what a timed kernel left dirty
    long flush_count = 0, drain_count = 0;
    int* flush_sink = nullptr;
    float drain_ms = 0;  // the drain's own time on a clean L2
    double copy_gbs = 0, gemm_tflops = 0;
    int repeats = 50, warmup = 5;
};
inline Bench bench;

// Reads every element (through L2 only); the sink is written only if the xor of everything read is a
// value the all-zero buffer cannot give, so the loads cannot be optimized away and nothing is written.
__global__ void l2_flush_kernel(const int4* buf, long n, int* sink) {
    int acc = 0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int4 v = __ldcg(buf + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x5eed) *sink = acc;
}

inline void read_buffer(const int4* buf, long count, cudaStream_t stream) {
    l2_flush_kernel<<<bench.prop.multiProcessorCount * 4, 512, 0, stream>>>(buf, count, bench.flush_sink);
    cudaCheck(cudaGetLastError());
}
inline void flush_l2(cudaStream_t stream = 0) { read_buffer(bench.flush_buffer, bench.flush_count, stream); }
inline void drain_l2(cudaStream_t stream = 0) { read_buffer(bench.drain_buffer, bench.drain_count, stream); }

struct NoSetup {
    void operator()() const {}
};

// Median times in ms of run() on `stream`: the kernel alone, and with the write-back of what it left
// dirty in L2 (see the method above).
struct Timing {
    float ms;                 // the kernel alone, from a cold L2
    float ms_with_writeback;  // plus writing back its dirty lines: what it costs in a stream of kernels
};

inline float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Each timed run is preceded by setup() (untimed: e.g. restoring an input the kernel overwrites) and
// the L2 flush.
template <typename Run, typename Setup = NoSetup>
Timing benchmark_kernel(Run&& run, Setup&& setup = Setup(), cudaStream_t stream = 0) {
    for (int i = 0; i < bench.warmup; i++) { setup(); run(); }
    cudaCheck(cudaGetLastError());
    std::vector<float> alone(bench.repeats), with_writeback(bench.repeats);
    for (int i = 0; i < bench.repeats; i++) {
        setup();
        flush_l2(stream);
        cudaCheck(cudaEventRecord(bench.start, stream));
        run();
        cudaCheck(cudaEventRecord(bench.mid, stream));
        drain_l2(stream);
        cudaCheck(cudaEventRecord(bench.stop, stream));
        cudaCheck(cudaEventSynchronize(bench.stop));
        float total = 0;
        cudaCheck(cudaEventElapsedTime(&alone[i], bench.start, bench.mid));
        cudaCheck(cudaEventElapsedTime(&total, bench.start, bench.stop));
        with_writeback[i] = std::max(alone[i], total - bench.drain_ms);
    }
    cudaCheck(cudaGetLastError());
    return {median(alone), median(with_writeback)};
}

// bf16 GEMM 8192^3 (fp32 accumulation) through cuBLASLt: D = A^T B, the "TN" layout cuBLAS is fastest
// in, on random inputs. Returns TFLOP/s (2 * n^3 flops per product).
inline double measure_gemm_tflops(int n) {
    DeviceBuffer<__nv_bfloat16> a((size_t)n * n), b((size_t)n * n), d((size_t)n * n);
    a.fill_normal(1);
    b.fill_normal(2);
    const size_t workspace_bytes = 32u << 20;
    DeviceBuffer<char> workspace(workspace_bytes);
    cublasLtHandle_t handle;
    cublasCheck(cublasLtCreate(&handle));
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
    cublasLtMatrixLayout_t layout;
    cublasCheck(cublasLtMatrixLayoutCreate(&layout, CUDA_R_16BF, n, n, n));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = workspace_bytes;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(handle, desc, layout, layout, layout, layout, pref, 1, &heuristic, &found));
    if (!found) {
        fprintf(stderr, "cuBLASLt has no bf16 algorithm for %d^3\n", n);
        exit(EXIT_FAILURE);
    }
    const float alpha = 1.0f, beta = 0.0f;
    const float ms = benchmark_kernel([&] {
        cublasCheck(cublasLtMatmul(handle, desc, &alpha, a.ptr, layout, b.ptr, layout, &beta, d.ptr, layout, d.ptr,
                                   layout, &heuristic.algo, workspace.ptr, workspace_bytes, 0));
    }).ms;
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
    cublasCheck(cublasLtDestroy(handle));
    return 2.0 * n * (double)n * n / (ms * 1e-3) / 1e12;
}

// Device-to-device cudaMemcpy of `bytes`, counting bytes read plus written.
inline double measure_copy_gbs(size_t bytes) {
    DeviceBuffer<char> src(bytes), dst(bytes);
    cudaCheck(cudaMemset(src.ptr, 1, bytes));
    const float ms =
        benchmark_kernel([&] { cudaCheck(cudaMemcpyAsync(dst.ptr, src.ptr, bytes, cudaMemcpyDeviceToDevice, 0)); })
            .ms_with_writeback;
    return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

// Sets up the timer and the L2 flush, prints the device, and measures the two ceilings every result
// is reported against (a 1 GiB copy, >> L2; the 8192^3 bf16 GEMM). Call first in main.
inline void measure_ceilings() {
    cudaCheck(cudaSetDevice(0));
    cudaCheck(cudaGetDeviceProperties(&bench.prop, 0));
    bench.repeats = std::max(1, env_int("DEV_REPEATS", 50));
    cudaCheck(cudaEventCreate(&bench.start));
    cudaCheck(cudaEventCreate(&bench.mid));
    cudaCheck(cudaEventCreate(&bench.stop));
    if (small_shapes_only()) {
        printf("device: %s; DEV_SMALL_ONLY=1: validation of the small shapes only, nothing timed\n", bench.prop.name);
        return;
    }
    const size_t l2 = std::max(bench.prop.l2CacheSize, 1 << 20);
    bench.flush_count = (long)(4 * l2 / sizeof(int4));
    bench.drain_count = (long)(2 * l2 / sizeof(int4));
    cudaCheck(cudaMalloc(&bench.flush_buffer, 4 * l2));
    cudaCheck(cudaMemset(bench.flush_buffer, 0, 4 * l2));
    cudaCheck(cudaMalloc(&bench.drain_buffer, 2 * l2));
    cudaCheck(cudaMemset(bench.drain_buffer, 0, 2 * l2));
    cudaCheck(cudaMalloc(&bench.flush_sink, sizeof(int)));
    // The drain's own time, as it runs in benchmark_kernel but with nothing dirty in L2.
    bench.drain_ms = 0;
    bench.drain_ms = benchmark_kernel([] {}).ms_with_writeback;
    printf("device: %s, %d SMs, L2 %.0f MB, %.0f GB memory; median of %d runs after %d warm-up, cold L2, "
           "write-back drain %.1f us\n",
           bench.prop.name, bench.prop.multiProcessorCount, bench.prop.l2CacheSize / 1e6, bench.prop.totalGlobalMem / 1e9,
           bench.repeats, bench.warmup, bench.drain_ms * 1e3);
    bench.copy_gbs = measure_copy_gbs((size_t)1 << 30);
    bench.gemm_tflops = measure_gemm_tflops(8192);
    printf("ceiling copy: %.1f GB/s (device-to-device cudaMemcpy of 1 GiB, read + write)\n", bench.copy_gbs);
    printf("ceiling gemm: %.1f TFLOP/s (cuBLASLt bf16 8192^3, fp32 accumulation)\n", bench.gemm_tflops);
}

// ----------------------------------------------------------------------------
// Results: one line per (kernel, shape, version); shape has no spaces.

// Memory-bound kernels: bytes over the time with write-back.
inline void report_bandwidth(const char* kernel, const std::string& shape, int version, double bytes, Timing t) {
    const double gbs = bytes / (t.ms_with_writeback * 1e-3) / 1e9;
    printf("%s %s v%d: %.1f GB/s (%.1f%% of copy) %.1f us with write-back, %.1f us kernel alone\n", kernel,
           shape.c_str(), version, gbs, 100.0 * gbs / bench.copy_gbs, t.ms_with_writeback * 1e3, t.ms * 1e3);
    fflush(stdout);
}

// Compute-bound kernels: FLOPs over the kernel's own time.
inline void report_flops(const char* kernel, const std::string& shape, int version, double flops, Timing t) {
    const double tflops = flops / (t.ms * 1e-3) / 1e12;
    printf("%s %s v%d: %.1f TFLOP/s (%.1f%% of gemm) %.1f us kernel alone, %.1f us with write-back\n", kernel,
           shape.c_str(), version, tflops, 100.0 * tflops / bench.gemm_tflops, t.ms * 1e3, t.ms_with_writeback * 1e3);
    fflush(stdout);
}

// The two model shapes every memory-bound benchmark runs: B*T = 16384 tokens of the 130M and 1B presets
// (core/config.h: d 768, 12 heads; d 2048, 32 heads; vocabulary 32000; dev/swiglu.cu takes the stored
// MLP width from the preset).
struct ModelShape {
    const char* name;
    int C, NH;
};
constexpr int TOKENS = 16384, SEQ_LEN = 256, VOCAB = 32000;
constexpr ModelShape MODEL_SHAPES[] = {{"130m", 768, 12}, {"1b", 2048, 32}};

inline std::string shape_name(const char* model, long rows, long cols) {
    return std::string(model) + ":" + std::to_string(rows) + "x" + std::to_string(cols);
}
