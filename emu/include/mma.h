// nvcuda::wmma (<mma.h>) for the emulation: fragments, load_matrix_sync, store_matrix_sync,
// fill_fragment and mma_sync for the 16x16x16 shape, with __nv_bfloat16 or __half inputs and float
// accumulators (CUDA C++ Programming Guide, "Warp Matrix Functions"; PTX ISA 9.7.14.4 "Matrix
// multiply-accumulate operation using wmma instructions", whose "Matrix Fragments for WMMA" says the
// mapping of matrix elements to a thread's fragment elements is unspecified).
//
// Because that mapping is unspecified, the emulation DELIBERATELY SCRAMBLES it: each fragment kind
// (matrix_a row/col major, matrix_b row/col major, accumulator) maps element i of lane l (l*8 + i) to a
// (row, col) of the 16x16 tile by its own fixed pseudo-random permutation of the 256 positions. Code that
// uses x[] only element-wise (scaling, filling, converting) works; code that assumes NVIDIA's real
// layout gets wrong answers.
//
// load_matrix_sync, store_matrix_sync and mma_sync are warp collectives (emu::warp_collective, all 32
// lanes): a lane that diverges, has exited or is missing fails with the kernel, block, thread and line.
// Every lane must give the same pointer, ldm and layout (the Guide's rule), the pointer 32-byte aligned
// and ldm a multiple of 16 bytes; a violation fails. Each lane reads its own elements as it arrives at
// a load, and writes its own after a store's rendezvous, in its own fiber: the race checker sees them as
// that thread's accesses, and a tile read before the other lanes' writes are ordered (no __syncwarp or
// __syncthreads) can read stale data, as on a GPU. mma_sync computes each D element as the fp32 sum,
// over k in order, of the exact products A(m,k) B(k,n) (a bf16 or fp16 product is exact in fp32), then
// adds C(m,n): the tensor cores' order and internal rounding are not specified, so tests must allow an
// fp32 accumulation's error, as they would on a GPU.
#pragma once
#include <cstdint>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "../execution.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace emu_detail {

constexpr int ELEMENTS = 8;  // 256 tile elements over 32 lanes

struct Permutation {
    uint8_t pos[256];  // lane * 8 + i -> row * 16 + col
};

// A fixed pseudo-random permutation of 0..255 (Fisher-Yates over a 32-bit LCG), one per seed.
constexpr Permutation make_permutation(uint32_t seed) {
    Permutation p{};
    for (int i = 0; i < 256; i++) p.pos[i] = (uint8_t)i;
    uint32_t s = seed;
    for (int i = 255; i > 0; i--) {
        s = s * 1664525u + 1013904223u;
        const int j = (int)((s >> 8) % (uint32_t)(i + 1));
        const uint8_t t = p.pos[i];
        p.pos[i] = p.pos[j];
        p.pos[j] = t;
    }
    return p;
}

template <typename Use, typename Layout>
struct Mapping;
template <> struct Mapping<matrix_a, row_major> { static constexpr Permutation map = make_permutation(0xA11CEu); };
template <> struct Mapping<matrix_a, col_major> { static constexpr Permutation map = make_permutation(0xA2C01u); };
template <> struct Mapping<matrix_b, row_major> { static constexpr Permutation map = make_permutation(0xB0B15u); };
template <> struct Mapping<matrix_b, col_major> { static constexpr Permutation map = make_permutation(0xB2C0Fu); };
template <> struct Mapping<accumulator, void> { static constexpr Permutation map = make_permutation(0xACC0u); };

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(__half v) { return __half2float(v); }
template <typename T> T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> inline __half from_float<__half>(float v) { return __float2half(v); }

// One lane's load or store: where and how. Each lane reads (load, before the collective) or writes
// (store, after it) its own elements in its own fiber, so the race checker sees them as its accesses;
// the collective checks that the warp converged with one pointer, ldm and layout.
struct MemLane {
    const void* ptr;
    unsigned ldm;
    int layout;  // 0 row major, 1 col major
};

inline void check_same(void* const* lanes, unsigned, const void* what) {
    const MemLane* l0 = (const MemLane*)lanes[0];
    for (int l = 1; l < 32; l++) {
        const MemLane* me = (const MemLane*)lanes[l];
        if (me->ptr != l0->ptr || me->ldm != l0->ldm || me->layout != l0->layout)
            ::emu::fail("%s: lane %d gives (ptr %p, ldm %u, layout %d) but lane 0 (ptr %p, ldm %u, layout %d); all "
                        "lanes of the warp must give the same", (const char*)what, l, me->ptr, me->ldm, me->layout,
                        l0->ptr, l0->ldm, l0->layout);
    }
}

// The Guide's rules for the pointer and ldm, checked by each lane before it touches memory.
inline void check_pointer(const char* what, const void* ptr, unsigned ldm, size_t bytes, const char* file, int line) {
    if ((uintptr_t)ptr % 32 != 0)
        ::emu::fail("%s (%s:%d): pointer %p is not 256-bit (32-byte) aligned", what, file, line, ptr);
    if ((ldm * bytes) % 16 != 0)
        ::emu::fail("%s (%s:%d): ldm %u is not a multiple of 16 bytes (%zu-byte elements)", what, file, line, ldm, bytes);
}

// Element i of the calling lane: its index in memory.
inline size_t element_index(const Permutation& map, int i, unsigned ldm, int layout) {
    const int p = map.pos[::emu::this_thread().lane * ELEMENTS + i], r = p / 16, c = p % 16;
    return layout == 0 ? (size_t)r * ldm + c : (size_t)c * ldm + r;
}

template <typename T>
inline void load(const char* what, T* x, const T* ptr, unsigned ldm, int layout, const Permutation& map,
                 const char* file, int line) {
    check_pointer(what, ptr, ldm, sizeof(T), file, line);
    for (int i = 0; i < ELEMENTS; i++) x[i] = ptr[element_index(map, i, ldm, layout)];
    MemLane lane{ptr, ldm, layout};
    ::emu::warp_collective(what, 0xffffffffu, file, line, &lane, check_same, what, false);
}

template <typename T>
inline void store(const char* what, T* ptr, const T* x, unsigned ldm, int layout, const Permutation& map,
                  const char* file, int line) {
    check_pointer(what, ptr, ldm, sizeof(T), file, line);
    MemLane lane{ptr, ldm, layout};
    ::emu::warp_collective(what, 0xffffffffu, file, line, &lane, check_same, what, false);
    for (int i = 0; i < ELEMENTS; i++) ptr[element_index(map, i, ldm, layout)] = x[i];
}

}  // namespace emu_detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulated WMMA has the m16n16k16 shape only");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<Layout, void>::value && std::is_same<T, float>::value
                                                        : !std::is_same<Layout, void>::value,
                  "emulated WMMA: accumulators are float without a layout; matrix_a and matrix_b need row_major or "
                  "col_major");

  public:
    typedef T element_type;
    typedef T storage_element_type;
    enum { num_elements = emu_detail::ELEMENTS };
    T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& v) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}
template <typename Use, int M, int N, int K, typename T, typename Layout, typename V,
          typename = std::enable_if_t<!std::is_same<T, V>::value>>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& v) {
    fill_fragment(f, emu_detail::from_float<T>((float)v));
}

// matrix_a / matrix_b: element (r, c) of the tile at p[r * ldm + c] (row_major) or p[c * ldm + r] (col_major).
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator's load_matrix_sync takes a layout_t");
    emu_detail::load("wmma::load_matrix_sync", f.x, p, ldm, std::is_same<Layout, col_major>::value,
                     emu_detail::Mapping<Use, Layout>::map, file, line);
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu_detail::load("wmma::load_matrix_sync", f.x, p, ldm, layout == mem_col_major,
                     emu_detail::Mapping<accumulator, void>::map, file, line);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu_detail::store("wmma::store_matrix_sync", p, f.x, ldm, layout == mem_col_major,
                      emu_detail::Mapping<accumulator, void>::map, file, line);
}

namespace emu_detail {

struct MmaLane {
    float* d;
    const void* a;
    const void* b;
    const float* c;
};
struct MmaOp {
    const Permutation* a_map;
    const Permutation* b_map;
    float (*element)(const void* x, int i);
};
template <typename T>
float element_as_float(const void* x, int i) { return to_float(((const T*)x)[i]); }

inline void mma_complete(void* const* lanes, unsigned, const void* context) {
    const MmaOp& op = *(const MmaOp*)context;
    const Permutation& acc = Mapping<accumulator, void>::map;
    float A[16][16], B[16][16], C[16][16];
    for (int l = 0; l < 32; l++) {
        const MmaLane* me = (const MmaLane*)lanes[l];
        for (int i = 0; i < ELEMENTS; i++) {
            const int e = l * ELEMENTS + i;
            A[op.a_map->pos[e] / 16][op.a_map->pos[e] % 16] = op.element(me->a, i);
            B[op.b_map->pos[e] / 16][op.b_map->pos[e] % 16] = op.element(me->b, i);
            C[acc.pos[e] / 16][acc.pos[e] % 16] = me->c[i];
        }
    }
    // every input gathered before any output is written: d may be c (mma_sync(c, a, b, c))
    for (int l = 0; l < 32; l++) {
        const MmaLane* me = (const MmaLane*)lanes[l];
        for (int i = 0; i < ELEMENTS; i++) {
            const int r = acc.pos[l * ELEMENTS + i] / 16, c = acc.pos[l * ELEMENTS + i] % 16;
            float sum = 0.0f;
            for (int k = 0; k < 16; k++) sum += A[r][k] * B[k][c];  // each product exact in fp32
            me->d[i] = sum + C[r][c];
        }
    }
}

}  // namespace emu_detail

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LayoutA>& a,
                     const fragment<matrix_b, M, N, K, T, LayoutB>& b, const fragment<accumulator, M, N, K, float>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value,
                  "emulated wmma::mma_sync: bf16 or fp16 inputs");
    static const emu_detail::MmaOp op{&emu_detail::Mapping<matrix_a, LayoutA>::map,
                                      &emu_detail::Mapping<matrix_b, LayoutB>::map, emu_detail::element_as_float<T>};
    emu_detail::MmaLane lane{d.x, a.x, b.x, c.x};
    // d is written only after every lane's c has been read (the completion runs once, for all lanes)
    ::emu::warp_collective("wmma::mma_sync", 0xffffffffu, file, line, &lane, emu_detail::mma_complete, &op, false);
}

}  // namespace wmma
}  // namespace nvcuda
