// The end of a sublayer: its output product, the residual add of the paper's eq. 1 and 2 and the norm
// after it, sum = s * x + inp W^T, out = rmsnorm(sum) * w (CPU references kernels/cpu/matmul.h,
// kernels/cpu/residual.h, kernels/cpu/rmsnorm.h), at the shapes of the trainer's o and down products.
//
// Versions:
//   1  the trainer's: the product adds s * x in cuBLASLt's epilogue (matmul_forward_residual, C = x,
//      beta = s), then rmsnorm_forward reads the stored sum.
//   2  the trainer before it: the product writes F(x) (beta = 0), then one kernel reads x and F(x),
//      writes the sum and the norm (one warp per row, 128-bit accesses, the row in registers).
// Beyond the product's operands, version 1 moves the sum through memory three times (the product
// reads x and writes the sum, the norm reads it) and the norm's output once; version 2 five times
// (F(x) written and read back, x read, the sum written) and the output once: 2 N C X bytes fewer.
//
// Build and run (make dev builds every benchmark):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/residual.cu -o residual -lcublasLt -lcublas
//   ./residual 1
//
// Timed: the two launches together; reported as the product's FLOPs (2 N K C) over their time, so the
// two versions' lines compare the whole sublayer end. Validation: small shapes whole; at the model
// shapes the first, middle and last 2 rows, each sum against s * x + the dot products in double from
// the same floatX values (dev/tolerances.h's matmul_tol for K: s * x only adds to the reference's
// size; version 2 one rounding more), the output against the CPU norm of the GPU's stored sum
// (STORE_TOL), rstd FP32_TOL.
#include <cmath>
#include <string>
#include <vector>
#include "common.cuh"
#include "../core/config.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/matmul.cuh"
#include "../kernels/rmsnorm.cuh"

static const char* const VERSIONS[] = {
    "the trainer's: the residual added in the product's epilogue (cuBLASLt's C), then rmsnorm",
    "the product alone, then one kernel adding the residual and norming the sum",
};

// ----------------------------------------------------------------------------
// Version 2: one warp per row n, sum = s * x + f rounded to floatX and stored, then the norm from the
// rounded row kept in registers (kernels/rmsnorm.cuh's rmsnorm_row and launch checks).

template <int VPL>
__global__ void __launch_bounds__(256) residual_rmsnorm_v2_kernel(floatX* sum, floatX* out, float* rstd,
                                                                  const floatX* x, const floatX* f, const floatX* w,
                                                                  float s, int N, int C, float eps) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (n >= N) return;  // the whole warp leaves together
    PackedX in[VPL];
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        if (lane + 32 * k >= C / VEC) continue;
        const long at = (long)n * C + (lane + 32 * k) * VEC;
        const PackedX xv = load128(x + at), fv = load128(f + at);
#pragma unroll
        for (int e = 0; e < VEC; e++) in[k][e] = (floatX)(s * (float)xv[e] + (float)fv[e]);
        store128(sum + at, in[k]);
    }
    rmsnorm_row(out, rstd, in, w, n, C, eps);
}

static void residual_rmsnorm_v2(floatX* sum, floatX* out, float* rstd, const floatX* x, const floatX* f,
                                const floatX* w, float s, int N, int C, float eps) {
    rmsnorm_check_shape("residual rmsnorm version 2", C, {sum, out, x, f, w});
    with_vectors_per_lane(C, [&](auto vpl) {
        residual_rmsnorm_v2_kernel<decltype(vpl)::value><<<ceil_div(N, 8), 256>>>(sum, out, rstd, x, f, w, s, N, C,
                                                                                   eps);
    });
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------

// x (the residual, std 2) and inp standard normal, W of std 1 / sqrt(K) (F(x) of about unit size), w
// standard normal; s = 1.7 (as DeepNorm's) on the small shapes, 1 (Pre-LN) at the model shapes.
static void run_shape(int version, const char* shape, int N, int K, int C, float s, bool timed) {
    const bool bf16 = !FLOATX_IS_FP32;
    const float eps = 1e-6f;
    DeviceBuffer<floatX> inp((size_t)N * K), W((size_t)C * K), x((size_t)N * C), f((size_t)N * C), sum((size_t)N * C),
        out((size_t)N * C), w(C);
    DeviceBuffer<float> rstd(N);
    inp.fill_normal(51);
    W.fill_normal(52, 1.0f / std::sqrt((float)K));
    x.fill_normal(53, 2.0f);
    w.fill_normal(54);
    const std::vector<long> rows = timed ? sample_rows(N, 2) : sample_rows(N, N);
    printf("%s: N %d, K %d, C %d, s %g, %zu rows checked\n", shape, N, K, C, s, rows.size());

    auto run = [&] {
        if (version == 1) {
            matmul_forward_residual(sum.ptr, inp.ptr, W.ptr, x.ptr, s, N, K, C, 0);
            rmsnorm_forward(out.ptr, rstd.ptr, sum.ptr, w.ptr, N, C, eps, 0);
        } else {
            matmul_forward(f.ptr, inp.ptr, W.ptr, N, K, C, 0);
            residual_rmsnorm_v2(sum.ptr, out.ptr, rstd.ptr, x.ptr, f.ptr, w.ptr, s, N, C, eps);
        }
    };
    sum.poison();
    out.poison();
    rstd.poison();
    run();
    cudaCheck(cudaDeviceSynchronize());

    const std::vector<float> ir = inp.download_rows(rows, K), Wh = W.download(), xr = x.download_rows(rows, C);
    const std::vector<float> sr = sum.download_rows(rows, C), orows = out.download_rows(rows, C), rs = rstd.download();
    std::vector<double> sum_ref(sr.size()), out_ref(sr.size()), rstd_ref(rows.size());
    for (size_t i = 0; i < rows.size(); i++)
        for (int c = 0; c < C; c++) {
            double dot = 0;
            for (int k = 0; k < K; k++) dot += (double)ir[i * K + k] * Wh[(size_t)c * K + k];
            sum_ref[i * C + c] = (double)s * xr[i * C + c] + dot;
        }
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), to_double(sr).data(), to_double(w.download()).data(),
                    (int)rows.size(), C, (double)eps);
    std::vector<float> rstd_rows;
    for (long r : rows) rstd_rows.push_back(rs[r]);
    Validation checks;
    // Version 2 rounds twice: F(x) to floatX before the add (2^-8 of |F(x)|, under the sum's rms here:
    // x of std 2, s >= 1, F(x) of unit size), then the sum.
    checks.check("sum", sr, sum_ref, matmul_tol(bf16, K, true) + (version == 2 ? bf16_rounding(bf16) : 0.0));
    checks.check("out", orows, out_ref, STORE_TOL);
    checks.check("rstd", rstd_rows, rstd_ref, FP32_TOL);
    if (checks.passed && timed) report_flops("sublayer_end", shape, version, 2.0 * N * K * C, benchmark_kernel(run));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 2, VERSIONS);
    measure_ceilings();
    matmul_setup();
    // Small shapes: a partial tile of rows and columns for the product, and the norm's rows spread
    // over a block's warps with one left without a row (N = 7).
    run_shape(version, "small", 7, 96, 256, 1.7f, false);
    run_shape(version, "small_rows", 133, 768, 768, 1.7f, false);
    if (!small_shapes_only())
        for (const ModelShape& m : MODEL_SHAPES) {
            ModelConfig cfg;
            apply_model_preset(m.name, &cfg);
            const int F = (int)ffn_stored(cfg);
            run_shape(version, (shape_name(m.name, TOKENS, m.C) + "_o").c_str(), TOKENS, m.C, m.C, 1.0f, true);
            run_shape(version, (shape_name(m.name, TOKENS, m.C) + "_down").c_str(), TOKENS, F, m.C, 1.0f, true);
        }
    matmul_teardown();
    return validation_exit_status();
}
