// What every CUDA kernel header shares: the storage type floatX, checked calls, fp32 reductions and
// 128-bit loads and stores.
//
// Storage and arithmetic: activations, weights and gradients are stored as floatX, bf16 by default or
// fp32 when built with -DENABLE_FP32 (make PRECISION=FP32). Every kernel converts to fp32 on load,
// computes and accumulates in fp32, and rounds once on store. Row statistics (rmsnorm's rstd, losses),
// AdamW's master weights and moments, and reduction partials are always fp32.
//
// The host launchers carry the names of their CPU references in kernels/cpu (embedding_forward,
// matmul_backward, ...) and are told apart from them by their trailing cudaStream_t argument.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#ifdef ENABLE_FP32
typedef float floatX;
#else
typedef __nv_bfloat16 floatX;
#endif
constexpr bool FLOATX_IS_FP32 = std::is_same<floatX, float>::value;

// ----------------------------------------------------------------------------
// Checked calls: print where and why, then exit. Every kernel launch is followed by
// cudaCheck(cudaGetLastError()) so a bad launch configuration is reported at its launcher.

inline void cuda_check(cudaError_t error, const char* file, int line) {
    if (error != cudaSuccess) {
        fprintf(stderr, "CUDA error at %s:%d: %s\n", file, line, cudaGetErrorString(error));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(call) cuda_check((call), __FILE__, __LINE__)

inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuBLAS error at %s:%d: %s\n", file, line, cublasGetStatusString(status));
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(call) cublas_check((call), __FILE__, __LINE__)

// Opts a kernel in to `bytes` of dynamic shared memory (above the default 48 KB) on its first launch
// only: a static per kernel remembers it. The attribute stays set for the process, which uses one
// device (each kernel's bytes are a constant of its instantiation).
template <auto Kernel>
void allow_smem(size_t bytes) {
    static const bool done =
        (cudaCheck(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes)), true);
    (void)done;
}

// ----------------------------------------------------------------------------
// Small helpers

inline __host__ __device__ long ceil_div(long a, long b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------
// Reductions. A warp reduces with an xor butterfly: at every step lanes i and i^offset combine the
// same two values, so with a commutative combine all 32 lanes end with bitwise the same result. A
// block reduces each warp, then every warp reduces the per-warp results: again every thread gets the
// same value. The order of operations depends only on blockDim, so results are reproducible run to run.

constexpr unsigned FULL_WARP_MASK = 0xffffffffu;

__device__ inline float shfl_xor(float v, int offset) { return __shfl_xor_sync(FULL_WARP_MASK, v, offset); }
__device__ inline double shfl_xor(double v, int offset) { return __shfl_xor_sync(FULL_WARP_MASK, v, offset); }
__device__ inline float2 shfl_xor(float2 v, int offset) {
    return make_float2(shfl_xor(v.x, offset), shfl_xor(v.y, offset));
}

template <typename T, typename Combine>
__device__ T warp_reduce(T v, Combine combine) {
    for (int offset = 16; offset > 0; offset /= 2) v = combine(v, shfl_xor(v, offset));
    return v;
}

// blockDim.x must be a multiple of 32 (at most 1024). identity is the value of an empty reduction,
// which the lanes beyond the block's warp count contribute in the second stage.
template <typename T, typename Combine>
__device__ T block_reduce(T v, Combine combine, T identity) {
    __shared__ T warp_results[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    v = warp_reduce(v, combine);
    __syncthreads();  // a previous block_reduce may still be reading warp_results
    if (lane == 0) warp_results[warp] = v;
    __syncthreads();
    return warp_reduce(lane < num_warps ? warp_results[lane] : identity, combine);
}

struct AddOp {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};

__device__ inline float warp_reduce_sum(float v) { return warp_reduce(v, AddOp()); }
__device__ inline float block_reduce_sum(float v) { return block_reduce(v, AddOp(), 0.0f); }

// ----------------------------------------------------------------------------
// 128-bit loads and stores: VEC = 8 bf16 or 4 fp32 elements. The address must be 16-byte aligned
// (cudaMalloc gives 256; each kernel states why its offsets are multiples of VEC). One such access
// moves 16 bytes per thread, 512 per warp instruction (LDG.E.128 / STG.E.128 in the SASS), where a
// 16-bit access moves 64: memory-bound kernels need the wide form to keep enough bytes in flight.

constexpr int VEC = 16 / sizeof(floatX);

template <typename T>
struct alignas(16) Packed {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
    __device__ T& operator[](int i) { return v[i]; }
    __device__ const T& operator[](int i) const { return v[i]; }
};
using PackedX = Packed<floatX>;

template <typename T>
__device__ inline Packed<T> load128(const T* p) {
    const int4 bits = *reinterpret_cast<const int4*>(p);
    Packed<T> out;
    memcpy(&out, &bits, 16);
    return out;
}
template <typename T>
__device__ inline void store128(T* p, const Packed<T>& value) {
    int4 bits;
    memcpy(&bits, &value, 16);
    *reinterpret_cast<int4*>(p) = bits;
}

// Two floatX values at p (aligned to the pair) as fp32: one 32-bit load in bf16, 64-bit in fp32.
__device__ inline float2 load_pair(const void* p) {
    if constexpr (FLOATX_IS_FP32) return *reinterpret_cast<const float2*>(p);
    else return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// Two fp32 values as floatX at p (aligned to the pair): one 32-bit store in bf16, 64-bit in fp32.
__device__ inline void store_pair(void* p, float lo, float hi) {
    if constexpr (FLOATX_IS_FP32) *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
    else *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(lo, hi);
}
