// RMSNorm forward and backward (kernels/rmsnorm.cuh; CPU reference kernels/cpu/rmsnorm.h). The
// residual add before a norm is made by the product before it (dev/residual.cu).
//   rstd = 1 / sqrt(mean(in^2) + eps),  out = in * rstd * w
//
// Versions:
//   1  production, kernels/rmsnorm.cuh: one warp per row everywhere, 128-bit loads and stores (8 bf16
//      per lane per step; C a multiple of 8 / 4 and at most 4096, checked at launch). Forward: the row
//      stays in registers between the reduction and the output pass. Backward: each lane accumulates
//      dweight for its own columns in registers over the rows its warp handles (one full wave of
//      blocks, at most 512); the second pass over a row rereads dout and the input from L1, where the
//      warp has just read them (holding them in registers too would take 238 registers per thread at
//      C = 2048: one block per SM); a block adds its warps' dweight in order; then C / 4 blocks of 128
//      threads add the partial rows (192 blocks at C = 768), one 128-bit load of 4 columns per partial
//      row and a fixed tree (deterministic).
//   2  the production kernels before 128-bit accesses (the simple version; any C, any alignment).
//      Forward: one warp per row, one element per lane per step, rereading the row for the output
//      pass. Backward: a 256-thread block per row (3 or 8 elements per thread at d = 768 or 2048) over
//      512 blocks, dweight partial rows in shared memory, then one thread per column adds the 512
//      partial rows (512 loads in sequence, C / 256 blocks: 3 at C = 768).
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/rmsnorm.cu -o rmsnorm -lcublasLt -lcublas
//   ./rmsnorm 1
//
// Bytes counted (X = sizeof(floatX), N = 16384 rows of C = d):
//   forward            reads x, writes out and rstd:                 2 N C X + 4 N
//   backward           reads dout, inp, dinp, rstd, writes dinp:     4 N C X + 4 N   (Pre-LN, accumulating)
// The weight (C values) and the fp32 dweight partial rows (a few MB at most) are not counted.
#include <vector>
#include "common.cuh"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/rmsnorm.cuh"

static const char* const VERSIONS[] = {
    "production (kernels/rmsnorm.cuh): warp per row, 128-bit loads, row in registers, dweight in registers",
    "one element per lane (forward) or thread (backward), 512 dweight partial rows added per column",
};

// ----------------------------------------------------------------------------
// Version 2

// One warp per row n: out = in * rstd * w.
__global__ void rmsnorm_forward_v2_kernel(floatX* out, float* rstd, const floatX* in, const floatX* w, int N, int C,
                                          float eps) {
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (n >= N) return;  // the whole warp leaves together
    const long row = (long)n * C;
    float sum_sq = 0.0f;
    for (int c = lane; c < C; c += 32) sum_sq += (float)in[row + c] * (float)in[row + c];
    const float r = rsqrtf(warp_reduce_sum(sum_sq) / C + eps);
    if (lane == 0) rstd[n] = r;
    for (int c = lane; c < C; c += 32) out[row + c] = (floatX)((float)in[row + c] * r * (float)w[c]);
}

// Block b handles rows b, b + gridDim.x, ... For each row, with dy = dout, xhat = in * rstd and g =
// dy * w:
//   d = rstd * (g - xhat * mean(g * xhat))           (as kernels/cpu/rmsnorm.h)
//   dinp = d + (accumulate ? dinp : 0)
// and each thread adds dy * xhat of its own columns into the block's shared fp32 dweight row
// (blockDim.x * k + threadIdx.x: no two threads share a slot), written out as dw_partial[b] at the end.
// dinp may alias dout: a thread writes only the elements it has read, after the row's
// reduction (a barrier) ends every read of the first pass.
__global__ void rmsnorm_backward_v2_kernel(floatX* dinp, float* dw_partial, const floatX* dout, const floatX* inp,
                                           const floatX* w, const float* rstd, bool accumulate, int N, int C) {
    extern __shared__ float dw_row[];  // C floats
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_row[c] = 0.0f;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const long row = (long)n * C;
        const float r = rstd[n];
        float dot = 0.0f;  // sum_c g_c * xhat_c, without the common factor r
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dot += (float)dout[row + c] * (float)w[c] * (float)inp[row + c];
        const float mean_dot = block_reduce_sum(dot) * r / C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float dy = (float)dout[row + c];
            const float xhat = (float)inp[row + c] * r;
            float d = r * (dy * (float)w[c] - xhat * mean_dot);
            if (accumulate) d += (float)dinp[row + c];
            dinp[row + c] = (floatX)d;
            dw_row[c] += dy * xhat;
        }
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_partial[(long)blockIdx.x * C + c] = dw_row[c];
}

// dw[c] += sum over b = 0, 1, ..., num_partials - 1 of dw_partial[b, c]: a fixed order.
__global__ void rmsnorm_dweight_v2_kernel(float* dw, const float* dw_partial, int num_partials, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int b = 0; b < num_partials; b++) sum += dw_partial[(long)b * C + c];
    dw[c] += sum;
}

static void rmsnorm_forward_v2(floatX* out, float* rstd, const floatX* in, const floatX* w, int N, int C, float eps) {
    rmsnorm_forward_v2_kernel<<<ceil_div(N, 8), 256>>>(out, rstd, in, w, N, C, eps);
    cudaCheck(cudaGetLastError());
}

// scratch: 512 * C floats.
static void rmsnorm_backward_v2(floatX* dinp, float* dw, float* scratch, const floatX* dout, const floatX* inp,
                                const floatX* w, const float* rstd, bool accumulate, int N, int C) {
    const int grid = std::min(N, 512);
    rmsnorm_backward_v2_kernel<<<grid, 256, C * sizeof(float)>>>(dinp, scratch, dout, inp, w, rstd, accumulate, N, C);
    cudaCheck(cudaGetLastError());
    rmsnorm_dweight_v2_kernel<<<ceil_div(C, 256), 256>>>(dw, scratch, grid, C);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------

// Validates one shape, and times it if `timed`. x is normal with std x_std (the norm's input), w and
// dout standard normal.
static void run_shape(int version, const char* model, int N, int C, float x_std, bool timed) {
    const float eps = 1e-6f;
    const long NC = (long)N * C;
    const std::string shape = shape_name(model, N, C);
    const double X = sizeof(floatX);
    printf("%s: N %d, C %d, x std %g\n", model, N, C, x_std);
    DeviceBuffer<floatX> x(NC), w(C), out(NC), dout(NC), dinp(NC);
    DeviceBuffer<float> dw(C), rstd(N);  // dw: a weight gradient, fp32 in both builds
    DeviceBuffer<float> scratch(rmsnorm_backward_scratch_floats(C));  // 512 rows of C: enough for both versions
    x.fill_normal(11, x_std);
    w.fill_normal(13);
    dout.fill_normal(14);
    const std::vector<double> x_h = to_double(x.download()), w_h = to_double(w.download());
    const std::vector<double> dout_h = to_double(dout.download());

    // forward
    auto forward = [&] {
        if (version == 2) rmsnorm_forward_v2(out.ptr, rstd.ptr, x.ptr, w.ptr, N, C, eps);
        else rmsnorm_forward(out.ptr, rstd.ptr, x.ptr, w.ptr, N, C, eps, 0);
    };
    out.poison();
    rstd.poison();
    forward();
    std::vector<double> out_ref(NC), rstd_ref(N);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), x_h.data(), w_h.data(), N, C, (double)eps);
    Validation forward_checks;
    forward_checks.check("out", out.download(), out_ref, STORE_TOL);
    forward_checks.check("rstd", rstd.download(), rstd_ref, FP32_TOL);
    if (forward_checks.passed && timed)
        report_bandwidth("rmsnorm_forward", shape, version, 2 * NC * X + 4.0 * N, benchmark_kernel(forward));

    // The backward takes rstd of x from the double reference, rounded to fp32 as the forward stores it.
    const std::vector<float> rstd_f(rstd_ref.begin(), rstd_ref.end());
    rstd.upload_raw(rstd_f);
    const std::vector<double> rstd_h(rstd_f.begin(), rstd_f.end());

    // backward, accumulating (Pre-LN). dinp: STORE_TOL (a C-term fp32 dot product and a few products
    // per element, one rounding); dw (fp32): 2 FP32_TOL (an fp32 sum over 16384 rows, ~2^-24 *
    // sqrt(16384) ~ 1e-5 at worst relative to the sum of magnitudes).
    auto backward = [&] {
        if (version == 2)
            rmsnorm_backward_v2(dinp.ptr, dw.ptr, scratch.ptr, dout.ptr, x.ptr, w.ptr, rstd.ptr, true, N, C);
        else rmsnorm_backward(dinp.ptr, dw.ptr, scratch.ptr, dout.ptr, x.ptr, w.ptr, rstd.ptr, true, N, C, 0);
    };
    dinp.fill_normal(15);
    dw.fill_normal(16);
    std::vector<double> dinp_ref = to_double(dinp.download()), dw_ref = to_double(dw.download());
    backward();
    rmsnorm_backward(dinp_ref.data(), dw_ref.data(), dout_h.data(), x_h.data(), w_h.data(), rstd_h.data(), N, C);
    Validation backward_checks;
    backward_checks.check("dinp", dinp.download(), dinp_ref, STORE_TOL);
    backward_checks.check("dw", dw.download(), dw_ref, 2 * FP32_TOL);
    if (backward_checks.passed && timed)
        report_bandwidth("rmsnorm_backward", shape, version, 4 * NC * X + 4.0 * N, benchmark_kernel(backward));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 2, VERSIONS);
    measure_ceilings();
    // Small shapes first. C = 296 in bf16 is 37 vectors (lanes 0-4 of a warp hold two, the rest one;
    // 74 in fp32), N = 7 leaves a block's last warp without a row. The second has rms 1e-3, so
    // mean(x^2) = eps: a norm without eps is off by 41% there (at the model shapes' std 3, by 5e-8).
    run_shape(version, "small", 7, 296, 3.0f, false);
    run_shape(version, "small_eps", 3, 40, 1e-3f, false);
    if (!small_shapes_only())
        for (const ModelShape& m : MODEL_SHAPES) run_shape(version, m.name, TOKENS, m.C, 3.0f, true);
    return validation_exit_status();
}
