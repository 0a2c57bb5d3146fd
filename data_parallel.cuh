// The GPU trainer's parameter memory and data parallelism: every NCCL call of train_mixln.cu lives
// here. The weights, gradients and optimizer state of one rank in the arrangements of core/
// distributed.h's BucketPlan, and how they move: between host and device (the driver's fp32 arrays in
// the layout of core/config.h), and between the ranks, bucket by bucket (the embedding, each layer's
// block, the final norm with the LM head).
//
// One step on W ranks with ZeRO-1 (-Z 1):
//   backward of the last micro-batch   as soon as a bucket's gradients are complete (the LM head's
//                                      first, then each layer's, the embedding's last) its
//                                      reduce-scatter starts on a second stream, after an event, while
//                                      the backward goes on with the next layer: each rank receives
//                                      the sum of its slice of the bucket in its owned gradients
//   finish_sums                        the compute stream waits for the second stream's sums
//   gradient norm                      each rank's partial sums over its owned gradients, all-gathered
//                                      and added in rank order (the same on every rank, every run)
//   AdamW                              one launch over the owned buffers (its slice of every bucket)
//   all_gather_weights                 each bucket's updated slices to every rank, on the second stream:
//                                      up to 32 ranks bucket by bucket in the order the next forward
//                                      reads them, which waits for each bucket just before its first
//                                      use (wait_for_weights), so that it starts on the embedding while
//                                      the layers' weights are still on their way; above, one group
// -Z 0 all-reduces each bucket in place instead, on the same second stream, and every rank updates
// all weights. One process without NCCL makes none of these calls; on one rank the plan has no
// padding, the owned buffers are the padded ones, and every collective leaves the numbers as they
// are, so that the NCCL path is bitwise the plain one.
//
// Reading order: device memory; NCCL's checked calls and the communicator; ParameterMemory.
#pragma once
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#include <nccl.h>
#include "core/distributed.h"
#include "core/rendezvous.h"
#include "kernels/common.cuh"

// ----------------------------------------------------------------------------
// Device memory

// cudaMalloc that reports running out of memory as an error naming the allocation (and what to do
// about it), which the driver prints; any other failure exits through cudaCheck.
template <typename T>
T* device_alloc(size_t count, const std::string& what) {
    void* ptr = nullptr;
    const cudaError_t error = cudaMalloc(&ptr, count * sizeof(T));
    if (error == cudaErrorMemoryAllocation) {
        cudaGetLastError();  // clear it
        char size[32];
        snprintf(size, sizeof(size), "%.2f GiB", count * sizeof(T) / 1073741824.0);
        throw std::runtime_error("out of GPU memory allocating " + what + " (" + size + ")");
    }
    cudaCheck(error);
    return (T*)ptr;
}

// From pageable host memory: returns once src is staged, so the caller may reuse it at once.
template <typename T>
void to_device(T* dst, const T* src, size_t count, cudaStream_t stream) {
    cudaCheck(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyHostToDevice, stream));
}

// ----------------------------------------------------------------------------
// NCCL: checked calls, and the communicator of the ranks

constexpr ncclDataType_t NCCL_FLOATX = FLOATX_IS_FP32 ? ncclFloat : ncclBfloat16;

// The open communicator, which an error must abort, and this process's rank, for messages.
static ncclComm_t g_open_comm = nullptr;
static int g_rank = 0;

// Prints where and why, naming the rank, then exits (and the exit handler aborts the communicator).
inline void nccl_check(ncclResult_t result, const char* file, int line) {
    if (result == ncclSuccess) return;
    fprintf(stderr, "rank %d: NCCL error at %s:%d: %s (%s)\n", g_rank, file, line, ncclGetErrorString(result),
            ncclGetLastError(g_open_comm));
    exit(EXIT_FAILURE);
}
#define ncclCheck(call) nccl_check((call), __FILE__, __LINE__)

// Waits for the stream's work so far. With a communicator open that work may include collectives,
// which wait for the other ranks: a rank that died leaves them waiting forever, so instead of blocking
// in cudaStreamSynchronize this polls the stream and NCCL's asynchronous error (which NCCL sets when
// a connection to a peer breaks, or a collective times out), and on an error exits with a message
// naming it (the exit handler then aborts the communicator, which ends its kernels).
inline void wait_for_stream(cudaStream_t stream) {
    if (!g_open_comm) {
        cudaCheck(cudaStreamSynchronize(stream));
        return;
    }
    for (;;) {
        const cudaError_t state = cudaStreamQuery(stream);
        if (state == cudaSuccess) return;
        if (state != cudaErrorNotReady) cudaCheck(state);
        ncclResult_t async_error = ncclSuccess;
        ncclCheck(ncclCommGetAsyncError(g_open_comm, &async_error));
        if (async_error != ncclSuccess && async_error != ncclInProgress) {
            fprintf(stderr, "rank %d: NCCL error while waiting for the other ranks: %s (%s)\n", g_rank,
                    ncclGetErrorString(async_error), ncclGetLastError(g_open_comm));
            exit(EXIT_FAILURE);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
}

// Waits for the stream's work so far (polling, as above), then copies: a copy into pageable host
// memory would itself block until the stream's earlier work is done.
template <typename T>
void to_host(T* dst, const T* src, size_t count, cudaStream_t stream) {
    wait_for_stream(stream);
    cudaCheck(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
}

// main's exit handler: whatever ends the process while a communicator is open (cudaCheck or ncclCheck
// exiting, an error reaching main) aborts it, so that this rank stops at once instead of hanging in
// ncclCommDestroy, which waits for the other ranks. The launcher then stops them: mpirun and torchrun
// do when a rank exits with an error, srun with --kill-on-bad-exit=1.
static void abort_open_communicator() {
    if (!g_open_comm) return;
    fprintf(stderr, "rank %d: aborting the NCCL communicator\n", g_rank);
    ncclCommAbort(g_open_comm);
    g_open_comm = nullptr;
}

// The communicator of all ranks, on the current device: rank 0 makes NCCL's unique id, the rendezvous
// of core/rendezvous.h hands it to the others, and every rank joins (ncclCommInitRank waits for all).
inline ncclComm_t open_communicator(const DistributedEnv& env) {
    g_rank = env.rank;
    ncclUniqueId id;
    Blob blob;
    if (env.rank == 0) {
        ncclCheck(ncclGetUniqueId(&id));
        blob.assign((const unsigned char*)&id, (const unsigned char*)&id + sizeof(id));
    }
    blob = share_from_rank0(env.rank, env.world_size, blob, sizeof(id));
    memcpy(&id, blob.data(), sizeof(id));
    ncclComm_t comm;
    ncclCheck(ncclCommInitRank(&comm, env.world_size, id, env.rank));
    g_open_comm = comm;
    return comm;
}

// After a run that ended well on every rank.
inline void close_communicator(ncclComm_t comm) {
    g_open_comm = nullptr;
    ncclCheck(ncclCommDestroy(comm));
}

// How a model's process works with the others.
struct DataParallel {
    ncclComm_t comm = nullptr;  // null: one process, no NCCL (in a test, maybe one of world_size ranks
                                // standing alone: nothing moves between ranks)
    int rank = 0, world_size = 1;
    bool zero1 = false;         // -Z 1: each rank keeps and updates its slice of every bucket's optimizer state
};

// ----------------------------------------------------------------------------
// The parameter memory of one rank

// Up to this many ranks the updated weights are all-gathered one bucket at a time, overlapping the next
// forward; above it in one group, whose one ring latency ((ranks - 1) hops) beats the overlap: the cost
// model (dev/cost_model.py, a flat ring at 45 GB/s and 3 us a hop across nodes: PREDICTED) puts 130m's
// step with per-bucket gathers 2-12% faster on 8 to 32 GPUs and 6% slower on 64. MIXLN_PER_BUCKET_ALL_GATHER
// = 0 or 1 sets the choice (for tests and measurements).
constexpr int PER_BUCKET_ALL_GATHER_MAX_RANKS = 32;

inline bool per_bucket_all_gather(int world_size) {
    const char* env = getenv("MIXLN_PER_BUCKET_ALL_GATHER");
    if (env && *env) return strcmp(env, "0") != 0;
    return world_size <= PER_BUCKET_ALL_GATHER_MAX_RANKS;
}

struct ParameterMemory {
    DataParallel dp;
    BucketPlan plan;        // over dp.world_size ranks under ZeRO-1; over one (no slices, no padding) otherwise
    int plan_rank;          // this rank's place in plan: dp.rank under ZeRO-1, else 0 (which owns everything)

    // Padded (plan.padded_total elements; the padding stays zero: NCCL moves it, nothing reads it):
    floatX* params;         // the weights the forward and backward read
    float* grads;           // fp32: accumulated over a step's micro-batches (in fp32, not bf16: docs/gpu.md
                            // "Gradient accumulation"), then summed over the ranks
    // Owned (plan.owned_total elements): this rank's slice of every bucket. On a one-rank plan the
    // first two are the padded buffers themselves.
    floatX* owned_params;   // the weights AdamW writes, before the all-gather
    float* owned_grads;     // the sums over the ranks of this rank's slices of the gradients
    float* master;          // the fp32 weights AdamW updates, rounded into owned_params; in the FP32
                            // build owned_params itself (see kernels/adamw.cuh)
    float* adam_m, *adam_v; // Adam's first and second moments
    double* reduced_scalar; // all_reduce_sum's value

    cudaStream_t comm_stream = nullptr;      // the second stream: the buckets' sums during the backward,
                                             // their updated weights' all-gather during the next forward
    std::vector<cudaEvent_t> backward_done;  // per bucket: the backward has written its gradients
    cudaEvent_t second_stream_done = nullptr;  // what was queued on the second stream so far is done
    cudaEvent_t update_done = nullptr;       // AdamW has written the owned weights
    std::vector<cudaEvent_t> weights_gathered;  // per bucket: params holds its updated weights (an event
                                                // never recorded counts as done: the first step waits for nothing)

    ParameterMemory(const DataParallel& dp_, const ParamLayout& layout, int n_layer, cudaStream_t stream)
        : dp(dp_), plan(gradient_bucket_plan(layout, n_layer, dp_.zero1 ? dp_.world_size : 1)),
          plan_rank(dp_.zero1 ? dp_.rank : 0), backward_done(plan.buckets.size()), weights_gathered(plan.buckets.size()) {
        params = device_alloc<floatX>(plan.padded_total, "the parameters");
        grads = device_alloc<float>(plan.padded_total, "the gradients");
        cudaCheck(cudaMemsetAsync(params, 0, plan.padded_total * sizeof(floatX), stream));
        owned_params = separate_owned() ? device_alloc<floatX>(plan.owned_total, "this rank's updated weights") : params;
        owned_grads = separate_owned() ? device_alloc<float>(plan.owned_total, "this rank's summed gradients") : grads;
        master = FLOATX_IS_FP32 ? reinterpret_cast<float*>(owned_params) : device_alloc<float>(plan.owned_total, "the fp32 master weights");
        adam_m = device_alloc<float>(plan.owned_total, "Adam's first moments");
        adam_v = device_alloc<float>(plan.owned_total, "Adam's second moments");
        reduced_scalar = device_alloc<double>(1, "a value summed over the ranks");
        if (!dp.comm) return;
        int least, greatest;  // the sums' kernels go first whenever both streams have work ready
        cudaCheck(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        cudaCheck(cudaStreamCreateWithPriority(&comm_stream, cudaStreamDefault, greatest));
        for (cudaEvent_t& e : backward_done) cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        for (cudaEvent_t& e : weights_gathered) cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&second_stream_done, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&update_done, cudaEventDisableTiming));
    }

    ~ParameterMemory() {
        if (separate_owned()) {
            cudaCheck(cudaFree(owned_params));
            cudaCheck(cudaFree(owned_grads));
        }
        if (!FLOATX_IS_FP32) cudaCheck(cudaFree(master));
        for (void* p : {(void*)params, (void*)grads, (void*)adam_m, (void*)adam_v, (void*)reduced_scalar}) cudaCheck(cudaFree(p));
        if (!dp.comm) return;
        for (cudaEvent_t e : backward_done) cudaCheck(cudaEventDestroy(e));
        for (cudaEvent_t e : weights_gathered) cudaCheck(cudaEventDestroy(e));
        cudaCheck(cudaEventDestroy(second_stream_done));
        cudaCheck(cudaEventDestroy(update_done));
        cudaCheck(cudaStreamDestroy(comm_stream));
    }
    ParameterMemory(const ParameterMemory&) = delete;
    ParameterMemory& operator=(const ParameterMemory&) = delete;

    // ZeRO-1 on several ranks: the owned buffers are allocations of their own.
    bool separate_owned() const { return plan.world_size > 1; }

    // The parameters whose master weights and moments this rank keeps (ascending ranges of the layout).
    std::vector<ParamRange> owned_ranges() const { return plan.owned_ranges(plan_rank); }

    // Device bytes: the padded weights and gradients, and the owned buffers of their own: the moments,
    // the bf16 build's master weights, and on several ranks the owned gradients and weights.
    size_t bytes() const {
        const size_t owned_bytes = 2 * sizeof(float) + (FLOATX_IS_FP32 ? 0 : sizeof(float)) +
                                   (separate_owned() ? sizeof(float) + sizeof(floatX) : 0);
        return plan.padded_total * (sizeof(floatX) + sizeof(float)) + plan.owned_total * owned_bytes;
    }

    // ---- the gradients' sum over the ranks, overlapped with the backward ----

    // The backward of the step's last micro-batch has written bucket b's gradients (on stream): their
    // sum over the ranks starts on the second stream, which waits for that point of stream only, so
    // that stream goes on with the next layers meanwhile. ZeRO-1 reduce-scatters the bucket into this
    // rank's owned gradients (in place on one rank); -Z 0 all-reduces it in place. No bucket's
    // gradients are written again before finish_sums: each is written by its own layer only. (A
    // CUDA graph that captures this must capture finish_sums too, which joins the second stream.)
    void bucket_ready(int b, cudaStream_t stream) {
        if (!dp.comm) return;
        const GradientBucket& g = plan.buckets[b];
        cudaCheck(cudaEventRecord(backward_done[b], stream));
        cudaCheck(cudaStreamWaitEvent(comm_stream, backward_done[b], 0));
        if (dp.zero1)
            ncclCheck(ncclReduceScatter(grads + g.padded_offset, owned_grads + g.owned_offset, g.slice, ncclFloat, ncclSum,
                                        dp.comm, comm_stream));
        else
            ncclCheck(ncclAllReduce(grads + g.padded_offset, grads + g.padded_offset, g.end - g.begin, ncclFloat, ncclSum,
                                    dp.comm, comm_stream));
    }

    // After the step's micro-batches: makes stream wait for every bucket's sum. backward_started_them:
    // the backward of the last micro-batch called bucket_ready for every bucket; if not, all sums
    // start now.
    void finish_sums(bool backward_started_them, cudaStream_t stream) {
        if (!dp.comm) return;
        if (!backward_started_them)
            for (int b = (int)plan.buckets.size() - 1; b >= 0; b--) bucket_ready(b, stream);  // backward order
        wait_for_second_stream(stream);
    }

    // The gradient norm's partial sums of squares over the owned gradients: *count of them on every
    // rank (the owned buffers are equally long). Returns where those of all ranks are, in rank order,
    // and sets *count to their number: under ZeRO-1 on several ranks all-gathered into gathered (room
    // for W * *count), so that their sum is the same on every rank and in every run; otherwise this
    // rank's partials cover all gradients already.
    const float* all_norm_partials(const float* partials, int* count, float* gathered, cudaStream_t stream) {
        if (!separate_owned() || !dp.comm) return partials;
        wait_for_second_stream(stream);
        ncclCheck(ncclAllGather(partials, gathered, *count, ncclFloat, dp.comm, stream));
        *count *= dp.world_size;
        return gathered;
    }

    // After AdamW (queued on stream): every bucket's updated slices from every rank into params, on
    // the second stream in the order the next forward reads them (the embedding, the layers, the final
    // norm with the LM head), each bucket marked done by weights_gathered[b]: one at a time, or all in
    // one group (per_bucket_all_gather).
    void all_gather_weights(cudaStream_t stream) {
        if (!separate_owned() || !dp.comm) return;
        cudaCheck(cudaEventRecord(update_done, stream));
        cudaCheck(cudaStreamWaitEvent(comm_stream, update_done, 0));
        if (!per_bucket_all_gather(dp.world_size)) {
            all_gather(owned_params, params, NCCL_FLOATX, comm_stream);
            for (cudaEvent_t e : weights_gathered) cudaCheck(cudaEventRecord(e, comm_stream));
            return;
        }
        for (size_t b = 0; b < plan.buckets.size(); b++) {
            const GradientBucket& g = plan.buckets[b];
            ncclCheck(ncclAllGather(owned_params + g.owned_offset, params + g.padded_offset, g.slice, NCCL_FLOATX,
                                    dp.comm, comm_stream));
            cudaCheck(cudaEventRecord(weights_gathered[b], comm_stream));
        }
    }

    // Makes stream wait until params holds bucket b's updated weights: the forward calls it before
    // the first kernel that reads them. (Several ranks only: there is no CUDA graph to capture it then.)
    void wait_for_weights(int b, cudaStream_t stream) {
        if (separate_owned() && dp.comm) cudaCheck(cudaStreamWaitEvent(stream, weights_gathered[b], 0));
    }

    // x[0, n) (device memory) summed over the ranks, in place, on stream.
    void sum_in_place(double* x, int n, cudaStream_t stream) {
        if (!dp.comm) return;
        wait_for_second_stream(stream);
        ncclCheck(ncclAllReduce(x, x, n, ncclDouble, ncclSum, dp.comm, stream));
    }

    double all_reduce_sum(double x, cudaStream_t stream) {
        if (!dp.comm) return x;
        to_device(reduced_scalar, &x, 1, stream);
        sum_in_place(reduced_scalar, 1, stream);
        to_host(&x, reduced_scalar, 1, stream);
        return x;
    }

    // ---- state in and out: fp32 on the host, in the layout of core/config.h; moments packed ----

    // p: all weights; m, v: the moments of this rank's owned parameters, packed, or null for zeros (a
    // fresh optimizer).
    void write_state(const float* p, const float* m, const float* v, cudaStream_t stream) {
        wait_for_second_stream(stream);  // no all-gather may still be writing params
        std::vector<floatX> padded(plan.padded_total, (floatX)0.0f);
        plain_to_padded(plan, p, padded.data());  // rounded to floatX
        to_device(params, padded.data(), padded.size(), stream);
        const std::vector<OwnedPiece> pieces = plan.owned_pieces(plan_rank);
        std::vector<float> owned(plan.owned_total, 0.0f);
        copy_pieces(pieces, &OwnedPiece::plain, p, &OwnedPiece::owned, owned.data());
        if (!FLOATX_IS_FP32) to_device(master, owned.data(), owned.size(), stream);
        if (separate_owned()) {  // in the FP32 build, the master weights
            const std::vector<floatX> rounded(owned.begin(), owned.end());
            to_device(owned_params, rounded.data(), rounded.size(), stream);
        }
        for (auto [dst, src] : {std::make_pair(adam_m, m), std::make_pair(adam_v, v)}) {
            std::fill(owned.begin(), owned.end(), 0.0f);
            if (src) copy_pieces(pieces, &OwnedPiece::packed, src, &OwnedPiece::owned, owned.data());
            to_device(dst, owned.data(), owned.size(), stream);
        }
    }

    // p: all fp32 weights, on rank 0 (see gather_master); m, v: the moments of this rank's owned
    // parameters, packed.
    void read_state(float* p, float* m, float* v, cudaStream_t stream) {
        gather_master(p, stream);
        const std::vector<OwnedPiece> pieces = plan.owned_pieces(plan_rank);
        std::vector<float> owned(plan.owned_total);
        for (auto [dst, src] : {std::make_pair(m, adam_m), std::make_pair(v, adam_v)}) {
            to_host(owned.data(), src, owned.size(), stream);
            copy_pieces(pieces, &OwnedPiece::owned, owned.data(), &OwnedPiece::packed, dst);
        }
    }

    // This rank's fp32 master weights into p; under ZeRO-1 on several ranks, rank 0 also receives
    // every other rank's owned master weights, one rank after the other, through a buffer of one
    // rank's (NCCL send/receive), so that p holds all weights there; on other ranks p stays incomplete.
    void gather_master(float* p, cudaStream_t stream) {
        std::vector<float> owned(plan.owned_total);
        to_host(owned.data(), master, owned.size(), stream);
        copy_pieces(plan.owned_pieces(plan_rank), &OwnedPiece::owned, owned.data(), &OwnedPiece::plain, p);
        if (!separate_owned() || !dp.comm) return;
        wait_for_second_stream(stream);
        if (dp.rank != 0) {
            ncclCheck(ncclSend(master, plan.owned_total, ncclFloat, 0, dp.comm, stream));
            wait_for_stream(stream);
            return;
        }
        float* received = device_alloc<float>(plan.owned_total, "a rank's master weights, to save them");
        for (int r = 1; r < dp.world_size; r++) {
            ncclCheck(ncclRecv(received, plan.owned_total, ncclFloat, r, dp.comm, stream));
            to_host(owned.data(), received, owned.size(), stream);
            copy_pieces(plan.owned_pieces(r), &OwnedPiece::owned, owned.data(), &OwnedPiece::plain, p);
        }
        cudaCheck(cudaFree(received));
    }

    // All the gradients summed over the ranks; under ZeRO-1 each rank has its slices only, so they are
    // all-gathered first (over the padded gradients, which the next step zeroes anyway).
    void read_grads(float* out, cudaStream_t stream) {
        wait_for_second_stream(stream);
        all_gather(owned_grads, grads, ncclFloat, stream);
        std::vector<float> padded(plan.padded_total);
        to_host(padded.data(), grads, padded.size(), stream);
        padded_to_plain(plan, padded.data(), out);
    }

  private:
    // Makes stream wait for everything queued on the second stream so far (the buckets' sums, the
    // weights' all-gather): every collective on the compute stream does first, so that the
    // communicator never has two collectives running at once.
    void wait_for_second_stream(cudaStream_t stream) {
        if (!dp.comm) return;
        cudaCheck(cudaEventRecord(second_stream_done, comm_stream));
        cudaCheck(cudaStreamWaitEvent(stream, second_stream_done, 0));
    }

    // Each bucket's slices from owned (this rank's) to padded (every rank's), on several ranks.
    template <typename T>
    void all_gather(const T* owned, T* padded, ncclDataType_t type, cudaStream_t stream) {
        if (!separate_owned() || !dp.comm) return;
        ncclCheck(ncclGroupStart());
        for (const GradientBucket& g : plan.buckets)
            ncclCheck(ncclAllGather(owned + g.owned_offset, padded + g.padded_offset, g.slice, type, dp.comm, stream));
        ncclCheck(ncclGroupEnd());
    }
};
