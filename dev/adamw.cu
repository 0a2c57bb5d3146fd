// The optimizer step: the global gradient norm (for clipping) and AdamW (kernels/adamw.cuh; CPU
// reference kernels/cpu/adamw.h), over every parameter of the 130M and 1B models.
//   g = grad_scale * grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (wd * p + (m / bc1) / (sqrt(v / bc2) + eps));  bf16: p is the fp32 master, params = bf16(p)
//
// Versions:
//   1  production, kernels/adamw.cuh: AdamW with 128-bit accesses, VEC parameters per thread and a
//      scalar tail, the step's scalars read from device memory; the norm's first stage with 128-bit
//      loads, four in flight per thread, over ceil(n / 2048) blocks of 512 threads (at most 1024: the
//      grid depends only on n, as data parallelism needs).
//   2  AdamW with 128-bit accesses, 8 parameters per thread in bf16 (one vector of weights, two of the
//      fp32 gradients, master weights, m and v each); the norm's first stage with 128-bit loads,
//      four independent ones in flight per thread, over one full wave of blocks. The second stage of
//      the norm is version 1's (one block adding the partials in order: deterministic, as version 1).
//   3  the production kernels before 128-bit accesses: AdamW one parameter per thread (2-byte bf16
//      and 4-byte fp32 accesses); the norm's first stage over 1024 blocks of 512 threads, one element
//      per step.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/adamw.cu -o adamw -lcublasLt -lcublas
//   ./adamw 2
//
// Shapes: P = the parameter count of core/config.h's layout (vocabulary 32000) of the 130m and 1b presets.
// Bytes counted, per parameter: grad_norm reads the fp32 gradient, 4 (gradients are fp32 in both
// builds); adamw reads the gradient (4), reads and writes the master weight (bf16; the weight itself in
// fp32), m and v, and writes the bf16 weight: 4 + 3 * 8 + 2 = 30 in bf16, 4 + 3 * 8 = 28 in fp32.
#include <vector>
#include "common.cuh"
#include "../core/config.h"
#include "../kernels/adamw.cuh"
#include "../kernels/cpu/adamw.h"

static const char* const VERSIONS[] = {
    "production (kernels/adamw.cuh)",
    "128-bit accesses: 8 parameters per thread (bf16); norm with 4 vectors in flight per thread",
    "one parameter per thread, 2-byte bf16 accesses; norm one element per thread and step",
};

// ----------------------------------------------------------------------------
// Version 2

// The update of one parameter, in version 1's order of operations.
__device__ inline float adamw_step(float p, float g, float* m, float* v, float lr, float beta1, float beta2, float bc1,
                                   float bc2, float eps, float weight_decay) {
    *m = beta1 * *m + (1.0f - beta1) * g;
    *v = beta2 * *v + (1.0f - beta2) * g * g;
    return p - lr * (weight_decay * p + (*m / bc1) / (sqrtf(*v / bc2) + eps));
}

// Thread i updates parameters [i VEC, (i + 1) VEC): every offset is a multiple of VEC elements, so the
// floatX vectors are 16-byte aligned and the fp32 ones (VEC / 4 float4 each) too. The last thread
// finishes a partial vector one parameter at a time.
__global__ void adamw_v2_kernel(floatX* params, float* master_params, const float* grads, float* m, float* v, long n,
                                float lr, float beta1, float beta2, float bc1, float bc2, float eps, float weight_decay,
                                float grad_scale) {
    constexpr int F4 = VEC / 4;  // float4s per vector of VEC parameters
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i + VEC <= n) {
        float4 gv[F4], mv[F4], vv[F4], pv[F4];
        PackedX out;
        if (master_params) {
#pragma unroll
            for (int q = 0; q < F4; q++) pv[q] = reinterpret_cast<const float4*>(master_params + i)[q];
        } else {
            const PackedX p = load128(params + i);
#pragma unroll
            for (int q = 0; q < F4; q++)
                pv[q] = make_float4((float)p[4 * q], (float)p[4 * q + 1], (float)p[4 * q + 2], (float)p[4 * q + 3]);
        }
#pragma unroll
        for (int q = 0; q < F4; q++) {
            gv[q] = reinterpret_cast<const float4*>(grads + i)[q];
            mv[q] = reinterpret_cast<const float4*>(m + i)[q];
            vv[q] = reinterpret_cast<const float4*>(v + i)[q];
        }
#pragma unroll
        for (int q = 0; q < F4; q++) {
            float* mq = &mv[q].x;
            float* vq = &vv[q].x;
            float* pq = &pv[q].x;
            const float* gq = &gv[q].x;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                pq[e] = adamw_step(pq[e], grad_scale * gq[e], mq + e, vq + e, lr, beta1, beta2, bc1, bc2,
                                   eps, weight_decay);
                out[4 * q + e] = (floatX)pq[e];
            }
            reinterpret_cast<float4*>(m + i)[q] = mv[q];
            reinterpret_cast<float4*>(v + i)[q] = vv[q];
            if (master_params) reinterpret_cast<float4*>(master_params + i)[q] = pv[q];
        }
        store128(params + i, out);
    } else {
        for (long k = i; k < n; k++) {
            float mk = m[k], vk = v[k];
            const float p = adamw_step(master_params ? master_params[k] : (float)params[k], grad_scale * grads[k],
                                       &mk, &vk, lr, beta1, beta2, bc1, bc2, eps, weight_decay);
            m[k] = mk;
            v[k] = vk;
            if (master_params) master_params[k] = p;
            params[k] = (floatX)p;
        }
    }
}

static void adamw_update_v2(floatX* params, float* master_params, const float* grads, float* m, float* v, long n, int t,
                            float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale) {
    const float bc1 = (float)(1.0 - std::pow((double)beta1, t));
    const float bc2 = (float)(1.0 - std::pow((double)beta2, t));
    adamw_v2_kernel<<<ceil_div(ceil_div(n, VEC), 256), 256>>>(params, master_params, grads, m, v, n, lr, beta1, beta2,
                                                               bc1, bc2, eps, weight_decay, grad_scale);
    cudaCheck(cudaGetLastError());
}

// Stage 1 of the norm: thread tid of the grid adds g^2 over the float4 vectors tid, tid + S, tid + 2S,
// ... (S threads in the grid), four loads issued before their sums; block 0 also takes the last n % 4
// elements. A fixed grid gives a fixed order: the result is reproducible.
constexpr int NORM_BLOCK = 512;
__global__ void __launch_bounds__(NORM_BLOCK) grad_norm_partial_v2_kernel(float* partial, const float* grads, long n) {
    const long nvec = n / 4, stride = (long)gridDim.x * NORM_BLOCK;
    float sum_sq = 0.0f;
    for (long j = (long)blockIdx.x * NORM_BLOCK + threadIdx.x; j < nvec; j += 4 * stride) {
        float4 g[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (j + u * stride < nvec) g[u] = reinterpret_cast<const float4*>(grads)[j + u * stride];
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (j + u * stride < nvec) sum_sq += g[u].x * g[u].x + g[u].y * g[u].y + g[u].z * g[u].z + g[u].w * g[u].w;
    }
    if (blockIdx.x == 0)
        for (long i = nvec * 4 + threadIdx.x; i < n; i += NORM_BLOCK) sum_sq += grads[i] * grads[i];
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum_sq;
}

static int grad_norm_v2_blocks() {
    int per_sm = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grad_norm_partial_v2_kernel, NORM_BLOCK, 0));
    return std::min(GRAD_NORM_BLOCKS, std::max(1, per_sm) * bench.prop.multiProcessorCount);
}

// scratch: GRAD_NORM_BLOCKS floats, as version 1.
static void global_grad_norm_v2(float* norm, float* scratch, const float* grads, long n) {
    const int grid = grad_norm_v2_blocks();
    grad_norm_partial_v2_kernel<<<grid, NORM_BLOCK>>>(scratch, grads, n);
    cudaCheck(cudaGetLastError());
    grad_norm_final_kernel<<<1, NORM_BLOCK>>>(norm, scratch, grid);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Version 3

// One thread per parameter i, with p the fp32 weight (master_params[i], or params[i] when null), as
// version 1's adamw_param, the scalars read from device memory.
__global__ void adamw_v3_kernel(floatX* params, float* master_params, const float* grads, float* m, float* v, long n,
                                const AdamWScalars* s) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || s->skip) return;
    const float lr = s->lr, beta1 = s->beta1, beta2 = s->beta2, bc1 = s->bias_correction1,
                bc2 = s->bias_correction2, eps = s->eps, weight_decay = s->weight_decay;
    const float g = s->grad_scale * grads[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = master_params ? master_params[i] : (float)params[i];
    p -= lr * (weight_decay * p + (mi / bc1) / (sqrtf(vi / bc2) + eps));
    if (master_params) master_params[i] = p;
    params[i] = (floatX)p;
}

// Stage 1 of the norm: block b adds up g^2 over its grid-strided elements (a fixed set and order per
// thread), reduces over the block, and writes partial[b].
__global__ void grad_norm_partial_v3_kernel(float* partial, const float* grads, long n) {
    float sum_sq = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float g = grads[i];
        sum_sq += g * g;
    }
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum_sq;
}

static void global_grad_norm_v3(float* norm, float* scratch, const float* grads, long n) {
    const int grid = (int)std::min<long>(ceil_div(n, NORM_BLOCK), GRAD_NORM_BLOCKS);
    grad_norm_partial_v3_kernel<<<grid, NORM_BLOCK>>>(scratch, grads, n);
    cudaCheck(cudaGetLastError());
    grad_norm_final_kernel<<<1, NORM_BLOCK>>>(norm, scratch, grid);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------

// Validates n parameters, and times them if `timed`.
static void run_shape(int version, const char* model, long n, bool timed) {
    const int t = 10;
    const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
    const std::string name = std::string(model) + ":" + std::to_string(n);
    printf("%s: %ld parameters\n", model, n);
    DeviceBuffer<floatX> params(n);
    DeviceBuffer<float> grads(n), master(FLOATX_IS_FP32 ? 0 : n), m(n), v(n), norm(1), scratch(GRAD_NORM_BLOCKS);
    float* master_ptr = FLOATX_IS_FP32 ? nullptr : master.ptr;
    grads.fill_normal(51, 1e-2f);
    m.fill_normal(52, 1e-3f);
    v.fill_uniform(53, 0.0f, 2e-4f);
    if (master_ptr) {
        master.fill_normal(54, 0.02f);
        params.poison();
    } else {
        params.fill_normal(54, 0.02f);
    }

    // The norm, checked against the reference over all n gradients. Tolerance 1e-4: a thread adds
    // up to ~5000 positive fp32 terms, typically 2^-24 sqrt(5000) ~ 4e-6 relative, bounded by 3e-4.
    auto run_norm = [&] {
        if (version == 1) global_grad_norm(norm.ptr, scratch.ptr, grads.ptr, n, 0);
        else if (version == 2) global_grad_norm_v2(norm.ptr, scratch.ptr, grads.ptr, n);
        else global_grad_norm_v3(norm.ptr, scratch.ptr, grads.ptr, n);
    };
    norm.poison();
    run_norm();
    Validation norm_checks;
    {
        const std::vector<float> g_h = grads.download();
        norm_checks.check("norm", norm.download(), {global_grad_norm(g_h.data(), n)}, 1e-4);
    }
    if (norm_checks.passed && timed)
        report_bandwidth("grad_norm", name, version, (double)n * sizeof(float), benchmark_kernel(run_norm));

    // AdamW, checked on the first, middle and last 2^20 parameters (all of them if n < 3 * 2^20): m, v,
    // master FP32_TOL (a few fp32 operations per element), the floatX weights STORE_TOL.
    AdamWScalars scalars = adamw_step_scalars(lr, t, beta1, beta2, eps, wd, 0.0);
    scalars.grad_scale = grad_scale;  // versions 1 and 3 read the step's scalars from device memory
    DeviceBuffer<AdamWScalars> d_scalars(1);
    d_scalars.upload_raw({scalars});
    auto run_adamw = [&] {
        if (version == 1) {
            adamw_update(params.ptr, master_ptr, grads.ptr, m.ptr, v.ptr, n, d_scalars.ptr, 0);
        } else if (version == 3) {
            adamw_v3_kernel<<<ceil_div(n, 256), 256>>>(params.ptr, master_ptr, grads.ptr, m.ptr, v.ptr, n, d_scalars.ptr);
            cudaCheck(cudaGetLastError());
        } else {
            adamw_update_v2(params.ptr, master_ptr, grads.ptr, m.ptr, v.ptr, n, t, lr, beta1, beta2, eps, wd, grad_scale);
        }
    };
    const long chunk = std::min(n, 1L << 20);
    const std::vector<long> starts = n < 3 * chunk ? std::vector<long>{0} : std::vector<long>{0, n / 2, n - chunk};
    std::vector<double> p_ref, g_ref, m_ref, v_ref;
    for (long s : starts) {
        const std::vector<float> p0 = master_ptr ? master.download(s, chunk) : params.download(s, chunk);
        const std::vector<float> g0 = grads.download(s, chunk), m0 = m.download(s, chunk), v0 = v.download(s, chunk);
        p_ref.insert(p_ref.end(), p0.begin(), p0.end());
        g_ref.insert(g_ref.end(), g0.begin(), g0.end());
        m_ref.insert(m_ref.end(), m0.begin(), m0.end());
        v_ref.insert(v_ref.end(), v0.begin(), v0.end());
    }
    run_adamw();
    adamw_update(p_ref.data(), g_ref.data(), m_ref.data(), v_ref.data(), (long)p_ref.size(), t, (double)lr,
                 (double)beta1, (double)beta2, (double)eps, (double)wd, (double)grad_scale);
    std::vector<float> p_gpu, master_gpu, m_gpu, v_gpu;
    for (long s : starts) {
        for (auto [dst, src] : {std::pair{&p_gpu, params.download(s, chunk)}, std::pair{&m_gpu, m.download(s, chunk)},
                                std::pair{&v_gpu, v.download(s, chunk)}})
            dst->insert(dst->end(), src.begin(), src.end());
        if (master_ptr) {
            const std::vector<float> src = master.download(s, chunk);
            master_gpu.insert(master_gpu.end(), src.begin(), src.end());
        }
    }
    Validation adamw_checks;
    adamw_checks.check("m", m_gpu, m_ref, FP32_TOL);
    adamw_checks.check("v", v_gpu, v_ref, FP32_TOL);
    if (master_ptr) adamw_checks.check("master", master_gpu, p_ref, FP32_TOL);
    adamw_checks.check("params", p_gpu, p_ref, STORE_TOL);
    if (adamw_checks.passed && timed)
        report_bandwidth("adamw", name, version, (FLOATX_IS_FP32 ? 28.0 : 30.0) * n, benchmark_kernel(run_adamw));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 3, VERSIONS);
    measure_ceilings();
    // A small shape first: 4099 = 512 vectors of 8 and a tail of 3 (bf16), 1024 of 4 and 3 (fp32).
    run_shape(version, "small", 4099, false);
    for (const ModelShape& shape : MODEL_SHAPES) {
        ModelConfig cfg;
        apply_model_preset(shape.name, &cfg);
        cfg.vocab_size = VOCAB;
        if (!small_shapes_only()) run_shape(version, shape.name, make_param_layout(cfg).total, true);
    }
    return validation_exit_status();
}
