// cuBLASLt on the CPU: the handles, descriptors, layouts, preferences, heuristic and matmul that the
// project calls (kernels/matmul.cuh, dev/common.cuh), plus cublasGetStatusString (kernels/common.cuh).
// Declarations come from NVIDIA's cublasLt.h / cublas_api.h; this file defines them, extern "C".
// References below are to the cuBLAS documentation, section "Using the cuBLASLt API"
// (docs.nvidia.com/cuda/cublas, "cublasLtMatmul()", "cublasLtMatmulDescAttributes_t",
// "cublasLtMatrixLayoutAttribute_t", "cublasLtMatmulPreferenceAttributes_t", "cublasLtMatmulAlgoCapAttributes_t")
// and to the comments of cublasLt.h, which repeat it.
//
// What is emulated:
//   D = alpha * op(A) op(B) + beta * C, column-major, leading dimensions and transposes (N or T) as
//   cuBLASLt defines them; compute type CUBLAS_COMPUTE_32F, scale type CUDA_R_32F; A and B both bf16
//   with C = D bf16 or fp32, or all four fp32. Each element of D is one fp32 sum over k in order
//   (fp32 multiply-add, one rounding per step, as FFMA; bf16 products are exact in fp32), then
//   alpha * sum + beta * C in fp32, rounded once to D's type. With beta == 0, C is not read.
//   The product is queued on the given stream (emu::submit) and runs when the host waits for it;
//   alpha and beta (host pointers) are read at the call, everything else is copied into the work.
// What is refused, with CUBLAS_STATUS_NOT_SUPPORTED (never silently ignored): every other compute,
//   scale or matrix type; descriptor attributes other than TRANSA/TRANSB (N or T), EPILOGUE (DEFAULT
//   only) and POINTER_MODE (HOST only); preference attributes other than MAX_WORKSPACE_BYTES,
//   REDUCTION_SCHEME_MASK and MIN_ALIGNMENT_{A,B,C,D}_BYTES; algorithm configurations other than
//   SPLITK_NUM and REDUCTION_SCHEME, and running a split-K configuration (see the heuristic's rule).
//   Functions the project does not call (cublasLtMatrixLayoutSetAttribute: batches and row-major
//   orders; the Get/Init functions) are not defined, so a new use fails to link instead of running
//   unemulated.
// Environment, to run the callers' rarer paths (kernels/matmul.cuh's timed choice and fallback):
//   EMU_CUBLASLT_ALGORITHMS=N        the heuristic offers N algorithms (default 1); the i-th (from 0)
//                                    sums k in i + 1 parts (see MatmulWork), so they differ in the last bits
//   EMU_CUBLASLT_FASTEST=I           every algorithm but the I-th takes 50 ms longer per product (far
//                                    above an emulated product's few ms and their noise), so that a
//                                    timed choice (kernels/matmul.cuh) picks the I-th
//   EMU_CUBLASLT_SPLIT_K_ONLY=MxNxK,...  for D (M x N) with that k the heuristic offers only split-K
//                                    algorithms that add their parts in D's type (see below)
// What is checked more strictly than the GPU would (CUBLAS_STATUS_INVALID_VALUE and a line on
//   stderr, where the GPU would fault or compute garbage): A, B, C and D inside live cudaMalloc
//   allocations (emu::is_device_range), D overlapping A or B, C and D partly overlapping, pointers or
//   leading dimensions less aligned than the algorithm from the heuristic requires, destroyed or
//   foreign descriptors; a workspace outside a live allocation, or given to a product on one stream
//   while one on another stream that had it has not run (the emulated algorithms use none, but a
//   GPU's may, and products on two streams may run at once there and overwrite each other's: one
//   workspace per stream, as PyTorch keeps one per handle and stream).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>
#include "stream.h"

namespace {

// ----------------------------------------------------------------------------
// The objects behind the opaque handles, and a registry of the live ones, so that a destroyed or
// foreign handle is an error instead of a read of freed memory.

struct Handle {};

struct MatmulDesc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;  // defaults: cublasLt.h, TRANSA/TRANSB
};

struct Layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    bool operator==(const Layout& o) const { return type == o.type && rows == o.rows && cols == o.cols && ld == o.ld; }
};

enum Matrix { MAT_A, MAT_B, MAT_C, MAT_D };

struct Preference {
    uint64_t max_workspace = 0;                         // default: 0, no workspace
    uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;  // default: every scheme
    uint32_t min_alignment[4] = {256, 256, 256, 256};   // default: 256 bytes for each matrix
};

// The emulated algorithm, stored in cublasLtMatmulAlgo_t::data: a tag, the alignment in bytes it
// needs of each matrix's pointer and leading dimension (CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_*_BYTES), its
// configuration's number of k parts and reduction scheme (CUBLASLT_ALGO_CONFIG_SPLITK_NUM, default 1,
// and _REDUCTION_SCHEME, default NONE), and its rank in the heuristic's answer, its variant, which
// sets how each sum runs over k (MatmulWork).
constexpr uint64_t ALGO_TAG = 0x454d552d4c544d4dull;  // "EMU-LTMM"
struct Algo {
    uint64_t tag;
    uint32_t alignment[4];
    int32_t split_k;
    uint32_t reduction;
    uint32_t variant;
};
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "the algorithm fits cuBLASLt's semi-opaque struct");

template <typename T>
struct Registry {
    std::mutex mutex;
    std::unordered_set<const void*> live;
};
template <typename T>
Registry<T>& registry() {
    static Registry<T> r;
    return r;
}
template <typename T>
T* create() {
    T* object = new T();
    Registry<T>& r = registry<T>();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.live.insert(object);
    return object;
}
template <typename T>
T* lookup(const void* p) {
    Registry<T>& r = registry<T>();
    std::lock_guard<std::mutex> lock(r.mutex);
    return p && r.live.count(p) ? (T*)p : nullptr;
}
template <typename T>
bool destroy(const void* p) {
    Registry<T>& r = registry<T>();
    {
        std::lock_guard<std::mutex> lock(r.mutex);
        if (!p || !r.live.erase(p)) return false;
    }
    delete (T*)p;
    return true;
}

// An error status with its reason on stderr.
cublasStatus_t refuse(cublasStatus_t status, const char* function, const char* format, ...)
    __attribute__((format(printf, 3, 4)));
cublasStatus_t refuse(cublasStatus_t status, const char* function, const char* format, ...) {
    fprintf(stderr, "emu cuBLASLt: %s: ", function);
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fprintf(stderr, " (%s)\n", cublasGetStatusString(status));
    return status;
}

// Attribute values are passed as a buffer whose size must be the attribute's ("CUBLAS_STATUS_INVALID_VALUE
// if buf is NULL or sizeInBytes doesn't match size of internal storage for selected attribute").
template <typename T>
bool read_attribute(const void* buf, size_t size, T* value) {
    if (!buf || size != sizeof(T)) return false;
    memcpy(value, buf, sizeof(T));
    return true;
}

size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_32F ? 4 : 2; }

// ----------------------------------------------------------------------------
// The problem: shapes and types, checked as cublasLtMatmul() documents them.

struct Operand {
    Layout layout;
    bool transposed;
    // op(X) has op_rows x op_cols.
    uint64_t op_rows() const { return transposed ? layout.cols : layout.rows; }
    uint64_t op_cols() const { return transposed ? layout.rows : layout.cols; }
};

struct Problem {
    Operand a, b;
    Layout c, d;
    int64_t m, n, k;
};

// The data types cublasLtMatmul() supports with CUBLAS_COMPUTE_32F and scale type CUDA_R_32F
// (documentation, cublasLtMatmul(), "Datatypes Supported"), limited to the ones emulated: A/B bf16
// with C/D bf16 or fp32, A/B fp32 with C/D fp32. C and D have the same type ("out-of-place ... both
// matrices must have the same data type").
bool types_emulated(const Problem& p) {
    if (p.a.layout.type != p.b.layout.type || p.c.type != p.d.type) return false;
    if (p.a.layout.type == CUDA_R_16BF) return p.d.type == CUDA_R_16BF || p.d.type == CUDA_R_32F;
    return p.a.layout.type == CUDA_R_32F && p.d.type == CUDA_R_32F;
}

// Fills *p from the descriptors, or returns why the problem is impossible.
cublasStatus_t make_problem(const char* function, const MatmulDesc& desc, const Layout& a, const Layout& b,
                            const Layout& c, const Layout& d, Problem* p) {
    p->a = {a, desc.trans_a == CUBLAS_OP_T};
    p->b = {b, desc.trans_b == CUBLAS_OP_T};
    p->c = c;
    p->d = d;
    if (!types_emulated(*p))
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, function,
                      "types A %d, B %d, C %d, D %d: emulated are A = B bf16 with C = D bf16 or fp32, and all fp32",
                      (int)a.type, (int)b.type, (int)c.type, (int)d.type);
    // D (m x n) = op(A) (m x k) op(B) (k x n); C has D's shape (cublasLtMatmul(): "D = alpha*(A*B) + beta*(C)").
    if (p->a.op_rows() != d.rows || p->b.op_cols() != d.cols || p->a.op_cols() != p->b.op_rows() ||
        c.rows != d.rows || c.cols != d.cols)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, function,
                      "shapes do not chain: op(A) %llu x %llu, op(B) %llu x %llu, C %llu x %llu, D %llu x %llu",
                      (unsigned long long)p->a.op_rows(), (unsigned long long)p->a.op_cols(),
                      (unsigned long long)p->b.op_rows(), (unsigned long long)p->b.op_cols(),
                      (unsigned long long)c.rows, (unsigned long long)c.cols, (unsigned long long)d.rows,
                      (unsigned long long)d.cols);
    // CUBLASLT_MATRIX_LAYOUT_LD: "must be large enough so that matrix memory locations are not
    // overlapping (e.g. greater or equal to CUBLASLT_MATRIX_LAYOUT_ROWS in case of CUBLASLT_ORDER_COL)".
    for (const Layout* l : {&a, &b, &c, &d})
        if (l->ld < 1 || (uint64_t)l->ld < l->rows)
            return refuse(CUBLAS_STATUS_INVALID_VALUE, function, "leading dimension %lld below the %llu rows",
                          (long long)l->ld, (unsigned long long)l->rows);
    const uint64_t limit = 1ull << 31;  // keeps index arithmetic in int64 and buffers sane
    if (d.rows >= limit || d.cols >= limit || p->a.op_cols() >= limit)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, function, "dimensions of 2^31 or more are not emulated");
    p->m = (int64_t)d.rows;
    p->n = (int64_t)d.cols;
    p->k = (int64_t)p->a.op_cols();
    return CUBLAS_STATUS_SUCCESS;
}

// ----------------------------------------------------------------------------
// The heuristic's rule.
//
// CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES is the alignment the caller promises for a matrix
// ("Selecting a smaller value will exclude algorithms that can not work with matrix A that is not as
// strictly aligned as they need"); an algorithm's CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_*_BYTES is what it
// needs "for buffer pointer, leading dimension, and possibly other strides". The emulated library has
// two variants of its one algorithm per matrix, as cuBLASLt has vectorized and element-wise kernels:
//   - 16 bytes (the tensor-core kernels' 128-bit loads), chosen when the promise is a multiple of 16
//     and the leading dimension is a multiple of 16 bytes (8 bf16, 4 fp32);
//   - otherwise the element's own size (2 bytes bf16, 4 fp32), when the promise is a multiple of it.
// No algorithm (returnedAlgoCount 0) when a promise is not a multiple of the element's size (e.g. a
// bf16 matrix at an odd address, or an fp32 one at 2 bytes): no cuBLASLt kernel reads misaligned
// elements. This is the rule kernels/matmul.cuh relies on: it tells the heuristic each pointer's
// actual alignment (pointer_alignment, down to 1 byte) and test/test_gpu_kernels.cu expects products
// at 2-byte-aligned bf16 pointers with leading dimensions like 12 and 1000 to be served, as cuBLASLt
// serves them since it takes alignment preferences (PyTorch #98975, Transformer Engine #845 rely on
// it); a 16-byte rule for all matrices would refuse those and the 1b preset's d_ffn 5461. Its "no
// algorithm" path exits; it runs here for matrices misaligned for their element type.
// The emulated algorithm never splits k (CUBLASLT_REDUCTION_SCHEME_NONE, which no mask excludes: the
// mask filters the split-K schemes, "INPLACE", "COMPUTE_TYPE" and "OUTPUT_TYPE") and needs no workspace;
// the heuristic offers EMU_CUBLASLT_ALGORITHMS variants of it (default 1).
// Except for the shapes of EMU_CUBLASLT_SPLIT_K_ONLY: there the heuristic offers only algorithms that
// split k in 2 parts added in D's type (CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE), as the real heuristic
// may rank only split-K configurations first for a long k, so a mask without OUTPUT_TYPE gets none.
// Such an algorithm set to one part (SPLITK_NUM 1, REDUCTION_SCHEME NONE) is the unsplit one and runs;
// with 2 parts cublasLtMatmulAlgoCheck and cublasLtMatmul refuse it (split-K is not emulated).

// The number of variants the heuristic offers (EMU_CUBLASLT_ALGORITHMS, 1 to 64).
int algorithm_variants() {
    const char* s = getenv("EMU_CUBLASLT_ALGORITHMS");
    const int n = s ? atoi(s) : 1;
    return n < 1 ? 1 : n > 64 ? 64 : n;
}

// Whether variant is slowed down (EMU_CUBLASLT_FASTEST names another one).
bool slowed(uint32_t variant) {
    const char* s = getenv("EMU_CUBLASLT_FASTEST");
    return s && *s && (uint32_t)atoi(s) != variant;
}

// Whether D (m x n) with k is in EMU_CUBLASLT_SPLIT_K_ONLY ("MxNxK,MxNxK,...").
bool split_k_only(const Problem& p) {
    const char* s = getenv("EMU_CUBLASLT_SPLIT_K_ONLY");
    while (s && *s) {
        long long m = 0, n = 0, k = 0;
        if (sscanf(s, "%lldx%lldx%lld", &m, &n, &k) == 3 && m == p.m && n == p.n && k == p.k) return true;
        s = strchr(s, ',');
        if (s) s++;
    }
    return false;
}

uint32_t needed_alignment(uint32_t promised, const Layout& layout) {
    const uint32_t element = (uint32_t)element_bytes(layout.type);
    if (promised == 0 || promised % element) return 0;
    if (promised % 16 == 0 && (layout.ld * element) % 16 == 0) return 16;
    return element;
}

// The algorithm for p under the promised alignments, or false.
bool choose_algo(const Problem& p, const uint32_t promised[4], Algo* algo) {
    const Layout* layouts[4] = {&p.a.layout, &p.b.layout, &p.c, &p.d};
    memset(algo, 0, sizeof(*algo));  // the padding too: callers compare and store the algorithm's bytes
    algo->tag = ALGO_TAG;
    algo->split_k = 1;
    algo->reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    algo->variant = 0;
    for (int i = 0; i < 4; i++) {
        algo->alignment[i] = needed_alignment(promised[i], *layouts[i]);
        if (!algo->alignment[i]) return false;
    }
    return true;
}

// ----------------------------------------------------------------------------
// The product on the CPU.

// The number of elements a column-major rows x cols matrix with leading dimension ld spans.
uint64_t span_elements(const Layout& l) { return l.rows && l.cols ? (l.cols - 1) * (uint64_t)l.ld + l.rows : 0; }
uint64_t span_bytes(const Layout& l) { return span_elements(l) * element_bytes(l.type); }

float load(const void* base, cudaDataType_t type, int64_t index) {
    if (type == CUDA_R_32F) return ((const float*)base)[index];
    return __bfloat162float(((const __nv_bfloat16*)base)[index]);
}

void store(void* base, cudaDataType_t type, int64_t index, float value) {
    if (type == CUDA_R_32F) ((float*)base)[index] = value;
    else ((__nv_bfloat16*)base)[index] = __float2bfloat16(value);  // round to nearest even, once
}

// op(X) as fp32, column-major and dense: element (r, c) of op(X) at out[c * rows + r]. Element (r, c)
// of op(X) is stored element (c, r) when X is transposed (CUBLASLT_MATMUL_DESC_TRANSA/B), and stored
// element (i, j) is at i + j * ld (CUBLASLT_ORDER_COL).
std::vector<float> gather(const void* x, const Operand& op) {
    const int64_t rows = (int64_t)op.op_rows(), cols = (int64_t)op.op_cols(), ld = op.layout.ld;
    std::vector<float> out((size_t)(rows * cols));
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = 0; r < rows; r++)
            out[(size_t)(c * rows + r)] = load(x, op.layout.type, op.transposed ? c + r * ld : r + c * ld);
    return out;
}

// acc[i] = acc[i] + a[i] * s for i < m: one step of every sum of a column of D, so each element's
// sum still runs over k in order while the m sums proceed side by side. Exact products (bf16 inputs:
// 8 x 8 significant bits fit in fp32's 24) make a multiply and an add the same as a fused
// multiply-add; fp32 inputs need the fused one (FFMA: one rounding), in hardware where the CPU has it.
void step_exact_products(float* __restrict acc, const float* __restrict a, float s, int64_t m) {
    for (int64_t i = 0; i < m; i++) acc[i] += a[i] * s;
}
#if defined(__x86_64__)
__attribute__((target("fma"))) void step_fma_hardware(float* __restrict acc, const float* __restrict a, float s,
                                                       int64_t m) {
    for (int64_t i = 0; i < m; i++) acc[i] = __builtin_fmaf(a[i], s, acc[i]);
}
const bool cpu_has_fma = __builtin_cpu_supports("fma");
#endif
void step_fma(float* __restrict acc, const float* __restrict a, float s, int64_t m) {
#if defined(__x86_64__)
    if (cpu_has_fma) return step_fma_hardware(acc, a, s, m);
#endif
    for (int64_t i = 0; i < m; i++) acc[i] = std::fma(a[i], s, acc[i]);
}

// The product. Algorithm variant v splits each element's sum over k into v + 1 consecutive parts
// (as equal as k allows), sums each in order from zero, and adds the parts in order, all in fp32: the
// order of a split-K reduced in the compute type. Variant 0 is the one sum over k in order; the
// others round differently in the last bits, as the real library's algorithms do.
struct MatmulWork {
    Problem p;
    float alpha, beta;
    const void *a, *b, *c;
    void* d;
    uint32_t variant;

    void operator()() const {
        if (slowed(variant)) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const std::vector<float> op_a = gather(a, p.a), op_b = gather(b, p.b);  // m x k and k x n
        const auto step = p.a.layout.type == CUDA_R_16BF ? step_exact_products : step_fma;
        const int64_t parts = std::min<int64_t>(variant + 1, std::max<int64_t>(p.k, 1));
        std::vector<float> sum((size_t)p.m), part((size_t)p.m);
        for (int64_t j = 0; j < p.n; j++) {
            for (int64_t q = 0; q < parts; q++) {
                float* acc = q == 0 ? sum.data() : part.data();
                std::fill(acc, acc + p.m, 0.0f);
                for (int64_t t = p.k * q / parts; t < p.k * (q + 1) / parts; t++)
                    step(acc, op_a.data() + t * p.m, op_b[(size_t)(j * p.k + t)], p.m);
                if (q > 0)
                    for (int64_t i = 0; i < p.m; i++) sum[(size_t)i] += part[(size_t)i];
            }
            for (int64_t i = 0; i < p.m; i++) {
                float result = alpha * sum[(size_t)i];
                // beta == 0: C is not read, so it need not hold valid data (cuBLAS, cublas<t>gemm: "If
                // beta == 0, C does not have to be a valid input"; matmul.cuh writes over poison so).
                if (beta != 0.0f) result = std::fma(beta, load(c, p.c.type, i + j * p.c.ld), result);
                store(d, p.d.type, i + j * p.d.ld, result);
            }
        }
    }
};

bool overlap(const void* x, uint64_t x_bytes, const void* y, uint64_t y_bytes) {
    const uintptr_t a = (uintptr_t)x, b = (uintptr_t)y;
    return x_bytes && y_bytes && a < b + y_bytes && b < a + x_bytes;
}

// The checks of cublasLtMatmul's pointers: inside device allocations, aligned as the algorithm
// needs, and D not overlapping what is read.
cublasStatus_t check_pointers(const Problem& p, const Algo& algo, const void* a, const void* b, const void* c,
                              const void* d, bool reads_c) {
    const char* f = "cublasLtMatmul";
    struct Item { const char* name; const void* ptr; const Layout* layout; uint32_t alignment; bool used; };
    const Item items[4] = {{"A", a, &p.a.layout, algo.alignment[MAT_A], p.k > 0},
                           {"B", b, &p.b.layout, algo.alignment[MAT_B], p.k > 0},
                           {"C", c, &p.c, algo.alignment[MAT_C], reads_c},
                           {"D", d, &p.d, algo.alignment[MAT_D], true}};
    for (const Item& it : items) {
        const uint64_t bytes = span_bytes(*it.layout);
        if (!it.used || !bytes) continue;
        if (!emu::is_device_range(it.ptr, bytes))
            return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "%s [%p, +%llu bytes) is not inside one device allocation",
                          it.name, it.ptr, (unsigned long long)bytes);
        // CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_*_BYTES: "required for buffer pointer, leading dimension".
        if ((uintptr_t)it.ptr % it.alignment || (it.layout->ld * element_bytes(it.layout->type)) % it.alignment)
            return refuse(CUBLAS_STATUS_INVALID_VALUE, f,
                          "%s at %p with leading dimension %lld is not aligned to the %u bytes its algorithm needs "
                          "(the heuristic was promised more alignment than the pointer has)",
                          it.name, it.ptr, (long long)it.layout->ld, it.alignment);
    }
    const uint64_t d_bytes = span_bytes(p.d);
    if (p.k > 0 && (overlap(d, d_bytes, a, span_bytes(p.a.layout)) || overlap(d, d_bytes, b, span_bytes(p.b.layout))))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "D overlaps A or B: the result is undefined on a GPU");
    // "in-place matrix multiplication (C == D and Cdesc == Ddesc) and out-of-place matrix
    // multiplication (C != D, both matrices must have the same data type, number of rows, number of
    // columns, batch size, and memory order)". Partly overlapping C and D are neither.
    if (reads_c && c == d && !(p.c == p.d))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "in place (C == D) with different C and D layouts");
    if (reads_c && c != d && overlap(c, span_bytes(p.c), d, d_bytes))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "C and D overlap without being the same matrix");
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

// ----------------------------------------------------------------------------
// The C API.

extern "C" {

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = reinterpret_cast<cublasLtHandle_t>(create<Handle>());
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t handle) {
    return destroy<Handle>(handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

// Compute and scale types: see types_emulated.
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                                     cudaDataType_t scale) {
    if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulDescCreate",
                      "compute type %d, scale type %d: only CUBLAS_COMPUTE_32F with CUDA_R_32F is emulated",
                      (int)compute, (int)scale);
    MatmulDesc* d = create<MatmulDesc>();
    d->compute = compute;
    d->scale = scale;
    *desc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    return destroy<MatmulDesc>(desc) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

// TRANSA/TRANSB: int32_t cublasOperation_t; N and T emulated (CUBLAS_OP_C, the conjugate transpose,
// is refused). EPILOGUE: uint32_t, only CUBLASLT_EPILOGUE_DEFAULT. POINTER_MODE: int32_t, only
// CUBLASLT_POINTER_MODE_HOST.
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t size) {
    const char* f = "cublasLtMatmulDescSetAttribute";
    MatmulDesc* d = lookup<MatmulDesc>(desc);
    if (!d) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "not a live matmul descriptor");
    int32_t i32 = 0;
    uint32_t u32 = 0;
    switch (attr) {
        case CUBLASLT_MATMUL_DESC_TRANSA:
        case CUBLASLT_MATMUL_DESC_TRANSB:
            if (!read_attribute(buf, size, &i32)) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "TRANSA/TRANSB is an int32_t");
            if (i32 != CUBLAS_OP_N && i32 != CUBLAS_OP_T)
                return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "operation %d: only CUBLAS_OP_N and CUBLAS_OP_T are emulated", i32);
            (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->trans_a : d->trans_b) = (cublasOperation_t)i32;
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_EPILOGUE:
            if (!read_attribute(buf, size, &u32)) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "EPILOGUE is a uint32_t");
            if (u32 != CUBLASLT_EPILOGUE_DEFAULT)
                return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "epilogue %u: only CUBLASLT_EPILOGUE_DEFAULT is emulated", u32);
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_POINTER_MODE:
            if (!read_attribute(buf, size, &i32)) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "POINTER_MODE is an int32_t");
            if (i32 != CUBLASLT_POINTER_MODE_HOST)
                return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "pointer mode %d: only CUBLASLT_POINTER_MODE_HOST is emulated", i32);
            return CUBLAS_STATUS_SUCCESS;
        default:
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "attribute %d is not emulated", (int)attr);
    }
}

// Only the column-major order (the default, CUBLASLT_ORDER_COL) and single matrices (batch count 1,
// the default) exist here: the attributes that change them are not emulated.
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
    if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
    if (type != CUDA_R_16BF && type != CUDA_R_32F)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatrixLayoutCreate",
                      "type %d: only CUDA_R_16BF and CUDA_R_32F are emulated", (int)type);
    Layout* l = create<Layout>();
    *l = {type, rows, cols, ld};
    *layout = reinterpret_cast<cublasLtMatrixLayout_t>(l);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    return destroy<Layout>(layout) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = reinterpret_cast<cublasLtMatmulPreference_t>(create<Preference>());
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    return destroy<Preference>(pref) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

// MAX_WORKSPACE_BYTES: uint64_t. REDUCTION_SCHEME_MASK: uint32_t within CUBLASLT_REDUCTION_SCHEME_MASK.
// MIN_ALIGNMENT_{A,B,C,D}_BYTES: uint32_t (see needed_alignment).
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t size) {
    const char* f = "cublasLtMatmulPreferenceSetAttribute";
    Preference* p = lookup<Preference>(pref);
    if (!p) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "not a live preference");
    switch (attr) {
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
            if (!read_attribute(buf, size, &p->max_workspace))
                return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "MAX_WORKSPACE_BYTES is a uint64_t");
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: {
            uint32_t mask = 0;
            if (!read_attribute(buf, size, &mask) || (mask & ~(uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK))
                return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "REDUCTION_SCHEME_MASK is a uint32_t within 0x7");
            p->reduction_mask = mask;
            return CUBLAS_STATUS_SUCCESS;
        }
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
            if (!read_attribute(buf, size, &p->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES]))
                return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "MIN_ALIGNMENT_*_BYTES is a uint32_t");
            return CUBLAS_STATUS_SUCCESS;
        default:
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "attribute %d is not emulated", (int)attr);
    }
}

// One algorithm, needing no workspace, or none (see needed_alignment). "CUBLAS_STATUS_INVALID_VALUE
// if requestedAlgoCount is less or equal to zero".
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a_desc, cublasLtMatrixLayout_t b_desc,
                                                           cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                                                           cublasLtMatmulPreference_t pref, int requested,
                                                           cublasLtMatmulHeuristicResult_t results[], int* returned) {
    const char* f = "cublasLtMatmulAlgoGetHeuristic";
    if (!lookup<Handle>(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, f, "not a live handle");
    const MatmulDesc* d = lookup<MatmulDesc>(desc);
    const Layout *a = lookup<Layout>(a_desc), *b = lookup<Layout>(b_desc), *c = lookup<Layout>(c_desc),
                 *dd = lookup<Layout>(d_desc);
    const Preference* p = lookup<Preference>(pref);
    if (!d || !a || !b || !c || !dd || !p) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "a descriptor is not live");
    if (requested <= 0 || !results || !returned)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "requestedAlgoCount %d, results or count null", requested);
    Problem problem;
    const cublasStatus_t status = make_problem(f, *d, *a, *b, *c, *dd, &problem);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    *returned = 0;
    Algo algo;
    if (!choose_algo(problem, p->min_alignment, &algo)) return CUBLAS_STATUS_SUCCESS;
    if (split_k_only(problem)) {
        algo.split_k = 2;
        algo.reduction = CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
        if (!(p->reduction_mask & algo.reduction)) return CUBLAS_STATUS_SUCCESS;
    }
    const int offered = std::min(requested, algorithm_variants());
    for (int i = 0; i < offered; i++) {
        cublasLtMatmulHeuristicResult_t& r = results[i];
        memset(&r, 0, sizeof(r));
        algo.variant = (uint32_t)i;
        memcpy(&r.algo, &algo, sizeof(algo));
        r.workspaceSize = 0;
        r.state = CUBLAS_STATUS_SUCCESS;
        r.wavesCount = 1.0f;
    }
    *returned = offered;
    return CUBLAS_STATUS_SUCCESS;
}

// SPLITK_NUM: int32_t, at least 1. REDUCTION_SCHEME: uint32_t, one scheme (NONE, INPLACE,
// COMPUTE_TYPE or OUTPUT_TYPE). Other attributes are not emulated.
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoConfigSetAttribute(cublasLtMatmulAlgo_t* algo_p,
                                                                 cublasLtMatmulAlgoConfigAttributes_t attr,
                                                                 const void* buf, size_t size) {
    const char* f = "cublasLtMatmulAlgoConfigSetAttribute";
    Algo algo;
    if (!algo_p) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "algo is null");
    memcpy(&algo, algo_p, sizeof(algo));
    if (algo.tag != ALGO_TAG) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "algo is not from cublasLtMatmulAlgoGetHeuristic");
    switch (attr) {
        case CUBLASLT_ALGO_CONFIG_SPLITK_NUM:
            if (!read_attribute(buf, size, &algo.split_k) || algo.split_k < 1)
                return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "SPLITK_NUM is an int32_t of at least 1");
            break;
        case CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME:
            if (!read_attribute(buf, size, &algo.reduction) || (algo.reduction & (algo.reduction - 1)) ||
                (algo.reduction & ~(uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK))
                return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "REDUCTION_SCHEME is a uint32_t naming one scheme");
            break;
        default:
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "configuration attribute %d is not emulated", (int)attr);
    }
    memcpy(algo_p, &algo, sizeof(algo));
    return CUBLAS_STATUS_SUCCESS;
}

// The configured algorithm for the problem: one part of k and no reduction, or one split with a
// reduction scheme (refused: split-K is not emulated); the alignments are checked at cublasLtMatmul,
// where the pointers are known ("CUBLAS_STATUS_SUCCESS doesn't fully guarantee algo will run (will
// fail if e.g. buffers are not correctly aligned)").
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoCheck(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                    cublasLtMatrixLayout_t a_desc, cublasLtMatrixLayout_t b_desc,
                                                    cublasLtMatrixLayout_t c_desc, cublasLtMatrixLayout_t d_desc,
                                                    const cublasLtMatmulAlgo_t* algo_p,
                                                    cublasLtMatmulHeuristicResult_t* result) {
    const char* f = "cublasLtMatmulAlgoCheck";
    if (!lookup<Handle>(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, f, "not a live handle");
    const MatmulDesc* d = lookup<MatmulDesc>(desc);
    const Layout *a = lookup<Layout>(a_desc), *b = lookup<Layout>(b_desc), *c = lookup<Layout>(c_desc),
                 *dd = lookup<Layout>(d_desc);
    if (!d || !a || !b || !c || !dd || !algo_p || !result)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "a descriptor is not live, or algo or result is null");
    Algo algo;
    memcpy(&algo, algo_p, sizeof(algo));
    if (algo.tag != ALGO_TAG) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "algo is not from cublasLtMatmulAlgoGetHeuristic");
    Problem problem;
    const cublasStatus_t status = make_problem(f, *d, *a, *b, *c, *dd, &problem);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    if ((algo.split_k == 1) != (algo.reduction == CUBLASLT_REDUCTION_SCHEME_NONE))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "%d parts of k with reduction scheme %u", algo.split_k, algo.reduction);
    if (algo.split_k > 1) return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "split-K (%d parts) is not emulated", algo.split_k);
    memset(result, 0, sizeof(*result));
    memcpy(&result->algo, &algo, sizeof(algo));
    result->workspaceSize = 0;
    result->state = CUBLAS_STATUS_SUCCESS;
    result->wavesCount = 1.0f;
    return CUBLAS_STATUS_SUCCESS;
}

// D = alpha op(A) op(B) + beta C, queued on stream. algo null: "an implicit heuristics query with
// default search preferences will be performed" (cublasLtMatmul()), i.e. 256-byte alignments.
cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                           const void* a, cublasLtMatrixLayout_t a_desc, const void* b,
                                           cublasLtMatrixLayout_t b_desc, const void* beta, const void* c,
                                           cublasLtMatrixLayout_t c_desc, void* d, cublasLtMatrixLayout_t d_desc,
                                           const cublasLtMatmulAlgo_t* algo_in, void* workspace, size_t workspace_bytes,
                                           cudaStream_t stream) {
    const char* f = "cublasLtMatmul";
    // The emulated algorithm needs no workspace (workspaceSize 0 from the heuristic); its use is checked:
    // by allocation, the last product given it (its stream, and the queued item to see if it has run).
    struct WorkspaceUse {
        cudaStream_t stream;
        emu::Ticket product;
    };
    static std::map<uint64_t, WorkspaceUse> last_use;
    uint64_t workspace_id = 0;  // 0: no workspace given
    if (workspace && workspace_bytes) {
        workspace_id = emu::allocation_id(workspace, workspace_bytes);
        if (!workspace_id) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "the workspace is not inside a live cudaMalloc allocation");
        const auto last = last_use.find(workspace_id);
        if (last != last_use.end() && last->second.stream != stream && !emu::ticket_done(last->second.product))
            return refuse(CUBLAS_STATUS_INVALID_VALUE, f,
                          "the workspace at %p was given to a product on stream %p that has not run yet, and now to "
                          "one on stream %p: on a GPU the two may run at once and overwrite each other's (one "
                          "workspace per stream)", workspace, (void*)last->second.stream, (void*)stream);
    }
    if (!lookup<Handle>(handle)) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, f, "not a live handle");
    const MatmulDesc* desc_p = lookup<MatmulDesc>(desc);
    const Layout *la = lookup<Layout>(a_desc), *lb = lookup<Layout>(b_desc), *lc = lookup<Layout>(c_desc),
                 *ld = lookup<Layout>(d_desc);
    if (!desc_p || !la || !lb || !lc || !ld) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "a descriptor is not live");
    if (!alpha || !beta) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "alpha or beta is null");
    Problem problem;
    cublasStatus_t status = make_problem(f, *desc_p, *la, *lb, *lc, *ld, &problem);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    Algo algo;
    if (algo_in) {
        memcpy(&algo, algo_in, sizeof(algo));
        if (algo.tag != ALGO_TAG) return refuse(CUBLAS_STATUS_INVALID_VALUE, f, "algo is not from cublasLtMatmulAlgoGetHeuristic");
        if (algo.split_k != 1 || algo.reduction != CUBLASLT_REDUCTION_SCHEME_NONE)
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "split-K (%d parts, reduction scheme %u) is not emulated",
                          algo.split_k, algo.reduction);
    } else if (!choose_algo(problem, Preference().min_alignment, &algo) || split_k_only(problem)) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, f, "no algorithm for the default preferences");
    }
    // Scale type CUDA_R_32F, pointer mode host: alpha and beta are floats read now.
    MatmulWork work{problem, *(const float*)alpha, *(const float*)beta, a, b, c, d, algo.variant};
    status = check_pointers(problem, algo, a, b, c, d, work.beta != 0.0f);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    if (problem.m == 0 || problem.n == 0) return CUBLAS_STATUS_SUCCESS;
    emu::Ticket ticket;
    const cudaError_t err = emu::submit(stream, "cublasLtMatmul", work, {}, &ticket);
    if (err == cudaSuccess && workspace_id) last_use[workspace_id] = {stream, ticket};
    // A launch the runtime refuses (e.g. on the legacy stream during a capture): "CUBLAS_STATUS_EXECUTION_FAILED
    // if cuda reported execution error from the device".
    if (err != cudaSuccess)
        return refuse(CUBLAS_STATUS_EXECUTION_FAILED, f, "the stream refused the work: %s", cudaGetErrorString(err));
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
