// SwiGLU gate, forward and backward (kernels/swiglu.cuh; CPU reference kernels/cpu/swiglu.h).
//   out = silu(gate) * up;  dgate = dout * up * s * (1 + g (1 - s)),  dup = dout * silu(g),  s = sigmoid(g)
//
// Layout. In the parameter layout v3 (issue 12) gate and up are one (2F, C) matrix, so one GEMM writes
// gate|up as one (N, 2F) buffer whose row n is [gate_n (F values) | up_n (F values)], and the backward
// writes d(gate|up) in the same layout for the one GEMM that reads it. F is the stored ffn, a multiple
// of 64 (core/config.h's ffn_stored: the 1b preset's 5461 is stored as 5504), as the shapes here.
//
// Versions:
//   1  production, kernels/swiglu.cuh: one 128-bit vector (8 bf16, 4 fp32) per thread for every load
//      and store, gate and up read by row stride (here the (N, 2F) layout, stride 2F); a block of 128
//      threads covers 128 vectors of one row (grid: rows x column blocks, so no thread divides by the
//      row length). Needs F and the stride to be multiples of VEC, checked at launch (ffn_stored makes
//      F a multiple of 64). Arithmetic as version 2 (expf and an IEEE division per sigmoid).
//   2  the production kernel before 128-bit accesses (the simple version): one element per thread (a
//      grid of columns by rows, gate and up read by row stride), 2-byte loads and stores in bf16; any F.
//   3  version 1 on the (N, 2F) layout with the fast sigmoid s = __fdividef(1, 1 + __expf(-g)), and
//      1 - s computed as e * s where s >= 1/2 (no cancellation). Error bound from the CUDA Programming Guide's table (__expf
//      2 + floor(1.173 |x|) ulp, __fdividef 2 ulp): dev/tolerances.h's fast_sigmoid_tol, checked on the
//      CPU by test/test_dev_tolerances.cpp.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/swiglu.cu -o swiglu -lcublasLt -lcublas
//   ./swiglu 1
//
// Bytes counted (X = sizeof(floatX), n = N * F elements of out, N = 16384 tokens):
//   forward   reads gate|up, writes out:                   3 n X
//   backward  reads dout, gate|up, writes d(gate|up):      5 n X
// Before the model shapes are timed, small shapes (a partial block of vectors, few rows) are checked.
#include <vector>
#include "common.cuh"
#include "../core/config.h"
#include "../kernels/cpu/swiglu.h"
#include "../kernels/swiglu.cuh"

static const char* const VERSIONS[] = {
    "production (kernels/swiglu.cuh): gate and up by row stride, 128-bit loads and stores",
    "one element per thread, gate and up by row stride",
    "128-bit loads and stores on the (N, 2F) gate|up, fast sigmoid (__expf, __fdividef)",
};

// ----------------------------------------------------------------------------
// Version 2

// Grid: (ceil(F / blockDim.x), up to 65535 rows). Thread (f, y) handles column f of rows y, y +
// gridDim.y, ...: element (n, f) of out, dout is n * F + f; of gate, up, dgate, dup n * stride + f.
constexpr int SWIGLU_V2_BLOCK = 256;
static dim3 swiglu_v2_grid(int N, int F) {
    return dim3((unsigned)ceil_div(F, SWIGLU_V2_BLOCK), (unsigned)std::min(N, 65535));
}

__global__ void swiglu_forward_v2_kernel(floatX* out, const floatX* gate, const floatX* up, long stride, int N, int F) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    for (long n = blockIdx.y; n < N; n += gridDim.y) {
        const float g = (float)gate[n * stride + f];
        out[n * F + f] = (floatX)(g * sigmoid(g) * (float)up[n * stride + f]);
    }
}

// Both input gradients in one pass, with s = sigmoid(g) and d silu(g)/dg = s * (1 + g * (1 - s)):
//   dgate = dout * up * s * (1 + g * (1 - s)),   dup = dout * silu(g)
// Writes (the CPU reference accumulates into zeroed buffers). dgate and dup may alias gate and up:
// each thread reads its elements before writing them.
__global__ void swiglu_backward_v2_kernel(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate,
                                          const floatX* up, long stride, int N, int F) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= F) return;
    for (long n = blockIdx.y; n < N; n += gridDim.y) {
        const long j = n * stride + f;
        const float g = (float)gate[j], u = (float)up[j], dy = (float)dout[n * F + f];
        const float s = sigmoid(g);
        dgate[j] = (floatX)(dy * u * s * (1.0f + g * (1.0f - s)));
        dup[j] = (floatX)(dy * g * s);
    }
}

// Version 2 on the (N, 2F) gate|up buffer (version 1 is the production launchers with gate_up,
// gate_up + F and stride 2F).
static void swiglu_forward_v2(floatX* out, const floatX* gate_up, int N, int F) {
    swiglu_forward_v2_kernel<<<swiglu_v2_grid(N, F), SWIGLU_V2_BLOCK>>>(out, gate_up, gate_up + F, 2L * F, N, F);
    cudaCheck(cudaGetLastError());
}

static void swiglu_backward_v2(floatX* d_gate_up, const floatX* dout, const floatX* gate_up, int N, int F) {
    swiglu_backward_v2_kernel<<<swiglu_v2_grid(N, F), SWIGLU_V2_BLOCK>>>(d_gate_up, d_gate_up + F, dout, gate_up,
                                                                         gate_up + F, 2L * F, N, F);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Version 3: version 1's kernels on the (N, 2F) layout with the fast sigmoid.

// s = sigmoid(g) and 1 - s.
__device__ inline void fast_sigmoid_pair(float g, float* s, float* one_minus_s) {
    const float e = __expf(-g);  // inf below g = -88: s = 0 (__fdividef gives 0 past 2^126), 1 - s = 1
    *s = __fdividef(1.0f, 1.0f + e);
    *one_minus_s = g < 0.0f ? 1.0f - *s : e * *s;  // 1 - s = e / (1 + e); e <= 1 here, finite
}

// Block (n, b): thread t handles columns f = (b * 128 + t) * VEC .. + VEC - 1 of row n.
__global__ void __launch_bounds__(SWIGLU_BLOCK) swiglu_forward_v3_kernel(floatX* out, const floatX* gate_up, int F) {
    const int f = (blockIdx.y * SWIGLU_BLOCK + threadIdx.x) * VEC;
    if (f >= F) return;
    const floatX* gate = gate_up + (long)blockIdx.x * 2 * F + f;
    const PackedX g = load128(gate), u = load128(gate + F);
    PackedX o;
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        const float gf = (float)g[e];
        float s, one_minus_s;
        fast_sigmoid_pair(gf, &s, &one_minus_s);
        o[e] = (floatX)(gf * s * (float)u[e]);
    }
    store128(out + (long)blockIdx.x * F + f, o);
}

// d_gate_up may alias gate_up: a thread reads its two vectors before writing them.
__global__ void __launch_bounds__(SWIGLU_BLOCK) swiglu_backward_v3_kernel(floatX* d_gate_up, const floatX* dout,
                                                                          const floatX* gate_up, int F) {
    const int f = (blockIdx.y * SWIGLU_BLOCK + threadIdx.x) * VEC;
    if (f >= F) return;
    const long in = (long)blockIdx.x * 2 * F + f;
    const PackedX g = load128(gate_up + in), u = load128(gate_up + in + F);
    const PackedX dy = load128(dout + (long)blockIdx.x * F + f);
    PackedX dg, du;
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        const float gf = (float)g[e], uf = (float)u[e], dyf = (float)dy[e];
        float s, one_minus_s;
        fast_sigmoid_pair(gf, &s, &one_minus_s);
        dg[e] = (floatX)(dyf * uf * s * (1.0f + gf * one_minus_s));
        du[e] = (floatX)(dyf * gf * s);
    }
    store128(d_gate_up + in, dg);
    store128(d_gate_up + in + F, du);
}

static void swiglu_forward_v3(floatX* out, const floatX* gate_up, int N, int F) {
    swiglu_check_shape("swiglu v3 forward", F, 2L * F, out, gate_up, nullptr, nullptr);
    swiglu_forward_v3_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK>>>(out, gate_up, F);
    cudaCheck(cudaGetLastError());
}

static void swiglu_backward_v3(floatX* d_gate_up, const floatX* dout, const floatX* gate_up, int N, int F) {
    swiglu_check_shape("swiglu v3 backward", F, 2L * F, d_gate_up, dout, gate_up, nullptr);
    swiglu_backward_v3_kernel<<<swiglu_grid(N, F), SWIGLU_BLOCK>>>(d_gate_up, dout, gate_up, F);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------

// Validates one shape; times it if `timed`. gate and up normal with std 3 (|g| up to ~15: both tails of
// the sigmoid), dout standard normal. Checked rows: all of a small shape, the first, middle and last 8
// of a model shape (the reference of all 90M elements at 1b would take seconds of run_all's 90).
static void run_shape(int version, const char* model, int N, int F, bool timed) {
    const long n = (long)N * F;
    const std::string shape = shape_name(model, N, F);
    const double X = sizeof(floatX);
    DeviceBuffer<floatX> gate_up(2 * n), out(n), dout(n), d_gate_up(2 * n);
    gate_up.fill_normal(21, 3.0f);
    dout.fill_normal(23);
    const std::vector<long> rows = sample_rows(N, 8);
    // The checked rows of a buffer, concatenated; row_start(r) is where row r starts in it.
    auto gather = [&](const DeviceBuffer<floatX>& buf, auto row_start) {
        std::vector<float> v;
        for (long r : rows) {
            const std::vector<float> row = buf.download(row_start(r), F);
            v.insert(v.end(), row.begin(), row.end());
        }
        return v;
    };
    auto gate_row = [&](long r) { return r * 2 * F; };
    auto up_row = [&](long r) { return r * 2 * F + F; };
    auto out_row = [&](long r) { return r * F; };
    const std::vector<double> gate_h = to_double(gather(gate_up, gate_row)), up_h = to_double(gather(gate_up, up_row));
    const long m = (long)gate_h.size();
    double max_abs_gate = 0;
    for (double g : gate_h) max_abs_gate = std::max(max_abs_gate, std::fabs(g));
    // Versions 1 and 2: STORE_TOL (an expf, a division and a few products in fp32 per element, stored
    // once). Version 3: fast_sigmoid_tol at the largest |gate| of the checked rows.
    const double tol = version == 3 ? fast_sigmoid_tol(!FLOATX_IS_FP32, max_abs_gate) : STORE_TOL;
    printf("%s: N %d, F %d, %zu rows checked, max |gate| %.1f, tolerance %.2e\n", model, N, F, rows.size(),
           max_abs_gate, tol);

    auto forward = [&] {
        if (version == 2) swiglu_forward_v2(out.ptr, gate_up.ptr, N, F);
        else if (version == 1) swiglu_forward(out.ptr, gate_up.ptr, gate_up.ptr + F, 2L * F, N, F, 0);
        else swiglu_forward_v3(out.ptr, gate_up.ptr, N, F);
    };
    out.poison();
    forward();
    std::vector<double> out_ref(m);
    swiglu_forward(out_ref.data(), gate_h.data(), up_h.data(), m);
    Validation forward_checks;
    forward_checks.check("out", gather(out, out_row), out_ref, tol);
    if (forward_checks.passed && timed) report_bandwidth("swiglu_forward", shape, version, 3 * n * X, benchmark_kernel(forward));

    auto backward = [&] {
        if (version == 2) swiglu_backward_v2(d_gate_up.ptr, dout.ptr, gate_up.ptr, N, F);
        else if (version == 1)
            swiglu_backward(d_gate_up.ptr, d_gate_up.ptr + F, dout.ptr, gate_up.ptr, gate_up.ptr + F, 2L * F, N, F, 0);
        else swiglu_backward_v3(d_gate_up.ptr, dout.ptr, gate_up.ptr, N, F);
    };
    d_gate_up.poison();
    backward();
    std::vector<double> dgate_ref(m, 0.0), dup_ref(m, 0.0);
    swiglu_backward(dgate_ref.data(), dup_ref.data(), to_double(gather(dout, out_row)).data(), gate_h.data(), up_h.data(), m);
    Validation backward_checks;
    backward_checks.check("dgate", gather(d_gate_up, gate_row), dgate_ref, tol);
    backward_checks.check("dup", gather(d_gate_up, up_row), dup_ref, tol);
    if (backward_checks.passed && timed)
        report_bandwidth("swiglu_backward", shape, version, 5 * n * X, benchmark_kernel(backward));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 3, VERSIONS);
    measure_ceilings();
    // Small shapes: 3 vectors in a row; 17 (bf16) or 34 (fp32) vectors, a partial block.
    run_shape(version, "small", 5, 24, false);
    run_shape(version, "small", 3, 136, false);
    for (const ModelShape& m : MODEL_SHAPES) {
        ModelConfig cfg;
        apply_model_preset(m.name, &cfg);
        if (!small_shapes_only()) run_shape(version, m.name, TOKENS, (int)ffn_stored(cfg), true);
    }
    return validation_exit_status();
}
