// The emulation's costs on this CPU (docs/emulation.md): a fiber switch, measured through
// __syncthreads (every thread of a block waits once per barrier: one switch to the thread and one back
// to the scheduler), and a warp shuffle (a full-warp collective). No GPU; build and run with
//   make build/emu/bf16/dev/emu/switch_cost && build/emu/bf16/dev/emu/switch_cost
#include <chrono>
#include <cstdio>
#include "../../kernels/common.cuh"

__global__ void barriers_kernel(int* out, int rounds) {
    int v = threadIdx.x;
    for (int i = 0; i < rounds; i++) __syncthreads();
    if (threadIdx.x == 0) out[0] = v;
}

__global__ void shuffles_kernel(float* out, int rounds) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < rounds; i++) v += __shfl_xor_sync(FULL_WARP_MASK, v, 1);
    out[threadIdx.x] = v;
}

__global__ void empty_kernel(float* out) {
    if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1.0f;
}

template <typename F>
static double seconds(F f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    cudaCheck(cudaDeviceSynchronize());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main() {
    int* d_int;
    float* d_float;
    cudaCheck(cudaMalloc(&d_int, sizeof(int)));
    cudaCheck(cudaMalloc(&d_float, 1024 * sizeof(float)));
    const int threads = 1024, rounds = 1000;
    const double barrier_s = seconds([&] { barriers_kernel<<<1, threads>>>(d_int, rounds); });
    const double switches = 2.0 * threads * rounds;
    printf("fiber switch: %.1f ns (%d threads x %d __syncthreads, 2 switches each)\n", barrier_s / switches * 1e9,
           threads, rounds);
    const double shuffle_s = seconds([&] { shuffles_kernel<<<1, threads>>>(d_float, rounds); });
    printf("__shfl_xor_sync: %.1f ns per lane (%d threads x %d)\n", shuffle_s / ((double)threads * rounds) * 1e9,
           threads, rounds);
    const int blocks = 4096;
    const double thread_s = seconds([&] { empty_kernel<<<blocks, 256>>>(d_float); });
    printf("an emulated thread that runs to its end: %.1f ns (%d blocks x 256 threads)\n",
           thread_s / ((double)blocks * 256) * 1e9, blocks);
    cudaCheck(cudaFree(d_int));
    cudaCheck(cudaFree(d_float));
    return 0;
}
