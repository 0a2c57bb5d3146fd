// The emulation's execution model (emu/execution.*, emu/collectives.cpp, emu/runtime.cpp,
// emu/stream.cpp) on small kernels written for these tests: barriers, shuffles and votes against
// their definitions in the CUDA C Programming Guide, poisoned memory, the launch checks the driver
// makes, the scheduling orders, and the order in which streams, events and graphs run their work.
// The errors that stop a program (deadlocks, exited lanes, writes past the end) are in
// test/emu/planted_bugs.sh, which runs them as separate processes.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../catch_compat.h"
#include "../../kernels/common.cuh"

namespace {

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// Block sums through shared memory and barriers: thread t of block b holds b * 1000 + t.
__global__ void block_sum_kernel(int* out) {
    __shared__ int partial[256];
    partial[threadIdx.x] = blockIdx.x * 1000 + threadIdx.x;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Each lane records what every shuffle flavour gives it.
__global__ void shuffle_kernel(int* out) {
    const int lane = threadIdx.x % 32;
    const int v = 100 + threadIdx.x;
    int* o = out + threadIdx.x * 8;
    o[0] = __shfl_sync(FULL_WARP_MASK, v, 5);
    o[1] = __shfl_xor_sync(FULL_WARP_MASK, v, 3);
    o[2] = __shfl_up_sync(FULL_WARP_MASK, v, 2);
    o[3] = __shfl_down_sync(FULL_WARP_MASK, v, 2);
    o[4] = __shfl_down_sync(FULL_WARP_MASK, v, 1, 8);  // within segments of 8 lanes
    o[5] = __shfl_sync(FULL_WARP_MASK, v, lane + 1, 16);
    o[6] = (int)__ballot_sync(FULL_WARP_MASK, lane % 3 == 0);
    o[7] = __all_sync(FULL_WARP_MASK, v > 0) + 2 * __any_sync(FULL_WARP_MASK, lane == 31);
}

// Half warps shuffle among themselves, with different masks at the same time.
__global__ void half_warp_kernel(float* out) {
    const int lane = threadIdx.x % 32;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    float v = (float)lane;
    for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset);
    out[threadIdx.x] = v;
}

__global__ void read_kernel(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

__global__ void fresh_shared_kernel(float* out) {
    __shared__ float never_written[64];
    out[threadIdx.x] = never_written[threadIdx.x];
}

__global__ void dynamic_shared_kernel(float* out, int n) {
    extern __shared__ float buffer[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buffer[i] = (float)i;
    __syncthreads();
    float sum = 0;
    for (int i = 0; i < n; i++) sum += buffer[i];
    if (threadIdx.x == 0) out[0] = sum;
}

__global__ void __launch_bounds__(128) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

__global__ void record_order_kernel(int* order, int* counter) {
    if (threadIdx.x == 0) order[blockIdx.x] = atomicAdd(counter, 1);
}

__global__ void fill_kernel(float* p, float value, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = value;
}

__global__ void add_kernel(float* p, float value, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] += value;
}

}  // namespace

TEST_CASE("emu: barriers and shared memory give every block its own sum") {
    int* d;
    cudaCheck(cudaMalloc(&d, 5 * sizeof(int)));
    block_sum_kernel<<<5, 256>>>(d);
    cudaCheck(cudaGetLastError());
    const std::vector<int> h = to_host(d, 5);
    for (int b = 0; b < 5; b++) CHECK(h[b] == b * 1000 * 256 + 255 * 256 / 2);
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: shuffles and votes follow the Programming Guide's definitions") {
    const int threads = 64;
    int* d;
    cudaCheck(cudaMalloc(&d, threads * 8 * sizeof(int)));
    shuffle_kernel<<<1, threads>>>(d);
    const std::vector<int> h = to_host(d, threads * 8);
    for (int t = 0; t < threads; t++) {
        const int lane = t % 32, warp = t / 32, base = 100 + warp * 32;
        const int* o = &h[t * 8];
        INFO("thread " << t);
        CHECK(o[0] == base + 5);
        CHECK(o[1] == base + (lane ^ 3));
        CHECK(o[2] == base + (lane >= 2 ? lane - 2 : lane));            // up: lanes below delta keep their own
        CHECK(o[3] == base + (lane + 2 < 32 ? lane + 2 : lane));        // down: lanes past the end keep their own
        CHECK(o[4] == base + (lane % 8 + 1 < 8 ? lane + 1 : lane));     // width 8
        CHECK(o[5] == base + (lane / 16) * 16 + (lane + 1) % 16);       // srcLane modulo width
        unsigned ballot = 0;
        for (int l = 0; l < 32; l++) if (l % 3 == 0) ballot |= 1u << l;
        CHECK((unsigned)o[6] == ballot);
        CHECK(o[7] == 3);
    }
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: two half warps shuffle with different masks at once") {
    float* d;
    cudaCheck(cudaMalloc(&d, 32 * sizeof(float)));
    half_warp_kernel<<<1, 32>>>(d);
    const std::vector<float> h = to_host(d, 32);
    for (int l = 0; l < 32; l++) CHECK(h[l] == (l < 16 ? 120.0f : 376.0f));  // 0+..+15, 16+..+31
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: fresh device and shared memory read as NaN, not zeros") {
    float *in, *out;
    cudaCheck(cudaMalloc(&in, 100 * sizeof(float)));
    cudaCheck(cudaMalloc(&out, 100 * sizeof(float)));
    read_kernel<<<1, 128>>>(out, in, 100);
    for (float v : to_host(out, 100)) CHECK(std::isnan(v));
    fresh_shared_kernel<<<1, 64>>>(out);
    for (float v : to_host(out, 64)) CHECK(std::isnan(v));
    std::vector<float> pinned_check(1);
    float* pinned;
    cudaCheck(cudaMallocHost(&pinned, 16 * sizeof(float)));
    CHECK(std::isnan(pinned[3]));
    cudaCheck(cudaFreeHost(pinned));
    cudaCheck(cudaFree(in));
    cudaCheck(cudaFree(out));
}

TEST_CASE("emu: launches are checked as the driver checks them") {
    float* d;
    cudaCheck(cudaMalloc(&d, 60000 * sizeof(float)));
    SECTION("block and grid limits") {
        read_kernel<<<1, 1025>>>(d, d, 1);
        CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
        read_kernel<<<dim3(1, 65536), 32>>>(d, d, 1);
        CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
        read_kernel<<<0, 32>>>(d, d, 1);
        CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
        CHECK(cudaGetLastError() == cudaSuccess);  // not sticky
    }
    SECTION("__launch_bounds__") {
        int* flags;
        cudaCheck(cudaMalloc(&flags, 256 * sizeof(int)));
        bounded_kernel<<<1, 128>>>(flags);
        CHECK(cudaGetLastError() == cudaSuccess);
        bounded_kernel<<<1, 256>>>(flags);
        CHECK(cudaGetLastError() == cudaErrorLaunchOutOfResources);
        cudaCheck(cudaFree(flags));
    }
    SECTION("dynamic shared memory above 48 KB needs cudaFuncSetAttribute, and at most 227 KB") {
        const int n = 50000;  // 200 KB
        dynamic_shared_kernel<<<1, 256, n * sizeof(float)>>>(d, n);
        CHECK(cudaGetLastError() == cudaErrorInvalidValue);
        CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
              cudaErrorInvalidValue);
        cudaGetLastError();
        cudaCheck(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4));
        dynamic_shared_kernel<<<1, 256, n * sizeof(float)>>>(d, n);
        cudaCheck(cudaGetLastError());
        float expected = 0;  // the kernel's own fp32 order
        for (int i = 0; i < n; i++) expected += (float)i;
        CHECK(to_host(d, 1)[0] == expected);
    }
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: EMU_BLOCK_ORDER runs blocks forward, reversed or shuffled") {
    int *order, *counter;
    cudaCheck(cudaMalloc(&order, 16 * sizeof(int)));
    cudaCheck(cudaMalloc(&counter, sizeof(int)));
    auto run = [&](const char* mode) {
        setenv("EMU_BLOCK_ORDER", mode, 1);
        cudaCheck(cudaMemset(counter, 0, sizeof(int)));
        record_order_kernel<<<16, 32>>>(order, counter);
        std::vector<int> h = to_host(order, 16);
        unsetenv("EMU_BLOCK_ORDER");
        return h;
    };
    const std::vector<int> forward = run("forward"), reverse = run("reverse"), shuffled = run("shuffle");
    for (int b = 0; b < 16; b++) {
        CHECK(forward[b] == b);
        CHECK(reverse[b] == 15 - b);
    }
    std::vector<int> sorted = shuffled;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == forward);
    CHECK(shuffled != forward);
    cudaCheck(cudaFree(order));
    cudaCheck(cudaFree(counter));
}

TEST_CASE("emu: stream work runs when waited for, in order, after the events it waits for") {
    const int n = 64;
    float* d;
    cudaCheck(cudaMalloc(&d, n * sizeof(float)));
    cudaStream_t producer, consumer;
    cudaCheck(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking));
    cudaEvent_t ready;
    cudaCheck(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    float* pinned;
    cudaCheck(cudaMallocHost(&pinned, n * sizeof(float)));

    SECTION("without cudaStreamWaitEvent the consumer does not see the producer's work") {
        fill_kernel<<<1, 32, 0, producer>>>(d, 1.0f, n);
        cudaCheck(cudaMemcpyAsync(pinned, d, n * sizeof(float), cudaMemcpyDeviceToHost, consumer));
        cudaCheck(cudaStreamSynchronize(consumer));
        CHECK(std::isnan(pinned[0]));  // the fill has not run: a missing wait shows
        cudaCheck(cudaStreamSynchronize(producer));
    }
    SECTION("with it, it does") {
        fill_kernel<<<1, 32, 0, producer>>>(d, 1.0f, n);
        add_kernel<<<1, 32, 0, producer>>>(d, 2.0f, n);
        cudaCheck(cudaEventRecord(ready, producer));
        cudaCheck(cudaStreamWaitEvent(consumer, ready, 0));
        cudaCheck(cudaMemcpyAsync(pinned, d, n * sizeof(float), cudaMemcpyDeviceToHost, consumer));
        CHECK(std::isnan(pinned[0]));  // queued, not run: the host has not waited
        cudaCheck(cudaStreamSynchronize(consumer));
        for (int i = 0; i < n; i++) CHECK(pinned[i] == 3.0f);
    }
    SECTION("a synchronous copy waits for the legacy and blocking streams, not for a non-blocking one") {
        cudaStream_t blocking;
        cudaCheck(cudaStreamCreate(&blocking));
        fill_kernel<<<1, 32, 0, producer>>>(d, 1.0f, n);  // producer is non-blocking
        float h = 0;
        cudaCheck(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
        CHECK(std::isnan(h));
        fill_kernel<<<1, 32, 0, blocking>>>(d, 2.0f, n);
        cudaCheck(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost));
        CHECK(h == 2.0f);
        cudaCheck(cudaStreamSynchronize(producer));
        cudaCheck(cudaStreamDestroy(blocking));
    }
    SECTION("an event of a stream destroyed since is complete (the destruction ran its work)") {
        cudaStream_t gone;
        cudaCheck(cudaStreamCreate(&gone));
        fill_kernel<<<1, 32, 0, gone>>>(d, 4.0f, n);
        cudaCheck(cudaEventRecord(ready, gone));
        cudaCheck(cudaStreamDestroy(gone));
        cudaStream_t next;  // may reuse the destroyed stream's object: the event must not name it
        cudaCheck(cudaStreamCreate(&next));
        fill_kernel<<<1, 32, 0, next>>>(d, 5.0f, n);
        CHECK(cudaEventQuery(ready) == cudaSuccess);
        CHECK(to_host(d, 1)[0] == 5.0f);
        cudaCheck(cudaStreamDestroy(next));
    }
    SECTION("a query of unfinished work answers not ready once, then runs it") {
        fill_kernel<<<1, 32, 0, producer>>>(d, 5.0f, n);
        CHECK(cudaStreamQuery(producer) == cudaErrorNotReady);
        CHECK(cudaStreamQuery(producer) == cudaSuccess);
        CHECK(to_host(d, 1)[0] == 5.0f);
    }
    cudaCheck(cudaFreeHost(pinned));
    cudaCheck(cudaEventDestroy(ready));
    cudaCheck(cudaStreamDestroy(producer));
    cudaCheck(cudaStreamDestroy(consumer));
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: a captured graph replays its work, with a forked stream joined back") {
    const int n = 32;
    float* d;
    cudaCheck(cudaMalloc(&d, n * sizeof(float)));
    cudaStream_t main_stream, side;
    cudaCheck(cudaStreamCreate(&main_stream));
    cudaCheck(cudaStreamCreate(&side));
    cudaEvent_t fork, join;
    cudaCheck(cudaEventCreate(&fork));
    cudaCheck(cudaEventCreate(&join));
    fill_kernel<<<1, 32, 0, main_stream>>>(d, 0.0f, n);
    cudaCheck(cudaStreamSynchronize(main_stream));

    cudaCheck(cudaStreamBeginCapture(main_stream, cudaStreamCaptureModeThreadLocal));
    add_kernel<<<1, 32, 0, main_stream>>>(d, 1.0f, n);
    cudaCheck(cudaEventRecord(fork, main_stream));
    cudaCheck(cudaStreamWaitEvent(side, fork, 0));
    add_kernel<<<1, 32, 0, side>>>(d, 10.0f, n);
    cudaCheck(cudaEventRecord(join, side));
    cudaCheck(cudaStreamWaitEvent(main_stream, join, 0));
    SECTION("replayed twice") {
        cudaGraph_t graph;
        cudaCheck(cudaStreamEndCapture(main_stream, &graph));
        CHECK(to_host(d, 1)[0] == 0.0f);  // capturing ran nothing
        cudaGraphExec_t exec;
        cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
        cudaCheck(cudaGraphLaunch(exec, main_stream));
        cudaCheck(cudaGraphLaunch(exec, main_stream));
        cudaCheck(cudaStreamSynchronize(main_stream));
        CHECK(to_host(d, 1)[0] == 22.0f);
        cudaCheck(cudaGraphExecDestroy(exec));
        cudaCheck(cudaGraphDestroy(graph));
    }
    SECTION("a synchronous copy during the capture is an error that invalidates it") {
        float h[4];
        CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaErrorStreamCaptureUnsupported);
        cudaGraph_t graph;
        CHECK(cudaStreamEndCapture(main_stream, &graph) == cudaErrorStreamCaptureInvalidated);
        cudaGetLastError();
    }
    SECTION("work on the legacy default stream during the capture is an error") {
        fill_kernel<<<1, 32>>>(d, 1.0f, n);
        CHECK(cudaGetLastError() == cudaErrorStreamCaptureImplicit);
        cudaGraph_t graph;
        CHECK(cudaStreamEndCapture(main_stream, &graph) == cudaErrorStreamCaptureInvalidated);
        cudaGetLastError();
    }
    cudaCheck(cudaEventDestroy(fork));
    cudaCheck(cudaEventDestroy(join));
    cudaCheck(cudaStreamDestroy(main_stream));
    cudaCheck(cudaStreamDestroy(side));
    cudaCheck(cudaFree(d));
}

TEST_CASE("emu: a graph runs forked work as late as its edges allow, as a GPU may") {
    // The side stream writes d; the origin copies d into e, with or without waiting for the side
    // first. Recorded order would have the write first either way; the edges do not.
    const int n = 32;
    float* d, *e;
    cudaCheck(cudaMalloc(&d, n * sizeof(float)));
    cudaCheck(cudaMalloc(&e, n * sizeof(float)));
    cudaStream_t main_stream, side;
    cudaCheck(cudaStreamCreateWithFlags(&main_stream, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    cudaEvent_t fork, written;
    cudaCheck(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
    auto replay = [&](bool wait_before_reading) {
        fill_kernel<<<1, 32, 0, main_stream>>>(d, 1.0f, n);
        cudaCheck(cudaStreamSynchronize(main_stream));
        cudaCheck(cudaStreamBeginCapture(main_stream, cudaStreamCaptureModeThreadLocal));
        cudaCheck(cudaEventRecord(fork, main_stream));
        cudaCheck(cudaStreamWaitEvent(side, fork, 0));
        fill_kernel<<<1, 32, 0, side>>>(d, 7.0f, n);
        cudaCheck(cudaEventRecord(written, side));
        if (wait_before_reading) cudaCheck(cudaStreamWaitEvent(main_stream, written, 0));
        read_kernel<<<1, 32, 0, main_stream>>>(e, d, n);
        if (!wait_before_reading) cudaCheck(cudaStreamWaitEvent(main_stream, written, 0));  // joined only at the end
        cudaGraph_t graph;
        cudaCheck(cudaStreamEndCapture(main_stream, &graph));
        cudaGraphExec_t exec;
        cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
        cudaCheck(cudaGraphLaunch(exec, main_stream));
        cudaCheck(cudaStreamSynchronize(main_stream));
        cudaCheck(cudaGraphExecDestroy(exec));
        cudaCheck(cudaGraphDestroy(graph));
        CHECK(to_host(d, 1)[0] == 7.0f);  // the side's work ran in the launch either way
        return to_host(e, 1)[0];
    };
    CHECK(replay(true) == 7.0f);
    CHECK(replay(false) == 1.0f);  // the missing edge shows: the copy ran before the write
    cudaCheck(cudaEventDestroy(fork));
    cudaCheck(cudaEventDestroy(written));
    cudaCheck(cudaStreamDestroy(main_stream));
    cudaCheck(cudaStreamDestroy(side));
    cudaCheck(cudaFree(d));
    cudaCheck(cudaFree(e));
}

TEST_CASE("emu: the device describes an H100") {
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, 0));
    CHECK(p.multiProcessorCount == 132);
    CHECK(p.sharedMemPerBlockOptin == 227 * 1024);
    CHECK(p.major == 9);
    size_t free_bytes, total;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total));
    CHECK(total == (80ull << 30));
}
