// Device functions the kernels call: warp shuffles and votes, __syncwarp, atomics, fences, cache-hinted
// loads, and the math intrinsics g++ lacks, each with the precision the CUDA C Programming Guide states
// for it (appendix "Mathematical Functions": intrinsics).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "execution.h"

namespace emu {

// A shuffle: every lane of mask gives its value and the lane it reads from; it gets that lane's value
// (CUDA C Programming Guide, "Warp Shuffle Functions"). A source lane outside mask or outside the
// width's segment gives the lane's own value, as the hardware does for an out-of-range srcLane; a
// source lane that is in the warp but not in mask is undefined: poison.
struct ShuffleLane {
    unsigned char in[16], out[16];
    int src;
};
void shuffle_complete(void* const* lanes, unsigned mask, const void* bytes);

template <typename T>
T shuffle(unsigned mask, T v, int src, const char* what, const char* file, int line) {
    static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
    static const size_t bytes = sizeof(T);
    ShuffleLane lane;
    std::memcpy(lane.in, &v, sizeof(T));
    lane.src = src;
    warp_collective(what, mask, file, line, &lane, shuffle_complete, &bytes, false);
    T r;
    std::memcpy(&r, lane.out, sizeof(T));
    return r;
}

// Source lane of each shuffle flavour, within segments of `width` lanes.
inline int shfl_src_idx(int lane, int src, int width) { return (lane & ~(width - 1)) + (src & (width - 1)); }
inline int shfl_src_xor(int lane, int m, int width) {
    const int s = lane ^ m;
    return (s & ~(width - 1)) == (lane & ~(width - 1)) ? s : lane;
}
inline int shfl_src_up(int lane, unsigned d, int width) { return (lane & (width - 1)) >= (int)d ? lane - (int)d : lane; }
inline int shfl_src_down(int lane, unsigned d, int width) { return (lane & (width - 1)) + (int)d < width ? lane + (int)d : lane; }

unsigned vote(unsigned mask, bool predicate, const char* what, const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
[[noreturn]] void trap(const char* file, int line);

}  // namespace emu

#define __shfl_sync(mask, v, src, ...) ::emu::shuffle((mask), (v), ::emu::shfl_src_idx(::emu::this_thread().lane, (src), EMU_WIDTH(__VA_ARGS__)), "__shfl_sync", __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, m, ...) ::emu::shuffle((mask), (v), ::emu::shfl_src_xor(::emu::this_thread().lane, (m), EMU_WIDTH(__VA_ARGS__)), "__shfl_xor_sync", __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) ::emu::shuffle((mask), (v), ::emu::shfl_src_up(::emu::this_thread().lane, (d), EMU_WIDTH(__VA_ARGS__)), "__shfl_up_sync", __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) ::emu::shuffle((mask), (v), ::emu::shfl_src_down(::emu::this_thread().lane, (d), EMU_WIDTH(__VA_ARGS__)), "__shfl_down_sync", __FILE__, __LINE__)
#define EMU_WIDTH(...) (::emu::width_or_warp(0 __VA_OPT__(,) __VA_ARGS__))
namespace emu {
inline int width_or_warp(int) { return 32; }
inline int width_or_warp(int, int width) { return width; }
}  // namespace emu
#define __ballot_sync(mask, p) ::emu::vote((mask), (p), "__ballot_sync", __FILE__, __LINE__)
#define __any_sync(mask, p) (::emu::vote((mask), (p), "__any_sync", __FILE__, __LINE__) != 0)
#define __all_sync(mask, p) (::emu::vote((mask), (p), "__all_sync", __FILE__, __LINE__) == (mask))
#define __syncwarp(...) ::emu::syncwarp(::emu::width_or_mask(0 __VA_OPT__(,) __VA_ARGS__), __FILE__, __LINE__)
namespace emu {
inline unsigned width_or_mask(int) { return 0xffffffffu; }
inline unsigned width_or_mask(int, unsigned mask) { return mask; }
}  // namespace emu
#define __trap() ::emu::trap(__FILE__, __LINE__)

// __activemask: the lanes of the warp that have not exited (the emulation runs lanes independently,
// so "converged" is all of them).
unsigned __activemask();

// Fences: the fibers of one process see every write at once; nothing to do (the race checker's
// happens-before edges come only from barriers and __syncwarp).
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- atomics: one fiber runs at a time, so a read-modify-write is atomic; the __atomic builtins tell
// the race checker so.
template <typename T>
inline T emu_atomic_update(T* p, T (*op)(T, T), T v) {
    T old;
    __atomic_load(p, &old, __ATOMIC_SEQ_CST);
    T desired = op(old, v);
    while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) desired = op(old, v);
    return old;
}
inline float atomicAdd(float* p, float v) { return emu_atomic_update<float>(p, [](float a, float b) { return a + b; }, v); }
inline double atomicAdd(double* p, double v) { return emu_atomic_update<double>(p, [](double a, double b) { return a + b; }, v); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicMax(int* p, int v) { return emu_atomic_update<int>(p, [](int a, int b) { return a > b ? a : b; }, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_update<unsigned>(p, [](unsigned a, unsigned b) { return a > b ? a : b; }, v); }
inline int atomicMin(int* p, int v) { return emu_atomic_update<int>(p, [](int a, int b) { return a < b ? a : b; }, v); }
inline int atomicCAS(int* p, int compare, int v) { __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return compare; }
inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned v) { __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return compare; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long compare, unsigned long long v) { __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); return compare; }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline float atomicExch(float* p, float v) { float old; __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST); return old; }

// ---- cache-hinted loads and stores: plain accesses here.
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }

// ---- address spaces: a shared pointer's offset in the block's shared window, as cvta.to.shared gives.
inline size_t __cvta_generic_to_shared(const void* p) { return ::emu::shared_offset(p); }
inline void* __cvta_shared_to_generic(size_t a) { return ::emu::shared_pointer((uint32_t)a); }

// ---- math. CUDA's single-precision functions (expf, logf, sqrtf, rsqrtf ...) are within 1-4 ulp of
// the exact result; the emulation uses the host's correctly or nearly correctly rounded ones, so a
// kernel's error here is smaller than on a GPU by those few ulp (docs/emulation.md says so). The
// intrinsics are emulated with their documented error instead:
//   __expf(x) = ex2.approx(x * log2(e)): the product rounded to fp32 first, so the error grows with |x|
//   (2 + 1.16|x| ulp, Programming Guide table "Intrinsic Functions").
//   __fdividef(a, b) = a * (1/b) in two roundings (2 ulp for |b| in [2^-126, 2^126]; 0 for larger |b|).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp2(x * 1.44269504f); }
inline float __exp10f(float x) { return std::exp2(x * 3.32192809f); }
inline float __logf(float x) { return std::log2(x) * 0.693147181f; }
inline float __log2f(float x) { return std::log2(x); }
inline float __fdividef(float a, float b) {
    if (std::fabs(b) > 0x1p126f) return 0.0f * a;
    return a * (1.0f / b);
}
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float cospif(float x) { return (float)std::cos(3.14159265358979323846 * (double)x); }  // 1 ulp on a GPU
inline float sinpif(float x) { return (float)std::sin(3.14159265358979323846 * (double)x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }

// CUDA's overloaded min and max for every arithmetic type (math_functions.hpp).
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// cudaFuncSetAttribute and the occupancy query take the kernel itself in CUDA C++ (templates that only
// nvcc's headers declare).
template <typename... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute((const void*)kernel, attr, value);
}
template <typename... P>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*kernel)(P...), int block, size_t shared) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, (const void*)kernel, block, shared);
}
