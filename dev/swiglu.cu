// SwiGLU gate, forward and backward (kernels/swiglu.cuh; CPU reference kernels/cpu/swiglu.h).
//   out = silu(gate) * up;  dgate = dout * up * s * (1 + g (1 - s)),  dup = dout * silu(g),  s = sigmoid(g)
//
// Versions:
//   1  production, kernels/swiglu.cuh: one element per thread per row (a grid of columns by rows, gate
//      and up read by row stride), 2-byte loads and stores in bf16. Timed here on separate gate and up.
//   2  one 128-bit vector (8 bf16) per thread for every load and store: an eighth of version 1's memory
//      instructions (and threads) for the same bytes, each warp request a full 512-byte line set, so
//      fewer warps in flight keep the same bytes in flight.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/swiglu.cu -o swiglu -lcublasLt -lcublas
//   ./swiglu 2
//
// Bytes counted (X = sizeof(floatX), n = N * ffn elements, N = 16384 tokens):
//   forward   reads gate, up, writes out:                3 n X
//   backward  reads dout, gate, up, writes dgate, dup:   5 n X
#include <vector>
#include "common.cuh"
#include "../kernels/cpu/swiglu.h"
#include "../kernels/swiglu.cuh"

static const char* const VERSIONS[] = {
    "production (kernels/swiglu.cuh)",
    "128-bit loads and stores, one vector per thread",
};

// ----------------------------------------------------------------------------
// Version 2. Thread i handles elements [i VEC, (i + 1) VEC); the last thread finishes a partial vector
// one element at a time (n need not be a multiple of VEC; the buffers start 256-byte aligned).

__global__ void swiglu_forward_v2_kernel(floatX* out, const floatX* gate, const floatX* up, long n) {
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i + VEC <= n) {
        const PackedX g = load128(gate + i), u = load128(up + i);
        PackedX o;
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            const float gf = (float)g[e];
            o[e] = (floatX)(gf * sigmoid(gf) * (float)u[e]);
        }
        store128(out + i, o);
    } else {
        for (long k = i; k < n; k++) {
            const float gf = (float)gate[k];
            out[k] = (floatX)(gf * sigmoid(gf) * (float)up[k]);
        }
    }
}

// dgate and dup may alias gate and up, as in version 1: a thread reads its vector before writing it.
__global__ void swiglu_backward_v2_kernel(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate,
                                          const floatX* up, long n) {
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    auto grads = [](float g, float u, float dy, float* dg, float* du) {
        const float s = sigmoid(g);
        *dg = dy * u * s * (1.0f + g * (1.0f - s));
        *du = dy * g * s;
    };
    if (i + VEC <= n) {
        const PackedX g = load128(gate + i), u = load128(up + i), dy = load128(dout + i);
        PackedX dg, du;
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            float a, b;
            grads((float)g[e], (float)u[e], (float)dy[e], &a, &b);
            dg[e] = (floatX)a;
            du[e] = (floatX)b;
        }
        store128(dgate + i, dg);
        store128(dup + i, du);
    } else {
        for (long k = i; k < n; k++) {
            float a, b;
            grads((float)gate[k], (float)up[k], (float)dout[k], &a, &b);
            dgate[k] = (floatX)a;
            dup[k] = (floatX)b;
        }
    }
}

static void swiglu_forward_v2(floatX* out, const floatX* gate, const floatX* up, long n) {
    swiglu_forward_v2_kernel<<<ceil_div(ceil_div(n, VEC), 256), 256>>>(out, gate, up, n);
    cudaCheck(cudaGetLastError());
}

static void swiglu_backward_v2(floatX* dgate, floatX* dup, const floatX* dout, const floatX* gate, const floatX* up, long n) {
    swiglu_backward_v2_kernel<<<ceil_div(ceil_div(n, VEC), 256), 256>>>(dgate, dup, dout, gate, up, n);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 2, VERSIONS);
    measure_ceilings();
    for (const ModelShape& m : MODEL_SHAPES) {
        const long n = (long)TOKENS * m.F;
        const std::string shape = shape_name(m.name, TOKENS, m.F);
        const double X = sizeof(floatX);
        printf("%s: N %d, ffn %d\n", m.name, TOKENS, m.F);
        DeviceBuffer<floatX> gate(n), up(n), out(n), dout(n), dgate(n), dup(n);
        gate.fill_normal(21, 3.0f);
        up.fill_normal(22);
        dout.fill_normal(23);
        const std::vector<double> gate_h = to_double(gate.download()), up_h = to_double(up.download());

        // STORE_TOL: an expf, a division and a few products in fp32 per element, stored once.
        auto forward = [&] {
            if (version == 1) swiglu_forward(out.ptr, gate.ptr, up.ptr, /*stride=*/m.F, TOKENS, m.F, 0);
            else swiglu_forward_v2(out.ptr, gate.ptr, up.ptr, n);
        };
        out.poison();
        forward();
        std::vector<double> out_ref(n);
        swiglu_forward(out_ref.data(), gate_h.data(), up_h.data(), n);
        Validation forward_checks;
        forward_checks.check("out", out.download(), out_ref, STORE_TOL);
        if (forward_checks.passed)
            report_bandwidth("swiglu_forward", shape, version, 3 * n * X, benchmark_kernel(forward));

        auto backward = [&] {
            if (version == 1) swiglu_backward(dgate.ptr, dup.ptr, dout.ptr, gate.ptr, up.ptr, /*stride=*/m.F, TOKENS, m.F, 0);
            else swiglu_backward_v2(dgate.ptr, dup.ptr, dout.ptr, gate.ptr, up.ptr, n);
        };
        dgate.poison();
        dup.poison();
        backward();
        std::vector<double> dgate_ref(n, 0.0), dup_ref(n, 0.0);
        swiglu_backward(dgate_ref.data(), dup_ref.data(), to_double(dout.download()).data(), gate_h.data(), up_h.data(), n);
        Validation backward_checks;
        backward_checks.check("dgate", dgate.download(), dgate_ref, STORE_TOL);
        backward_checks.check("dup", dup.download(), dup_ref, STORE_TOL);
        if (backward_checks.passed)
            report_bandwidth("swiglu_backward", shape, version, 5 * n * X, benchmark_kernel(backward));
    }
    return validation_exit_status();
}
