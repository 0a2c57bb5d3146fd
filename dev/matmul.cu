// The trainer's matrix products (kernels/matmul.cuh, through cuBLASLt; CPU reference
// kernels/cpu/matmul.h) at the shapes of a micro-batch of 16384 tokens of the 130m and 1b presets:
// each layer's q|k|v, o, gate|up and down, and the LM head, each as its forward (out = inp W^T), its
// weight gradient (dW += dout^T inp, fp32) and its input gradient (dinp = dout W).
//
// Why: dev/cost_model.py predicts the GEMMs at 61% of the 130m step, at the 8192^3 rate times a wave
// efficiency of its own assumption. Each line here is the measured rate at one shape as a fraction of
// the 8192^3 rate measured in the same run; the model's fraction for the same product is
//   python3 -c "import sys; sys.path[:0] = ['dev']; import cost_model; print(cost_model.wave_efficiency(M, N, K))"
// with D (M, N) and k = K: the forward (tokens, OC, C), the weight gradient (OC, C, tokens), the input
// gradient (tokens, C, OC). Where the measured fraction is lower, the prediction is too high.
//
// Versions:
//   1  the trainer's: of the heuristic's first 4 algorithms, the fastest on the product's own operands,
//      timed when its plan is made
//   2  the heuristic's first (as with MIXLN_MATMUL_TIMING=0): what the timing buys
//
// Build and run (make dev builds every benchmark):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/matmul.cu -o matmul -lcublasLt -lcublas
//   ./matmul 1
//
// FLOPs counted: 2 N C OC per product (N tokens, C in, OC out). Validation: small shapes whole; at the
// model shapes a 6 x 6 block of each output (first, middle and last 2 rows and columns), each element
// a dot product of its K terms recomputed in double from the same bf16 values; tolerance
// dev/tolerances.h's matmul_tol for that K.
#include <string>
#include <vector>
#include "common.cuh"
#include "../core/config.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/matmul.cuh"

static const char* const VERSIONS[] = {
    "the trainer's (kernels/matmul.cuh): the fastest of the heuristic's first 4 cuBLASLt algorithms",
    "the heuristic's first cuBLASLt algorithm (MIXLN_MATMUL_TIMING=0)",
};

// out[j * rows + i] = src[i * ld + cols[j]]: columns of a row-major matrix, one after another.
template <typename T>
__global__ void gather_columns_kernel(float* out, const T* src, long rows, long ld, const int* cols, int num_cols) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += (long)gridDim.x * blockDim.x)
        for (int j = 0; j < num_cols; j++) out[j * rows + i] = (float)src[i * ld + cols[j]];
}

// Columns `cols` of a row-major (rows, ld) device matrix, one after another (each `rows` long).
template <typename T>
static std::vector<float> download_columns(const DeviceBuffer<T>& m, long rows, long ld, const std::vector<long>& cols) {
    const std::vector<int> c(cols.begin(), cols.end());
    DeviceBuffer<int> d_cols(c.size());
    cudaCheck(cudaMemcpy(d_cols.ptr, c.data(), c.size() * sizeof(int), cudaMemcpyHostToDevice));
    DeviceBuffer<float> gathered((size_t)rows * c.size());
    gather_columns_kernel<<<256, 256>>>(gathered.ptr, m.ptr, rows, ld, d_cols.ptr, (int)c.size());
    cudaCheck(cudaGetLastError());
    return gathered.download();
}

// D's block at rows x cols (D row-major, ld long rows) against base + u_i . v_j in double: u holds one
// vector of K values per row, v one per column, one after another; base holds the rows of what a
// weight gradient was added to (ld long each), or nothing.
template <typename T>
static void check_block(Validation& checks, const char* what, const DeviceBuffer<T>& d, long ld,
                        const std::vector<long>& rows, const std::vector<long>& cols, const std::vector<float>& u,
                        const std::vector<float>& v, const std::vector<float>& base, double tol) {
    const size_t K = u.size() / rows.size();
    const std::vector<float> d_rows = d.download_rows(rows, ld);
    std::vector<float> got;
    std::vector<double> want;
    for (size_t i = 0; i < rows.size(); i++)
        for (size_t j = 0; j < cols.size(); j++) {
            double dot = base.empty() ? 0.0 : base[i * ld + cols[j]];
            for (size_t k = 0; k < K; k++) dot += (double)u[i * K + k] * v[j * K + k];
            got.push_back(d_rows[i * ld + cols[j]]);
            want.push_back(dot);
        }
    checks.check(what, got, want, tol);
}

// The indices checked along a dimension of n: all of a small one, else the first, middle and last 2.
static std::vector<long> checked(long n, bool whole) {
    if (!whole) return sample_rows(n, 2);
    std::vector<long> all(n);
    for (long i = 0; i < n; i++) all[i] = i;
    return all;
}

// Validates the three products of one (N, C, OC) and times them if `timed`. Inputs standard normal;
// dW starts from normal values (the product is added to it, as over a step's micro-batches).
static void run_product(int version, const char* model, const char* product, int N, int C, int OC, bool timed) {
    const std::string shape = std::string(model) + ":" + product + ":" + std::to_string(N) + "x" +
                              std::to_string(OC) + "x" + std::to_string(C);
    const bool bf16 = !FLOATX_IS_FP32, whole = !timed;
    const cudaStream_t stream = 0;
    DeviceBuffer<floatX> inp((size_t)N * C), W((size_t)OC * C), dout((size_t)N * OC), out((size_t)N * OC),
        dinp((size_t)N * C);
    DeviceBuffer<float> dW((size_t)OC * C);
    inp.fill_normal(31);
    W.fill_normal(32);
    dout.fill_normal(33);
    dW.fill_normal(34);
    const std::vector<long> n_idx = checked(N, whole), c_idx = checked(C, whole), oc_idx = checked(OC, whole);
    printf("%s: N %d, C %d, OC %d, blocks of %zu x %zu checked\n", shape.c_str(), N, C, OC, n_idx.size(),
           oc_idx.size());
    const std::vector<float> dW0 = dW.download_rows(oc_idx, C);
    out.poison();
    dinp.poison();
    matmul_forward(out.ptr, inp.ptr, W.ptr, N, C, OC, stream);
    matmul_backward_weight(dW.ptr, dout.ptr, inp.ptr, N, C, OC, stream);
    matmul_backward_input(dinp.ptr, dout.ptr, W.ptr, N, C, OC, stream);
    cudaCheck(cudaDeviceSynchronize());

    Validation checks;  // out[n, o] = inp[n, :] . W[o, :];  dW[o, c] += dout[:, o] . inp[:, c];  dinp[n, c] = dout[n, :] . W[:, c]
    check_block(checks, "out", out, OC, n_idx, oc_idx, inp.download_rows(n_idx, C), W.download_rows(oc_idx, C), {},
                matmul_tol(bf16, C, true));
    check_block(checks, "dW", dW, C, oc_idx, c_idx, download_columns(dout, N, OC, oc_idx),
                download_columns(inp, N, C, c_idx), dW0, matmul_tol(bf16, N, false));
    check_block(checks, "dinp", dinp, C, n_idx, c_idx, dout.download_rows(n_idx, OC), download_columns(W, OC, C, c_idx),
                {}, matmul_tol(bf16, OC, true));
    if (!checks.passed || !timed) return;
    const double flops = 2.0 * N * C * (double)OC;
    report_flops("matmul_forward", shape, version, flops,
                 benchmark_kernel([&] { matmul_forward(out.ptr, inp.ptr, W.ptr, N, C, OC, stream); }));
    report_flops("matmul_dW", shape, version, flops,
                 benchmark_kernel([&] { matmul_backward_weight(dW.ptr, dout.ptr, inp.ptr, N, C, OC, stream); }));
    report_flops("matmul_dinp", shape, version, flops,
                 benchmark_kernel([&] { matmul_backward_input(dinp.ptr, dout.ptr, W.ptr, N, C, OC, stream); }));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 2, VERSIONS);
    matmul_timing = version == 1;
    measure_ceilings();
    matmul_setup();
    run_product(version, "small", "odd", 21, 12, 20, false);
    run_product(version, "small", "wide", 33, 40, 72, false);
    for (const ModelShape& m : MODEL_SHAPES) {
        if (small_shapes_only()) break;
        ModelConfig cfg;
        apply_model_preset(m.name, &cfg);
        const int C = cfg.d_model, F = (int)ffn_stored(cfg);
        run_product(version, m.name, "qkv", TOKENS, C, 3 * C, true);
        run_product(version, m.name, "o", TOKENS, C, C, true);
        run_product(version, m.name, "gate_up", TOKENS, C, 2 * F, true);
        run_product(version, m.name, "down", TOKENS, F, C, true);
        run_product(version, m.name, "lm_head", TOKENS, C, cfg.vocab_size, true);
    }
    matmul_teardown();
    return validation_exit_status();
}
