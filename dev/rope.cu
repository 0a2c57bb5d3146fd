// Rotary position embedding, rotate-half convention (kernels/rope.cuh; CPU reference kernels/cpu/rope.h).
//   out[i] = x[i] cos - x[i + hd/2] sin,  out[i + hd/2] = x[i + hd/2] cos + x[i] sin,  angle(t, i)
// The backward is the same kernel with the angle negated, so only the forward is timed; both are checked.
//
// Versions:
//   1  production, kernels/rope.cuh: one thread per 8 pairs (bf16; 4 in fp32): two 128-bit loads and
//      stores of x and four 128-bit table loads, an eighth of the memory instructions; a warp covers 8
//      whole heads of hd 64. Needs hd / 2 and the row stride to be multiples of 8 / 4 (checked at
//      launch; the trainer's heads are multiples of 16).
//   2  the production kernel before 128-bit accesses (the simple version): one thread per rotated pair,
//      two 2-byte loads and stores in bf16 and one 8-byte (cos, sin) table load; any even hd.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/rope.cu -o rope -lcublasLt -lcublas
//   ./rope 1
//
// Shapes: B = 64 sequences of T = 256 (16384 tokens), NH heads of hd = 64 (d 768 and 2048).
// Bytes counted (X = sizeof(floatX)): reads x, writes out: 2 N C X. The (T, hd/2) fp32 (cos, sin)
// table, 64 KB, stays in L2 and is not counted.
#include <vector>
#include "common.cuh"
#include "../kernels/cpu/rope.h"
#include "../kernels/rope.cuh"

static const char* const VERSIONS[] = {
    "production (kernels/rope.cuh): 128-bit loads and stores, VEC pairs per thread",
    "one pair per thread",
};

// ----------------------------------------------------------------------------
// Version 2

// One thread per pair (b, t, h, i). direction = +1 rotates by the angle (forward), -1 back (backward).
// out may alias inp: each thread reads its pair before writing it.
__global__ void rope_v2_kernel(floatX* out, const floatX* inp, const float2* table, int B, int T, int NH, int hd,
                               long stride, int direction) {
    const int half = hd / 2;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * NH * half) return;
    const int i = idx % half;
    const long head = idx / half;  // (b * T + t) * NH + h
    const long row = head / NH;    // b * T + t
    const int t = row % T;
    const float2 cs = table[t * half + i];
    const float c = cs.x, s = direction * cs.y;
    const long base = row * stride + (head % NH) * hd;
    const float x1 = (float)inp[base + i], x2 = (float)inp[base + i + half];
    out[base + i] = (floatX)(x1 * c - x2 * s);
    out[base + i + half] = (floatX)(x2 * c + x1 * s);
}

// ----------------------------------------------------------------------------

// Validates one shape (backward, then forward), and times the forward if `timed`.
static void run_shape(int version, const char* model, int B, int T, int NH, int hd, bool timed) {
    const double theta = 10000.0;
    const int C = NH * hd;
    const long n = (long)B * T * C;
    const std::string shape = shape_name(model, (long)B * T, C) + ",hd" + std::to_string(hd);
    printf("%s: B %d, T %d, NH %d, hd %d\n", model, B, T, NH, hd);
    DeviceBuffer<float2> table((size_t)T * (hd / 2));
    rope_table_init(table.ptr, T, hd, theta, 0);
    DeviceBuffer<floatX> x(n), out(n);
    x.fill_normal(31);
    const std::vector<double> x_h = to_double(x.download());

    auto run = [&](int direction) {
        if (version == 2)
            rope_v2_kernel<<<ceil_div((long)B * T * NH * (hd / 2), 256), 256>>>(out.ptr, x.ptr, table.ptr, B, T, NH, hd,
                                                                                /*stride=*/C, direction);
        else launch_rope(out.ptr, x.ptr, table.ptr, B, T, NH, hd, /*stride=*/C, direction, 0);
        cudaCheck(cudaGetLastError());
    };
    // STORE_TOL: cos and sin rounded to fp32, two products and a sum in fp32, stored once.
    std::vector<double> ref(n);
    out.poison();
    run(-1);
    rope_backward(ref.data(), x_h.data(), B, T, NH, hd, theta);
    Validation checks;
    checks.check("backward", out.download(), ref, STORE_TOL);
    out.poison();
    run(+1);
    rope_forward(ref.data(), x_h.data(), B, T, NH, hd, theta);
    checks.check("forward", out.download(), ref, STORE_TOL);
    if (checks.passed && timed)
        report_bandwidth("rope_forward", shape, version, 2.0 * n * sizeof(floatX), benchmark_kernel([&] { run(+1); }));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 2, VERSIONS);
    measure_ceilings();
    // Small shapes first: hd 16 (one vector per half in bf16, two in fp32) and hd 48 (three or six),
    // a few positions and heads.
    run_shape(version, "small", 2, 5, 3, 16, false);
    run_shape(version, "small", 1, 7, 2, 48, false);
    if (!small_shapes_only())
        for (const ModelShape& m : MODEL_SHAPES)
            run_shape(version, m.name, TOKENS / SEQ_LEN, SEQ_LEN, m.NH, m.C / m.NH, true);
    return validation_exit_status();
}
