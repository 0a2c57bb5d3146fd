// train_mixln: the GPU trainer. The model of core/model_cpu.h (LLaMA with Mix-LN, the paper's eq. 1
// and 2) on one GPU per process, composed from the CUDA kernels of kernels/*.cuh and driven by the
// same loop and flags as the CPU trainer (core/trainer.h). Weights and activations (and the
// activations' gradients) are bf16; the weight gradients, accumulated over a step's micro-batches, the
// master weights and Adam moments are fp32; `make PRECISION=FP32` stores everything in fp32.
//   make train_mixln && ./train_mixln -e 71m -i 'data/c4/train_*.bin' -j data/c4/val_000.bin
//   -R 1 recomputes each layer's forward in the backward instead of storing it (less memory).
//   -D 0 runs every kernel from the host instead of replaying CUDA graphs (see "CUDA graphs" below).
//   mpirun -np 4 ./train_mixln ... (or torchrun, srun: see docs/gpu.md, "Multi-GPU") trains data-parallel over NCCL, with
//   ZeRO-1 (-Z 1, the default) or all-reduce (-Z 0).
//
// Reading order: the device; what crosses between the host and the device in a step; the activation
// layout (one allocation); the model: parameters, gradients and optimizer state (data_parallel.cuh's
// ParameterMemory, which also holds every NCCL call), the forward layer by layer as eq. 1 and 2, the
// backward as its mirror image, the gradients' sum over the ranks, the update, CUDA graphs; the
// backend the driver calls; main.
// test/test_gpu_trainer.cu includes this file with TESTING defined (no main) and checks it against
// the CPU reference model.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>
#include "core/trainer.h"
#include "data_parallel.cuh"
#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/classifier.cuh"
#include "kernels/embedding.cuh"
#include "kernels/matmul.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/swiglu.cuh"

// ----------------------------------------------------------------------------
// The device

// Dense bf16 tensor-core peak of the GPUs known by name (cudaDeviceProp::name), in FLOP/s, for MFU;
// 0 for any other GPU.
inline double peak_bf16_flops(const std::string& name) {
    auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
    if (has("NVL")) return 0;                                       // H100 NVL, H200 NVL: other clocks
    if (has("H200")) return 989.4e12;                               // the H100 SXM's tensor cores
    if (has("H100") && has("PCIe")) return 756e12;
    if (has("H100") && (has("SXM") || has("HBM3"))) return 989.4e12;  // "NVIDIA H100 80GB HBM3"
    if (has("A100")) return 312e12;
    return 0;
}

// ----------------------------------------------------------------------------
// What crosses between the host and the device during a step, and CUDA graphs. A step queues its
// work without waiting: the batches and the AdamW scalars go to the device from pinned host memory
// (asynchronous copies), the losses, the norm and the clipping factor stay on the device, and
// step_result reads the step's loss and norm back: the step's one wait.

// What a step computes and its kernels read on the device (one allocation).
struct StepScalars {
    double loss;         // loss_scale * mean loss, summed over the step's micro-batches (and ranks)
    double stop;         // 1 if this rank was asked to stop, then summed over the ranks with loss
    LossScalars micro;   // the last micro-batch's rows with a target, dloss and mean loss
    AdamWScalars adamw;  // the update's learning rate, bias corrections and clipping factor
};

// loss and stop are summed over the ranks, zeroed and read back together, as two adjacent doubles.
static_assert(offsetof(StepScalars, stop) == offsetof(StepScalars, loss) + sizeof(double), "loss, stop adjacent");

struct StepReadback {
    double loss, stop;  // as StepScalars
    float grad_norm;
};
static_assert(offsetof(StepReadback, stop) == offsetof(StepReadback, loss) + sizeof(double), "loss, stop adjacent");

// Pinned host memory for the copies: a copy from pageable memory may wait for the stream's earlier
// work, one from pinned memory is only queued. A buffer is refilled only once the copy from it is
// done (an event per buffer); batches alternate between two, so that the host fills one while the
// copy from the other may still be pending.
class HostStaging {
  public:
    HostStaging() {
        cudaCheck(cudaMallocHost(&scalars_, sizeof(Scalars)));
        for (Batch& b : batches_) cudaCheck(cudaEventCreateWithFlags(&b.copied, cudaEventDisableTiming));
        for (cudaEvent_t* e : {&adamw_copied_, &stop_copied_}) cudaCheck(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
    ~HostStaging() {
        for (Batch& b : batches_) {
            cudaCheck(cudaEventSynchronize(b.copied));
            cudaCheck(cudaEventDestroy(b.copied));
            cudaCheck(cudaFreeHost(b.ids));
        }
        for (cudaEvent_t e : {adamw_copied_, stop_copied_}) {
            cudaCheck(cudaEventSynchronize(e));
            cudaCheck(cudaEventDestroy(e));
        }
        cudaCheck(cudaFreeHost(scalars_));
    }
    HostStaging(const HostStaging&) = delete;
    HostStaging& operator=(const HostStaging&) = delete;

    // Room for batches of up to n positions.
    void reserve(long n) {
        for (Batch& b : batches_) {
            if (b.capacity >= n) continue;
            cudaCheck(cudaEventSynchronize(b.copied));
            cudaCheck(cudaFreeHost(b.ids));
            cudaCheck(cudaMallocHost(&b.ids, 2 * n * sizeof(int)));
            b.capacity = n;
        }
    }

    // Queues the copies of n tokens and targets (null: none) into device memory.
    void copy_batch(int* tokens_dst, int* targets_dst, const int* tokens, const int* targets, long n, cudaStream_t stream) {
        Batch& b = batches_[next_batch_];
        next_batch_ = (next_batch_ + 1) % 2;
        cudaCheck(cudaEventSynchronize(b.copied));
        memcpy(b.ids, tokens, n * sizeof(int));
        cudaCheck(cudaMemcpyAsync(tokens_dst, b.ids, n * sizeof(int), cudaMemcpyHostToDevice, stream));
        if (targets) {
            memcpy(b.ids + n, targets, n * sizeof(int));
            cudaCheck(cudaMemcpyAsync(targets_dst, b.ids + n, n * sizeof(int), cudaMemcpyHostToDevice, stream));
        }
        cudaCheck(cudaEventRecord(b.copied, stream));
    }

    // Queues the copy of an update's scalars to dst (device memory).
    void copy_adamw_scalars(AdamWScalars* dst, const AdamWScalars& s, cudaStream_t stream) {
        copy_through(&scalars_->adamw, adamw_copied_, dst, s, stream);
    }

    // Queues the copy of this rank's stop flag (1 or 0) to dst (device memory).
    void copy_stop_flag(double* dst, bool stop, cudaStream_t stream) {
        copy_through(&scalars_->stop, stop_copied_, dst, stop ? 1.0 : 0.0, stream);
    }

    // The step's loss and stop flag (two doubles from loss on, device memory) and norm, once the
    // stream's work so far is done.
    StepReadback read_step(const double* loss, const float* grad_norm, cudaStream_t stream) {
        StepReadback* r = &scalars_->readback;
        cudaCheck(cudaMemcpyAsync(&r->loss, loss, 2 * sizeof(double), cudaMemcpyDeviceToHost, stream));
        cudaCheck(cudaMemcpyAsync(&r->grad_norm, grad_norm, sizeof(float), cudaMemcpyDeviceToHost, stream));
        wait_for_stream(stream);
        return *r;
    }

  private:
    // Queues the copy of value to dst from its pinned slot, once the slot's last copy is done.
    template <typename T>
    void copy_through(T* slot, cudaEvent_t copied, T* dst, const T& value, cudaStream_t stream) {
        cudaCheck(cudaEventSynchronize(copied));
        *slot = value;
        cudaCheck(cudaMemcpyAsync(dst, slot, sizeof(T), cudaMemcpyHostToDevice, stream));
        cudaCheck(cudaEventRecord(copied, stream));
    }

    struct Batch {
        int* ids = nullptr;  // capacity tokens, then capacity targets
        long capacity = 0;
        cudaEvent_t copied;
    };
    struct Scalars {
        AdamWScalars adamw;
        double stop;
        StepReadback readback;
    };
    Batch batches_[2];
    int next_batch_ = 0;
    Scalars* scalars_ = nullptr;
    cudaEvent_t adamw_copied_, stop_copied_;
};

// A CUDA graph of work the model runs again and again (GpuModel::run_captured).
struct CapturedWork {
    cudaGraphExec_t graph = nullptr;
    long calls = 0;
    void release() {
        if (graph) cudaCheck(cudaGraphExecDestroy(graph));
        graph = nullptr;
    }
};
using MicroBatchKey = std::tuple<int, int, float>;  // B, T, loss scale

// ----------------------------------------------------------------------------
// Activations: for a micro-batch of N = B*T rows, everything the forward keeps for the backward and
// the backward's scratch, carved from one allocation. Each tensor starts on a 256-byte boundary.

// What one layer's forward keeps for its backward. Without recomputation each layer has its own; with
// -R 1 all layers share one, which the backward refills by rerunning the layer's forward.
struct GpuLayerActivations {
    floatX* norm_a_buffer;       // (N, C) the end of norm_a that is not on the residual stream: its input
                                 //        s*x + attn_out (Post-LN) or its output, the attention input (Pre-LN)
    floatX* h;                   // (N, C) the residual stream between the two sublayers
    floatX* norm_b_buffer;       // (N, C) norm_b's input s*h + mlp_out (Post-LN) or its output, the MLP input (Pre-LN)
    float* rstd_a;               // (N) 1/rms of norm_a's input
    float* rstd_b;               // (N)
    floatX* qkv;                 // (N, 3C) q|k|v, one product with the layer's (3C, C) weight; q and k after RoPE
    float* lse;                  // (B, NH, T) attention's logsumexp per query, for its backward
    floatX* attn_y;              // (N, C) attention output before the o projection
    floatX* gate_up;             // (N, 2Fs) gate|up, one product with the layer's (2Fs, C) weight (Fs:
                                 //          ffn_stored); the backward overwrites it with d gate|up
    floatX* swiglu;              // (N, Fs) the backward overwrites it with d swiglu

    // The tensors under the names of eq. 1 and 2, set for layer l by GpuModel::layer(l). One tensor
    // can have two names: in Post-LN attn_in is x and mlp_in is h, in Pre-LN norm_a_in is x and
    // norm_b_in is h.
    floatX* x;                   // (N, C) the layer's input, a slice of the residual stream
    floatX* out;                 // (N, C) the layer's output, the next slice
    floatX* attn_in, *norm_a_in, *mlp_in, *norm_b_in;  // (N, C)
};

struct GpuActivations {
    floatX* stream;              // (L+1, N, C) the residual stream: layer l reads slice l and writes slice
                                 //             l+1; slice L is the final norm's input
    std::vector<GpuLayerActivations> slots;  // L, or 1 with recomputation
    floatX* final_norm;          // (N, C) norm_f's output, the LM head's input
    float* rstd_f;               // (N)
    floatX* logits;              // (N, V) replaced by d logits by the fused classifier
    float* losses;               // (N) per-position loss, 0 where the target is IGNORE_INDEX
    int* tokens, *targets;       // (N)

    // The backward's scratch, reused by every layer (d gate|up reuses the layer's own gate_up, see
    // GpuModel::mlp_sublayer_backward).
    floatX* d_stream;            // (N, C) the gradient of the residual stream where the backward is: d out
                                 //        on entering a layer, d x on leaving it
    floatX* d_sublayer_out;      // (N, C) Post-LN: a norm's d sum, which is d attn_out or d mlp_out
    floatX* d_sublayer_in;       // (N, C) d attn_in or d mlp_in, written by the sublayer's input product
    floatX* d_attn_y;            // (N, C)
    floatX* d_qkv;               // (N, 3C) d q|k|v
    floatX* d_swiglu;            // (N, F)
    floatX* d_final_norm;        // (N, C)
    float* attn_delta;           // (B, NH, T) attention backward's row terms
    float* rmsnorm_scratch;      // rmsnorm_backward_scratch_floats(C): the norm weights' partial sums
    int* embedding_workspace;    // embedding_backward_workspace_ints(N, C)

    // Points every tensor into base for N rows, and returns the bytes they take. With base null it
    // only counts (the pointers are then meaningless).
    size_t carve(char* base, const ModelConfig& cfg, long N, int num_slots) {
        const long C = cfg.d_model, F = ffn_stored(cfg), V = cfg.vocab_size, L = cfg.n_layer;
        const long heads_rows = N * cfg.n_head;  // B * NH * T
        size_t bytes = 0;
        auto take = [&](auto*& ptr, long count) {
            ptr = reinterpret_cast<std::remove_reference_t<decltype(ptr)>>((uintptr_t)base + bytes);
            bytes += ceil_div(count * (long)sizeof(*ptr), 256) * 256;
        };
        take(stream, (L + 1) * N * C);
        slots.resize(num_slots);
        for (GpuLayerActivations& a : slots) {
            for (floatX** p : {&a.norm_a_buffer, &a.h, &a.norm_b_buffer, &a.attn_y}) take(*p, N * C);
            take(a.qkv, N * 3 * C);
            take(a.gate_up, N * 2 * F);
            take(a.swiglu, N * F);
            for (float** p : {&a.rstd_a, &a.rstd_b}) take(*p, N);
            take(a.lse, heads_rows);
        }
        for (floatX** p : {&final_norm, &d_stream, &d_sublayer_out, &d_sublayer_in, &d_attn_y,
                           &d_final_norm})
            take(*p, N * C);
        take(d_qkv, N * 3 * C);
        take(d_swiglu, N * F);
        take(logits, N * V);
        for (float** p : {&rstd_f, &losses}) take(*p, N);
        for (int** p : {&tokens, &targets}) take(*p, N);
        take(attn_delta, heads_rows);
        take(rmsnorm_scratch, rmsnorm_backward_scratch_floats((int)C));
        take(embedding_workspace, embedding_backward_workspace_ints((int)N, (int)C));
        return bytes;
    }
};

// ----------------------------------------------------------------------------
// The model

struct GpuModel {
    ModelConfig cfg;
    ParamLayout layout;
    bool recompute;              // -R 1: keep only the residual stream, rerun each layer before its backward
    cudaStream_t stream;
    std::string device_name;
    // Weights, gradients and optimizer state: in the layout of core/config.h, each gradient bucket
    // (the embedding, a layer's block, the final norm with the LM head) padded for NCCL under ZeRO-1;
    // their sums over the ranks and every other NCCL call (data_parallel.cuh).
    ParameterMemory mem;
    float* grad_norm_scratch;    // the norm, then its GRAD_NORM_BLOCKS partial sums, then room for all
                                 // ranks' (ZeRO-1)
    StepScalars* step_scalars;   // the step's loss and the scalars its kernels read (device memory)
    float2* rope_table;          // (max_seq_len, head_dim/2) RoPE's (cos, sin)

    GpuActivations acts;
    char* activation_memory = nullptr;
    size_t activation_bytes = 0;
    long activation_rows = 0;    // the N the activations are carved for
    int B = 0, T = 0;            // the current micro-batch; B*T <= activation_rows
    bool last_micro = false;     // it is the step's last: its backward starts the gradients' sum over the ranks
    HostStaging staging;         // pinned host memory for the copies to and from the device
    CapturedWork optimizer_work; // CUDA graphs: the optimizer step, and one micro-batch's forward and
    std::map<MicroBatchKey, CapturedWork> micro_batch_work;  // backward per shape and loss scale
    bool use_graphs;             // -D 1, on one process (see "CUDA graphs")

    static cudaStream_t create_stream() {
        cudaStream_t s;
        cudaCheck(cudaStreamCreate(&s));
        return s;
    }

    // Allocates everything, activations for micro-batches of B x T.
    GpuModel(const ModelConfig& c, int b, int t, bool recompute_, const DataParallel& dp_, bool cuda_graphs)
        : cfg(c), layout(make_param_layout(c)), recompute(recompute_), stream(create_stream()),
          mem(dp_, layout, cfg.n_layer, stream) {
        const int hd = cfg.head_dim();
        if (!attention_head_dim_supported(hd))
            throw std::runtime_error("the attention kernel supports heads of 16, 32, ..., 128 dimensions (multiples of 16); d " +
                                     std::to_string(cfg.d_model) + " in " + std::to_string(cfg.n_head) + " heads has " +
                                     std::to_string(hd) + " (set -H)");
        if (cfg.d_model > RMSNORM_MAX_C)
            throw std::runtime_error("the rmsnorm kernels hold a row in one warp's registers, at most " +
                                     std::to_string(RMSNORM_MAX_C) + " wide; -C " + std::to_string(cfg.d_model) +
                                     " is wider");
        int device = 0;
        cudaCheck(cudaGetDevice(&device));
        cudaDeviceProp prop;
        cudaCheck(cudaGetDeviceProperties(&prop, device));
        device_name = prop.name;
        matmul_setup();  // the process-wide cuBLASLt handle, kept until exit
        matmul_log_choices = dp_.rank == 0;
        grad_norm_scratch = device_alloc<float>(1 + (1 + mem.plan.world_size) * GRAD_NORM_BLOCKS, "the gradient norm's scratch");
        step_scalars = device_alloc<StepScalars>(1, "the step's scalars");
        use_graphs = cuda_graphs && !mem.dp.comm;
        rope_table = device_alloc<float2>((size_t)cfg.max_seq_len * (hd / 2), "the RoPE table");
        rope_table_init(rope_table, cfg.max_seq_len, hd, cfg.rope_theta, stream);
        allocate_activations((long)b * t);
    }

    ~GpuModel() {
        release_micro_batch_graphs();
        optimizer_work.release();
        for (void* p : {(void*)grad_norm_scratch, (void*)step_scalars, (void*)rope_table, (void*)activation_memory})
            cudaCheck(cudaFree(p));
        cudaCheck(cudaStreamDestroy(stream));
    }
    GpuModel(const GpuModel&) = delete;
    GpuModel& operator=(const GpuModel&) = delete;

    floatX* param(int tensor, int layer = 0) { return mem.params + mem.plan.padded_index(layout.at(tensor, layer)); }
    float* grad(int tensor, int layer = 0) { return mem.grads + mem.plan.padded_index(layout.at(tensor, layer)); }
    template <typename T>
    void zero(T* ptr, long count) { cudaCheck(cudaMemsetAsync(ptr, 0, count * sizeof(T), stream)); }

    void allocate_activations(long N) {
        release_micro_batch_graphs();  // they point into the old activations
        cudaCheck(cudaFree(activation_memory));
        activation_memory = nullptr;
        const int num_slots = recompute ? 1 : cfg.n_layer;
        activation_bytes = GpuActivations().carve(nullptr, cfg, N, num_slots);
        activation_memory = device_alloc<char>(activation_bytes, "the activations of " + std::to_string(N) +
                                                                     " tokens per micro-batch; lower -b" +
                                                                     (recompute ? "" : ", or recompute them with -R 1"));
        acts.carve(activation_memory, cfg, N, num_slots);
        activation_rows = N;
        staging.reserve(N);
    }

    // Sets the micro-batch shape for the next forward, growing the activations if they are too small
    // (sampling runs B = 1 with up to the training T).
    void set_shape(int b, int t) {
        if (t > cfg.max_seq_len)
            throw std::runtime_error("sequence of " + std::to_string(t) + " tokens, longer than the model's " +
                                     std::to_string(cfg.max_seq_len));
        if ((long)b * t > activation_rows) allocate_activations((long)b * t);
        B = b;
        T = t;
    }

    // Layer l's activations under the names of eq. 1 and 2.
    GpuLayerActivations layer(int l) {
        GpuLayerActivations a = acts.slots[recompute ? 0 : l];
        const long NC = activation_rows * cfg.d_model;  // the stream's slices are carved for activation_rows
        a.x = acts.stream + l * NC;
        a.out = acts.stream + (l + 1) * NC;
        if (layer_is_post_ln(cfg, l)) {
            a.attn_in = a.x;
            a.norm_a_in = a.norm_a_buffer;
            a.mlp_in = a.h;
            a.norm_b_in = a.norm_b_buffer;
        } else {
            a.norm_a_in = a.x;
            a.attn_in = a.norm_a_buffer;
            a.norm_b_in = a.h;
            a.mlp_in = a.norm_b_buffer;
        }
        return a;
    }

    // ---- forward ----

    // The sublayers: the F(x) of eq. 1 and 2, added to the residual x scaled by s as their output
    // product writes it: sum = s * x + F(x) (kernels/matmul.cuh, the residual in cuBLASLt's epilogue).
    // Attention: one q|k|v projection with the layer's (3C, C) weight (wq, wk, wv stacked), causal flash
    // attention reading q, k, v from those rows and turning q and k by RoPE as it reads them (q|k|v
    // stays unturned in memory), o projection.
    void attention_sublayer_forward(const GpuLayerActivations& a, int l, floatX* sum, const floatX* x, float s) {
        const int N = B * T, C = cfg.d_model, NH = cfg.n_head;
        matmul_forward(a.qkv, a.attn_in, param(WQ, l), N, C, 3 * C, stream);
        attention_forward(a.attn_y, a.lse, a.qkv, a.qkv + C, a.qkv + 2 * C, /*stride=*/3 * C, B, T, C, NH, rope_table,
                          stream);
        matmul_forward_residual(sum, a.attn_y, param(WO, l), x, s, N, C, C, stream);
    }

    // SwiGLU MLP: down(silu(gate(x)) * up(x)), gate|up one projection with the layer's (2Fs, C) weight.
    void mlp_sublayer_forward(const GpuLayerActivations& a, int l, floatX* sum, const floatX* x, float s) {
        const int N = B * T, C = cfg.d_model, F = (int)ffn_stored(cfg);
        matmul_forward(a.gate_up, a.mlp_in, param(WGATE, l), N, C, 2 * F, stream);
        swiglu_forward(a.swiglu, a.gate_up, a.gate_up + F, /*stride=*/2 * F, N, F, stream);
        matmul_forward_residual(sum, a.swiglu, param(WDOWN, l), x, s, N, F, C, stream);
    }

    // One layer: the paper's eq. 1 (Post-LN) or eq. 2 (Pre-LN). Each residual add is made by the
    // sublayer's output product; each norm reads the sum as rounded and stored, so that rerunning the
    // layer (the backward's recomputation) makes the same bits.
    void layer_forward(int l) {
        const GpuLayerActivations a = layer(l);
        const int N = B * T, C = cfg.d_model;
        const float eps = (float)cfg.norm_eps;
        mem.wait_for_weights(layer_bucket(l), stream);  // several ranks: the last update's all-gather
        if (layer_is_post_ln(cfg, l)) {
            const float s = (float)residual_scale(cfg);  // 1 except for DeepNorm
            // eq. 1: h = LN_a(s*x + Attn(x));  out = LN_b(s*h + MLP(h))
            attention_sublayer_forward(a, l, a.norm_a_in, a.x, s);
            rmsnorm_forward(a.h, a.rstd_a, a.norm_a_in, param(NORM_A, l), N, C, eps, stream);
            mlp_sublayer_forward(a, l, a.norm_b_in, a.h, s);
            rmsnorm_forward(a.out, a.rstd_b, a.norm_b_in, param(NORM_B, l), N, C, eps, stream);
        } else {
            // eq. 2: h = x + Attn(LN_a(x));  out = h + MLP(LN_b(h))
            rmsnorm_forward(a.attn_in, a.rstd_a, a.x, param(NORM_A, l), N, C, eps, stream);
            attention_sublayer_forward(a, l, a.h, a.x, 1.0f);
            rmsnorm_forward(a.mlp_in, a.rstd_b, a.h, param(NORM_B, l), N, C, eps, stream);
            mlp_sublayer_forward(a, l, a.out, a.h, 1.0f);
        }
    }

    // A micro-batch (b, t) for the next forward: sets the shape, and queues the copies of its tokens
    // and targets (null: none, for sampling) from the host into acts.tokens and acts.targets.
    void load_batch(const int* tokens, const int* targets, int b, int t) {
        set_shape(b, t);
        staging.copy_batch(acts.tokens, acts.targets, tokens, targets, B * T, stream);
    }

    // Embedding of acts.tokens, the L layers, the final norm and the LM head, up to the logits (N, V).
    void forward() {
        const int N = B * T, C = cfg.d_model, V = cfg.vocab_size;
        mem.wait_for_weights(embedding_bucket(), stream);
        embedding_forward(layer(0).x, acts.tokens, param(WTE), N, C, (float)embedding_scale(cfg), stream);
        for (int l = 0; l < cfg.n_layer; l++) layer_forward(l);
        mem.wait_for_weights(head_bucket(cfg.n_layer), stream);
        rmsnorm_forward(acts.final_norm, acts.rstd_f, layer(cfg.n_layer - 1).out, param(NORM_F), N, C,
                        (float)cfg.norm_eps, stream);
        matmul_forward(acts.logits, acts.final_norm, param(LM_HEAD), N, C, V, stream);
    }

    // Cross-entropy of the last forward's logits against acts.targets, on the device: the mean loss
    // into step_scalars->micro; with write_dlogits the logits are replaced by the gradient of
    // loss_scale * mean loss, and loss_scale * mean loss is added to the step's loss.
    void classifier(float loss_scale, bool write_dlogits) {
        StepScalars* s = step_scalars;
        crossentropy_forward_backward(acts.logits, acts.losses, &s->micro, write_dlogits ? &s->loss : nullptr, acts.targets,
                                      B * T, cfg.vocab_size, loss_scale, write_dlogits, stream);
    }

    // The last classifier()'s mean loss (waits for the device).
    float mean_loss() {
        float loss = 0;
        to_host(&loss, &step_scalars->micro.mean_loss, 1, stream);
        return loss;
    }

    // ---- backward: the mirror image of the forward ----

    // dout = d attn_out; writes d attn_in + s * dres into dinp (dres null: d attn_in): one product from
    // d q|k|v, laid out as q|k|v, with dres added in its epilogue.
    void attention_sublayer_backward(const GpuLayerActivations& a, int l, const floatX* dout, floatX* dinp,
                                     const floatX* dres = nullptr, float s = 1.0f) {
        const int N = B * T, C = cfg.d_model, NH = cfg.n_head;
        floatX* d_qkv = acts.d_qkv;
        matmul_backward(acts.d_attn_y, grad(WO, l), dout, a.attn_y, param(WO, l), N, C, C, stream);
        attention_backward(d_qkv, d_qkv + C, d_qkv + 2 * C, acts.attn_delta, acts.d_attn_y, a.attn_y, a.lse, a.qkv,
                           a.qkv + C, a.qkv + 2 * C, /*stride=*/3 * C, /*dstride=*/3 * C, B, T, C, NH, rope_table,
                           stream);  // d q|k|v with respect to the unturned q and k
        matmul_backward(dinp, grad(WQ, l), d_qkv, a.attn_in, param(WQ, l), N, C, 3 * C, stream, dres, s);
    }

    // dout = d mlp_out; writes d mlp_in + s * dres into dinp (as above): one product from d gate|up.
    // Nothing reads the layer's gate|up after swiglu_backward, which writes d gate|up over it, element
    // by element. d swiglu has its own buffer: the product writing it runs beside the one reading swiglu
    // for d wdown.
    void mlp_sublayer_backward(const GpuLayerActivations& a, int l, const floatX* dout, floatX* dinp,
                               const floatX* dres = nullptr, float s = 1.0f) {
        const int N = B * T, C = cfg.d_model, F = (int)ffn_stored(cfg);
        floatX* d_swiglu = acts.d_swiglu, *d_gate_up = a.gate_up;
        matmul_backward(d_swiglu, grad(WDOWN, l), dout, a.swiglu, param(WDOWN, l), N, F, C, stream);
        swiglu_backward(d_gate_up, d_gate_up + F, d_swiglu, a.gate_up, a.gate_up + F, /*stride=*/2 * F, N, F, stream);
        matmul_backward(dinp, grad(WGATE, l), d_gate_up, a.mlp_in, param(WGATE, l), N, C, 2 * F, stream, dres, s);
    }

    // The mirror image of layer_forward; d out is in acts.d_stream on entry, d x on return.
    //   Pre-LN:  d h = d out + LN_b'(d mlp_in), d x = d h + LN_a'(d attn_in): the products write d mlp_in
    //            and d attn_in into acts.d_sublayer_in, and the norm backward adds its result to d_stream.
    //   Post-LN: dsum_b = LN_b'(d out) = d mlp_out, d h = d mlp_in + s * dsum_b, dsum_a = LN_a'(d h) =
    //            d attn_out, d x = d attn_in + s * dsum_a: each second term added by the sublayer's input
    //            product, in its epilogue.
    void layer_backward(int l) {
        const GpuLayerActivations a = layer(l);
        const int N = B * T, C = cfg.d_model;
        floatX* d_stream = acts.d_stream, *d_in = acts.d_sublayer_in, *d_sum = acts.d_sublayer_out;
        float* scratch = acts.rmsnorm_scratch;
        if (layer_is_post_ln(cfg, l)) {
            const float s = (float)residual_scale(cfg);
            rmsnorm_backward(d_sum, grad(NORM_B, l), scratch, d_stream, a.norm_b_in, param(NORM_B, l), a.rstd_b,
                             /*accumulate=*/false, N, C, stream);
            mlp_sublayer_backward(a, l, d_sum, d_in, d_sum, s);
            rmsnorm_backward(d_sum, grad(NORM_A, l), scratch, d_in, a.norm_a_in, param(NORM_A, l), a.rstd_a,
                             /*accumulate=*/false, N, C, stream);
            attention_sublayer_backward(a, l, d_sum, d_stream, d_sum, s);
        } else {
            mlp_sublayer_backward(a, l, d_stream, d_in);
            rmsnorm_backward(d_stream, grad(NORM_B, l), scratch, d_in, a.norm_b_in, param(NORM_B, l), a.rstd_b,
                             /*accumulate=*/true, N, C, stream);
            attention_sublayer_backward(a, l, d_stream, d_in);
            rmsnorm_backward(d_stream, grad(NORM_A, l), scratch, d_in, a.norm_a_in, param(NORM_A, l), a.rstd_a,
                             /*accumulate=*/true, N, C, stream);
        }
    }

    // Adds to grads the gradient whose d logits classifier() left in place of the logits.
    void backward() {
        const int N = B * T, C = cfg.d_model, V = cfg.vocab_size;
        matmul_backward(acts.d_final_norm, grad(LM_HEAD), acts.logits, acts.final_norm, param(LM_HEAD), N, C, V, stream);
        rmsnorm_backward(acts.d_stream, grad(NORM_F), acts.rmsnorm_scratch, acts.d_final_norm, layer(cfg.n_layer - 1).out,
                         param(NORM_F), acts.rstd_f, /*accumulate=*/false, N, C, stream);
        gradients_done(head_bucket(cfg.n_layer));
        for (int l = cfg.n_layer - 1; l >= 0; l--) {
            // With recomputation the one slot holds the last layer's activations from the forward;
            // every other layer's are rebuilt from its input, which the residual stream kept.
            if (recompute && l < cfg.n_layer - 1) layer_forward(l);
            layer_backward(l);
            gradients_done(layer_bucket(l));
        }
        embedding_backward(grad(WTE), acts.d_stream, acts.tokens, acts.embedding_workspace, N, C, V,
                           (float)embedding_scale(cfg), stream);
        gradients_done(embedding_bucket());
    }

    // ---- the sum over the ranks, and the update ----

    // The backward has written bucket b's gradients (core/distributed.h: the embedding, a layer, the
    // final norm with the LM head): in the step's last micro-batch their sum over the ranks starts
    // now, overlapping the rest of the backward.
    void gradients_done(int bucket) {
        if (last_micro) mem.bucket_ready(bucket, stream);
    }

    // The gradients, the step's loss and stop flag, and its norm (0 until the step's update).
    void zero_grad() {
        zero(mem.grads, mem.plan.padded_total);
        zero(&step_scalars->loss, 2);  // loss and stop
        zero(grad_norm_scratch, 1);
    }

    // Completes the gradients' sum over the ranks, whose buckets the last micro-batch's backward
    // started: under ZeRO-1 each rank then has the sums of its slices (owned_grads), under -Z 0 all.
    // The step's loss and the ranks' stop flags (stop: this rank's) are summed too, in one call.
    void reduce_gradients(bool stop) {
        mem.finish_sums(/*backward_started_them=*/last_micro, stream);
        last_micro = false;
        staging.copy_stop_flag(&step_scalars->stop, stop, stream);
        mem.sum_in_place(&step_scalars->loss, 2, stream);  // loss and stop, adjacent
    }

    double all_reduce_sum(double x) { return mem.all_reduce_sum(x, stream); }

    // Rank 0's choice of cuBLASLt algorithm for a new product (matmul_agreement, kernels/matmul.cuh):
    // a sum of it and the other ranks' zeros.
    int rank0_choice(int choice) { return (int)all_reduce_sum(mem.dp.rank == 0 ? choice : 0); }

    // The optimizer step t (1-based) at learning rate lr, with no wait: lr and Adam's bias
    // corrections reach the kernels through step_scalars->adamw (copied from pinned memory), the
    // norm, the clipping factor and whether to skip the update (a norm of inf or NaN) are computed on
    // the device.
    void optimizer_step(double lr, int t, const TrainOptions& o) {
        staging.copy_adamw_scalars(&step_scalars->adamw,
                                   adamw_step_scalars(lr, t, o.beta1, o.beta2, o.adam_eps, o.weight_decay, o.grad_clip), stream);
        run_captured(optimizer_work, [&] {
            grad_norm();
            grad_clip(&step_scalars->adamw, grad_norm_scratch, stream);
            adamw_step();
        });
    }

    // The global L2 norm of the gradients into grad_norm_scratch[0], computed on the device in a fixed
    // order (deterministic). Under ZeRO-1 each rank adds up the squares over its owned gradients, and
    // the partial sums of all ranks (as many on each: the owned buffers are equally long) are added
    // before the square root.
    void grad_norm() {
        float* partials = grad_norm_scratch + 1;
        int num_partials = grad_norm_partials(partials, mem.owned_grads, mem.plan.owned_total, stream);
        const float* all = mem.all_norm_partials(partials, &num_partials, partials + GRAD_NORM_BLOCKS, stream);
        grad_norm_from_partials(grad_norm_scratch, all, num_partials, stream);
    }

    // AdamW on the fp32 master weights of this rank's slice of every bucket (all of them without
    // ZeRO-1), with the scalars of step_scalars->adamw; ZeRO-1 then all-gathers the updated floatX
    // weights, so that every rank has all of them for the next forward.
    void adamw_step() {
        adamw_update(mem.owned_params, FLOATX_IS_FP32 ? nullptr : mem.master, mem.owned_grads, mem.adam_m, mem.adam_v,
                     mem.plan.owned_total, &step_scalars->adamw, stream);
        mem.all_gather_weights(stream);
    }

    // The step's loss and gradient norm: the step's one wait for the device. The update was skipped
    // if the norm is not finite: grad_clip_kernel asked update_skipped of this same fp32 norm.
    StepResult step_result() {
        const StepReadback r = staging.read_step(&step_scalars->loss, grad_norm_scratch, stream);
        return StepResult{r.loss, r.grad_norm, update_skipped(r.grad_norm), r.stop > 0};
    }

    // ---- CUDA graphs ----

    // One micro-batch's forward, loss and backward, or the optimizer step (`work`), as a CUDA graph
    // with use_graphs: the first call runs work directly (which warms up what must not happen during a
    // capture: loading kernels, setting the attention kernels' shared memory limits), the second
    // captures it into a graph and launches that, later calls launch the graph again. What a graph
    // holds is kernel launches and memsets on device buffers that stay put (weights, gradients,
    // activations, the step's scalars, cuBLASLt's workspace) with the shapes, algorithms and loss scale
    // of its capture; every copy from or to the host (the batch, the AdamW scalars, step_result) is
    // queued outside it, and activations are only reallocated outside it (which releases the graphs).
    template <typename Work>
    void run_captured(CapturedWork& captured, Work&& work) {
        if (!use_graphs || captured.calls++ == 0) {
            work();
            return;
        }
        if (!captured.graph) {
            cudaGraph_t graph;
            cudaCheck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            work();
            cudaCheck(cudaStreamEndCapture(stream, &graph));
            cudaCheck(cudaGraphInstantiate(&captured.graph, graph, 0));
            cudaCheck(cudaGraphDestroy(graph));
        }
        cudaCheck(cudaGraphLaunch(captured.graph, stream));
    }

    void release_micro_batch_graphs() {
        for (auto& entry : micro_batch_work) entry.second.release();
        micro_batch_work.clear();
    }

    // Forward and backward of the micro-batch load_batch queued, adding the gradient of loss_scale *
    // mean loss into grads and loss_scale * mean loss into the step's loss.
    void forward_backward(float loss_scale) {
        run_captured(micro_batch_work[MicroBatchKey{B, T, loss_scale}], [&] {
            forward();
            classifier(loss_scale, /*write_dlogits=*/true);
            backward();
        });
    }

    // The V logits after the last of the T tokens of the last forward (batch of one).
    void last_logits(float* out) {
        std::vector<floatX> row(cfg.vocab_size);
        to_host(row.data(), acts.logits + (long)(B * T - 1) * cfg.vocab_size, row.size(), stream);
        for (size_t i = 0; i < row.size(); i++) out[i] = (float)row[i];
    }
};

// ----------------------------------------------------------------------------
// The backend the training driver (core/trainer.h) calls

// cuBLASLt's choice of algorithm per product (kernels/matmul.cuh), recorded beside the checkpoints.
constexpr const char* MATMUL_CHOICES_FILE = "cublaslt_algorithms.txt";

struct GpuBackend : TrainerBackend {
    GpuModel model;
    // Where this run records cuBLASLt's choices ("" for none), and how many plans that record holds.
    std::string choices_path;
    size_t choices_recorded = 0;

    GpuBackend(const ModelConfig& cfg, int B, int T, bool recompute, const DataParallel& dp = DataParallel(),
               bool cuda_graphs = true)
        : model(cfg, B, T, recompute, dp, cuda_graphs) {
        matmul_timing = false;  // permitted in forward_backward only
    }

    std::string description() const override {
        char text[1024];
        const double peak = peak_flops();
        char mfu[128] = "MFU not reported: ";
        if (peak > 0) snprintf(mfu, sizeof(mfu), "MFU against %.1f TFLOP/s dense bf16", peak / 1e12);
        else strcat(mfu, FLOATX_IS_FP32 ? "the FP32 build" : "dense bf16 peak unknown for this GPU");
        char ranks[224] = "one process, no NCCL";
        const DataParallel& dp = model.mem.dp;
        const char* graphs = model.use_graphs ? "on" : dp.comm ? "off (with NCCL)" : "off (-D 0)";
        if (dp.comm)
            snprintf(ranks, sizeof(ranks), "%d rank(s) over NCCL, gradients summed layer by layer during the backward; %s",
                     dp.world_size, dp.zero1 ? "ZeRO-1: each keeps and updates 1/N of the fp32 master weights and Adam moments"
                                             : "all-reduce: each keeps and updates all of them");
        snprintf(text, sizeof(text),
                 "device: %s, %s\ndata parallel: %s; CUDA graphs %s\nmemory per GPU: %.2f GiB weights, fp32 gradients and optimizer state; %.2f GiB "
                 "activations for %ld tokens per micro-batch, %s; %.2f GiB cuBLASLt workspace; %s",
                 model.device_name.c_str(),
                 FLOATX_IS_FP32 ? "fp32 storage"
                                : "bf16 weights and activations, fp32 weight gradients, master weights and Adam moments",
                 ranks, graphs, model.mem.bytes() / 1073741824.0, model.activation_bytes / 1073741824.0, model.activation_rows,
                 model.recompute ? "each layer's recomputed in the backward (-R 1)" : "every layer's stored",
                 MATMUL_WORKSPACES * CUBLASLT_WORKSPACE_BYTES / 1073741824.0, mfu);
        return text;
    }
    // MFU compares with the bf16 tensor-core peak, which the FP32 build does not use.
    double peak_flops() const override { return FLOATX_IS_FP32 ? 0 : peak_bf16_flops(model.device_name); }
    void zero_grad() override { model.zero_grad(); }
    // Only a training step's new products are timed: evaluation and sampling keep the heuristic's
    // first (sampling would time each context length, and only rank 0 samples). With several ranks
    // each takes rank 0's choice.
    void forward_backward(const int* inputs, const int* targets, int B, int T, float loss_scale, bool last_micro) override {
        model.last_micro = last_micro;
        model.load_batch(inputs, targets, B, T);
        matmul_timing = true;
        if (model.mem.dp.comm) matmul_agreement = [this](int choice) { return model.rank0_choice(choice); };
        model.forward_backward(loss_scale);
        matmul_timing = false;
        matmul_agreement = nullptr;
        record_matmul_choices();
    }
    float forward_loss(const int* inputs, const int* targets, int B, int T) override {
        model.load_batch(inputs, targets, B, T);
        model.forward();
        model.classifier(1.0f, /*write_dlogits=*/false);
        record_matmul_choices();
        return model.mean_loss();
    }
    void next_token_logits(const int* tokens, int T, float* logits) override {
        model.load_batch(tokens, nullptr, 1, T);
        model.forward();
        model.last_logits(logits);
    }
    void reduce_gradients(bool stop) override { model.reduce_gradients(stop); }
    double all_reduce_sum(double x) override { return model.all_reduce_sum(x); }
    std::vector<ParamRange> optimizer_ranges(long) const override { return model.mem.owned_ranges(); }
    void optimizer_step(double lr, int t, const TrainOptions& o) override { model.optimizer_step(lr, t, o); }
    StepResult step_result() override { return model.step_result(); }
    void read_state(float* params, float* m, float* v) override { model.mem.read_state(params, m, v, model.stream); }
    void read_grads(float* grads) override { model.mem.read_grads(grads, model.stream); }
    void write_state(const float* params, const float* m, const float* v) override {
        model.mem.write_state(params, m, v, model.stream);
    }

    // Rewrites the record when this process has made new plans: at the first step (and a first
    // evaluation), before any checkpoint that it is to reproduce.
    void record_matmul_choices() {
        if (choices_path.empty() || matmul_plan_count() == choices_recorded) return;
        const std::string text = matmul_choices_text();
        write_file_atomically(choices_path, [&](FILE* f) { return fwrite(text.data(), 1, text.size(), f) == text.size(); });
        choices_recorded = matmul_plan_count();
    }
};

// -r: the choices recorded beside the checkpoint, if any (a run from before the record is timed anew).
inline void use_recorded_matmul_choices(const std::string& resume) {
    struct stat st;
    const bool is_directory = stat(resume.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    const std::string path = (is_directory ? resume : directory_of(resume)) + "/" + MATMUL_CHOICES_FILE;
    std::ifstream in(path);
    if (!in) {
        printf("cuBLASLt: no %s to resume with: products are chosen anew\n", path.c_str());
        return;
    }
    std::stringstream text;
    text << in.rdbuf();
    matmul_use_choices(text.str(), path);
}

#ifndef TESTING
int main(int argc, char** argv) {
    TrainOptions opts;
    DistributedEnv env;
    try {
        opts = parse_train_options(argc, argv);
        if (!opts.help) {
            env = detect_distributed_env();
            if (opts.steps > 0) accumulation_steps(opts, env.world_size);  // -d must split evenly over the ranks too
        }
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\nrun with -h for the list of flags\n", e.what());
        return 2;
    }
    if (opts.help) { fputs(train_usage(), stdout); return 0; }
    // Under a launcher (mpirun, torchrun, srun) this is one rank of a data-parallel run over NCCL, even
    // with one rank; its error messages name it.
    const bool launched = env.launcher != "none";
    const std::string rank_prefix = launched ? "rank " + std::to_string(env.rank) + ": " : "";
    int devices = 0;
    const cudaError_t error = cudaGetDeviceCount(&devices);
    if (error != cudaSuccess || devices == 0) {
        fprintf(stderr, "%serror: no CUDA device (%s); train_mixln_cpu trains on the CPU\n", rank_prefix.c_str(),
                error != cudaSuccess ? cudaGetErrorString(error) : "the device count is 0");
        return 1;
    }
    atexit(abort_open_communicator);
    try {
        // One GPU per rank: its local rank's, or the only one the launcher left visible to it.
        const int device = devices == 1 ? 0 : env.local_rank;
        if (device >= devices)
            throw std::runtime_error("local rank " + std::to_string(env.local_rank) + " has no GPU of its own: " +
                                     std::to_string(devices) + " are visible");
        cudaCheck(cudaSetDevice(device));
        DataParallel dp;
        if (launched) dp = DataParallel{open_communicator(env), env.rank, env.world_size, opts.zero1};
        const int status = run_training(opts, [&](const ModelConfig& cfg) {
            const std::pair<int, int> batch = largest_batch(opts, cfg);
            std::unique_ptr<GpuBackend> backend(new GpuBackend(cfg, batch.first, batch.second, opts.recompute, dp, opts.cuda_graphs));
            // Rank 0, whose choices every rank takes, records them beside its checkpoints and takes
            // them back on -r.
            if (env.rank == 0 && opts.steps > 0 && opts.ckpt_interval >= 0) {
                if (!opts.resume.empty()) use_recorded_matmul_choices(opts.resume);
                backend->choices_path = opts.out_dir + "/" + MATMUL_CHOICES_FILE;
            }
            return std::unique_ptr<TrainerBackend>(std::move(backend));
        }, env);
        if (dp.comm) close_communicator(dp.comm);
        return status;
    } catch (const std::exception& e) {
        fprintf(stderr, "%serror: %s\n", rank_prefix.c_str(), e.what());
        return 1;  // the exit handler aborts the communicator
    }
}
#endif
