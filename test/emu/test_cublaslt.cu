// The emulated cuBLASLt (emu/cublaslt.cpp) against a double reference: every layout the trainer's
// products use (kernels/matmul.cuh: forward T,N; weight gradient N,T with fp32 D and beta 1; input
// gradient N,N), every other transpose pair, bf16 and fp32, beta 0 and 1, odd and fused (q|k|v,
// gate|up) shapes; the heuristic's "no algorithm" answer; the stream semantics; what is refused.
// Then kernels/matmul.cuh itself on the emulation's rarer answers: a heuristic that offers several
// algorithms (the timed choice, a recorded one, rank 0's through matmul_agreement) and one that offers
// only split-K reduced in bf16 for a shape (the fallback to unsplit algorithms).
//
// Tolerance, per element (derived, not calibrated). The emulation computes s = sum over k in order
// with an fp32 multiply-add (one rounding each), r = fma(beta, c, alpha * s) (two roundings), then
// rounds r once to D's type. With u = 2^-24 and S = |alpha| sum |a b| + |beta c| (the sum of the
// magnitudes, in double), the classic recursive-summation bound gives
//     |r - exact| <= gamma(k + 2) S,   gamma(n) = n u / (1 - n u),
// and D in bf16 adds the rounding of r, at most 2^-8 |r| (8 significant bits, round to nearest):
//     |d - exact| <= gamma(k + 2) S + 2^-8 (|exact| + gamma(k + 2) S).
// Inputs are random magnitudes in [0.25, 1] with random signs (never zero), rounded to their type
// first, so the reference sees the values the emulation reads. The planted bugs below (an operand
// read transposed the wrong way, a leading dimension ignored, a sum accumulated in bf16) break this
// bound by orders of magnitude; a correct fp32 sum cannot.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include "../catch_compat.h"
#include "../../core/rng.h"
#include "../../kernels/matmul.cuh"

namespace {

// ----------------------------------------------------------------------------
// Host matrices and device buffers

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

float round_to(cudaDataType_t t, float x) { return t == CUDA_R_32F ? x : __bfloat162float(__float2bfloat16(x)); }

// A column-major rows x cols matrix with leading dimension ld, its values held as floats (exactly
// representable in type); the padding rows between ld and rows are random too.
struct HostMatrix {
    cudaDataType_t type;
    int rows, cols, ld;
    std::vector<float> v;
    float at(int i, int j) const { return v[(size_t)i + (size_t)j * ld]; }
};

float random_value(Rng& rng) {
    const double magnitude = 0.25 + 0.75 * rng.uniform();
    return (float)(rng.uniform() < 0.5 ? -magnitude : magnitude);
}

HostMatrix random_matrix(cudaDataType_t type, int rows, int cols, Rng& rng, int ld = 0) {
    HostMatrix m{type, rows, cols, ld ? ld : rows, {}};
    m.v.resize((size_t)m.ld * cols);
    for (float& x : m.v) x = round_to(type, random_value(rng));
    return m;
}

std::vector<unsigned char> encode(const HostMatrix& m) {
    std::vector<unsigned char> bytes(m.v.size() * type_bytes(m.type));
    for (size_t i = 0; i < m.v.size(); i++) {
        if (m.type == CUDA_R_32F) memcpy(&bytes[i * 4], &m.v[i], 4);
        else {
            const __nv_bfloat16 b = __float2bfloat16(m.v[i]);
            memcpy(&bytes[i * 2], &b, 2);
        }
    }
    return bytes;
}

std::vector<float> decode(const std::vector<unsigned char>& bytes, cudaDataType_t type) {
    std::vector<float> v(bytes.size() / type_bytes(type));
    for (size_t i = 0; i < v.size(); i++) {
        if (type == CUDA_R_32F) memcpy(&v[i], &bytes[i * 4], 4);
        else {
            __nv_bfloat16 b;
            memcpy(&b, &bytes[i * 2], 2);
            v[i] = __bfloat162float(b);
        }
    }
    return v;
}

// cudaMalloc'd bytes, freed at scope end; `offset` bytes in, to misalign the matrix on purpose.
struct DeviceBytes {
    unsigned char* base = nullptr;
    size_t offset, bytes;
    DeviceBytes(size_t bytes_, size_t offset_ = 0) : offset(offset_), bytes(bytes_) {
        REQUIRE(cudaMalloc((void**)&base, bytes + offset + 16) == cudaSuccess);
    }
    ~DeviceBytes() { cudaFree(base); }
    DeviceBytes(const DeviceBytes&) = delete;
    unsigned char* ptr() const { return base + offset; }
    void upload(const std::vector<unsigned char>& host) {
        REQUIRE(host.size() <= bytes);
        REQUIRE(cudaMemcpy(ptr(), host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    void poison() { REQUIRE(cudaMemset(ptr(), 0xFF, bytes) == cudaSuccess); }  // NaN in bf16 and fp32
    std::vector<unsigned char> download() const {
        std::vector<unsigned char> host(bytes);
        REQUIRE(cudaMemcpy(host.data(), ptr(), bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        return host;
    }
};

// ----------------------------------------------------------------------------
// The reference and the bound

struct Product {
    bool ta, tb;
    float alpha, beta;
    const HostMatrix *a, *b, *c;
    int m() const { return ta ? a->cols : a->rows; }
    int k() const { return ta ? a->rows : a->cols; }
    int n() const { return tb ? b->rows : b->cols; }
    float op_a(int i, int p) const { return ta ? a->at(p, i) : a->at(i, p); }
    float op_b(int p, int j) const { return tb ? b->at(j, p) : b->at(p, j); }
};

constexpr double U32 = 0x1p-24, U16 = 0x1p-8;
double gamma(int n) { return n * U32 / (1 - n * U32); }

// How many elements of got (column-major m x n, leading dimension ld) are outside the bound of the
// header comment; worst is the largest error over its bound.
struct Verdict {
    long outside = 0;
    double worst = 0;
};
Verdict check_product(const Product& p, const std::vector<float>& got, int ld, cudaDataType_t d_type) {
    Verdict verdict;
    const double g = gamma(p.k() + 2);
    for (int j = 0; j < p.n(); j++)
        for (int i = 0; i < p.m(); i++) {
            double exact = 0, magnitude = 0;
            for (int t = 0; t < p.k(); t++) {
                const double prod = (double)p.op_a(i, t) * p.op_b(t, j);
                exact += prod;
                magnitude += std::fabs(prod);
            }
            exact *= p.alpha;
            magnitude *= std::fabs(p.alpha);
            if (p.beta != 0) {
                exact += (double)p.beta * p.c->at(i, j);
                magnitude += std::fabs((double)p.beta * p.c->at(i, j));
            }
            double bound = g * magnitude + 1e-12 * magnitude;
            if (d_type != CUDA_R_32F) bound += U16 * (std::fabs(exact) + g * magnitude);
            const double err = std::fabs((double)got[(size_t)i + (size_t)j * ld] - exact);
            if (!(err <= bound)) verdict.outside++;
            verdict.worst = std::max(verdict.worst, std::isfinite(err) ? err / bound : INFINITY);
        }
    return verdict;
}

// ----------------------------------------------------------------------------
// cuBLASLt calls

#define LT_CHECK(call) REQUIRE((call) == CUBLAS_STATUS_SUCCESS)

struct Lt {
    cublasLtHandle_t handle = nullptr;
    Lt() { LT_CHECK(cublasLtCreate(&handle)); }
    ~Lt() { cublasLtDestroy(handle); }
};

struct Desc {
    cublasLtMatmulDesc_t desc = nullptr;
    Desc(bool ta, bool tb) {
        LT_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t a = ta ? CUBLAS_OP_T : CUBLAS_OP_N, b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &a, sizeof(a)));
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &b, sizeof(b)));
    }
    ~Desc() { cublasLtMatmulDescDestroy(desc); }
};

struct LayoutHandle {
    cublasLtMatrixLayout_t layout = nullptr;
    LayoutHandle(cudaDataType_t type, int rows, int cols, int ld) {
        LT_CHECK(cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld));
    }
    ~LayoutHandle() { cublasLtMatrixLayoutDestroy(layout); }
};

struct Pref {
    cublasLtMatmulPreference_t pref = nullptr;
    Pref() { LT_CHECK(cublasLtMatmulPreferenceCreate(&pref)); }
    ~Pref() { cublasLtMatmulPreferenceDestroy(pref); }
    void set_u32(cublasLtMatmulPreferenceAttributes_t attr, uint32_t value) {
        LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
    }
};

// The heuristic as matmul.cuh's matmul_plan asks it: 32 MiB workspace, split-K reduced in fp32 only,
// each matrix's actual alignment (C is D). Returns the number of algorithms.
int heuristic(const Lt& lt, const Desc& desc, const LayoutHandle& a, const LayoutHandle& b, const LayoutHandle& d,
              const void* pa, const void* pb, const void* pd, cublasLtMatmulHeuristicResult_t* result) {
    Pref pref;
    const uint64_t workspace = 32u << 20;
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                  sizeof(workspace)));
    pref.set_u32(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    pref.set_u32(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, pointer_alignment(pa));
    pref.set_u32(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, pointer_alignment(pb));
    pref.set_u32(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, pointer_alignment(pd));
    pref.set_u32(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, pointer_alignment(pd));
    int found = -1;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt.handle, desc.desc, a.layout, b.layout, d.layout, d.layout, pref.pref, 1,
                                            result, &found));
    return found;
}

// Runs D = alpha op(A) op(B) + beta D (C is D, as in matmul.cuh) on the legacy stream, with each
// matrix `offset` elements into its allocation (as test_gpu_kernels.cu's OffsetMatrix), and returns
// D. Planted bugs: planted_flip_a gives cuBLASLt the other transposition of A; planted_b_ld, if not
// 0, describes B with that leading dimension instead of its own.
std::vector<float> run_product(const Lt& lt, const Product& p, const HostMatrix& d, size_t offset = 0,
                               bool planted_flip_a = false, int planted_b_ld = 0) {
    const bool ta = planted_flip_a ? !p.ta : p.ta;
    Desc desc(ta, p.tb);
    LayoutHandle la(p.a->type, p.a->rows, p.a->cols, p.a->ld);
    LayoutHandle lb(p.b->type, p.b->rows, p.b->cols, planted_b_ld ? planted_b_ld : p.b->ld);
    LayoutHandle ld(d.type, d.rows, d.cols, d.ld);
    DeviceBytes da(p.a->v.size() * type_bytes(p.a->type), offset * type_bytes(p.a->type)),
        db(p.b->v.size() * type_bytes(p.b->type), offset * type_bytes(p.b->type)),
        dd(d.v.size() * type_bytes(d.type), offset * type_bytes(d.type));
    da.upload(encode(*p.a));
    db.upload(encode(*p.b));
    if (p.beta != 0) dd.upload(encode(d));
    else dd.poison();  // beta 0: D is written, whatever it held (NaN here)
    cublasLtMatmulHeuristicResult_t result;
    REQUIRE(heuristic(lt, desc, la, lb, ld, da.ptr(), db.ptr(), dd.ptr(), &result) == 1);
    CHECK(result.workspaceSize == 0);
    CHECK(result.state == CUBLAS_STATUS_SUCCESS);
    LT_CHECK(cublasLtMatmul(lt.handle, desc.desc, &p.alpha, da.ptr(), la.layout, db.ptr(), lb.layout, &p.beta, dd.ptr(),
                            ld.layout, dd.ptr(), ld.layout, &result.algo, nullptr, 0, 0));
    REQUIRE(cudaStreamSynchronize(0) == cudaSuccess);
    return decode(dd.download(), d.type);
}

struct Types {
    cudaDataType_t in, out;
    const char* name;
};
const Types TYPES[] = {{CUDA_R_16BF, CUDA_R_16BF, "bf16 -> bf16"},
                       {CUDA_R_16BF, CUDA_R_32F, "bf16 -> fp32"},
                       {CUDA_R_32F, CUDA_R_32F, "fp32 -> fp32"}};

// A and B stored for op(A) (m x k) and op(B) (k x n), each with ld = rows + pad.
struct Operands {
    HostMatrix a, b, d;
};
Operands make_operands(const Types& types, int m, int n, int k, bool ta, bool tb, Rng& rng, int pad = 0) {
    Operands o;
    o.a = ta ? random_matrix(types.in, k, m, rng, k + pad) : random_matrix(types.in, m, k, rng, m + pad);
    o.b = tb ? random_matrix(types.in, n, k, rng, n + pad) : random_matrix(types.in, k, n, rng, k + pad);
    o.d = random_matrix(types.out, m, n, rng, m + pad);
    return o;
}

}  // namespace

// ----------------------------------------------------------------------------

TEST_CASE("cublasLtMatmul: every transpose pair, type and beta, within the fp32 bound") {
    Lt lt;
    Rng rng(2201);
    struct Shape { int m, n, k; };
    // Odd sizes; k = 1 and m = 1 edges; 36 x 21 x 12 is a q|k|v forward of C = 12 over 21 tokens.
    const Shape shapes[] = {{36, 21, 12}, {5, 7, 3}, {1, 9, 17}, {13, 1, 1}, {48, 30, 129}};
    for (const Types& types : TYPES)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (const float beta : {0.0f, 1.0f})
                    for (const Shape& s : shapes) {
                        INFO(types.name << " transa " << ta << " transb " << tb << " beta " << beta << " m " << s.m
                                        << " n " << s.n << " k " << s.k);
                        Operands o = make_operands(types, s.m, s.n, s.k, ta, tb, rng);
                        const Product p{(bool)ta, (bool)tb, 1.0f, beta, &o.a, &o.b, &o.d};
                        const std::vector<float> got = run_product(lt, p, o.d);
                        const Verdict v = check_product(p, got, o.d.ld, types.out);
                        CHECK(v.outside == 0);
                        CHECK(v.worst <= 1.0);
                    }
}

TEST_CASE("cublasLtMatmul: leading dimensions above the rows, alpha and beta other than 0 and 1") {
    Lt lt;
    Rng rng(2202);
    for (const Types& types : TYPES)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                INFO(types.name << " transa " << ta << " transb " << tb);
                Operands o = make_operands(types, 19, 11, 23, ta, tb, rng, 5);
                const Product p{(bool)ta, (bool)tb, 0.75f, -1.5f, &o.a, &o.b, &o.d};
                const std::vector<float> got = run_product(lt, p, o.d);
                CHECK(check_product(p, got, o.d.ld, types.out).outside == 0);
                // The padding rows of D are not written.
                for (int j = 0; j < o.d.cols; j++)
                    for (int i = o.d.rows; i < o.d.ld; i++) CHECK(got[(size_t)i + (size_t)j * o.d.ld] == o.d.at(i, j));
            }
}

TEST_CASE("cublasLtMatmul: the trainer's products as kernels/matmul.cuh lays them out") {
    // matmul_forward: out^T (OC, N) = W^T... A = W (C x OC stored, transposed), B = inp (C x N), beta 0.
    // matmul_backward: dW^T (C, OC) += inp (C x N) . dout^T (stored OC x N, transposed), fp32, beta 1;
    //                  dinp^T (C, N) = W (C x OC) . dout (OC x N), beta 0.
    // For OC in q|k|v (3C), the attention output (C), gate|up (2F), down (C from F) and the LM head (V),
    // in both builds' floatX, with matrices one element into their buffers (slices of a flat buffer:
    // 2-byte aligned bf16) too.
    Lt lt;
    Rng rng(2203);
    struct Model { int N, C, F, V; size_t offset; };
    const Model models[] = {{21, 12, 43, 101, 0}, {21, 12, 43, 101, 1}, {96, 128, 344, 1001, 0}};
    for (const cudaDataType_t floatx : {CUDA_R_16BF, CUDA_R_32F})
        for (const Model& md : models) {
            struct Linear { int in, out; const char* name; };
            const Linear linears[] = {{md.C, 3 * md.C, "q|k|v"}, {md.C, md.C, "attention out"},
                                      {md.C, 2 * md.F, "gate|up"}, {md.F, md.C, "down"}, {md.C, md.V, "LM head"}};
            for (const Linear& lin : linears) {
                const int N = md.N, C = lin.in, OC = lin.out;
                INFO((floatx == CUDA_R_32F ? "fp32" : "bf16") << " " << lin.name << " N " << N << " C " << C << " OC "
                                                              << OC << " offset " << md.offset);
                const HostMatrix W = random_matrix(floatx, C, OC, rng);     // row-major (OC, C)
                const HostMatrix inp = random_matrix(floatx, C, N, rng);    // row-major (N, C)
                const HostMatrix dout = random_matrix(floatx, OC, N, rng);  // row-major (N, OC)
                const HostMatrix out = random_matrix(floatx, OC, N, rng);
                const HostMatrix dW = random_matrix(CUDA_R_32F, C, OC, rng);
                const HostMatrix dinp = random_matrix(floatx, C, N, rng);
                const Product forward{true, false, 1.0f, 0.0f, &W, &inp, &out};
                const Product weight_grad{false, true, 1.0f, 1.0f, &inp, &dout, &dW};
                const Product input_grad{false, false, 1.0f, 0.0f, &W, &dout, &dinp};
                CHECK(check_product(forward, run_product(lt, forward, out, md.offset), out.ld, floatx).outside == 0);
                CHECK(check_product(weight_grad, run_product(lt, weight_grad, dW, md.offset), dW.ld, CUDA_R_32F).outside == 0);
                CHECK(check_product(input_grad, run_product(lt, input_grad, dinp, md.offset), dinp.ld, floatx).outside == 0);
            }
        }
}

TEST_CASE("planted bugs break the bound") {
    Lt lt;
    Rng rng(2204);
    for (const Types& types : TYPES) {
        INFO(types.name);
        // A square A read with the other transposition: the product of A^T instead of A.
        Operands o = make_operands(types, 40, 24, 40, true, false, rng);
        const Product p{true, false, 1.0f, 0.0f, &o.a, &o.b, &o.d};
        const Verdict flipped = check_product(p, run_product(lt, p, o.d, 0, true), o.d.ld, types.out);
        CHECK(flipped.outside > 40 * 24 / 2);
        CHECK(flipped.worst > 100);
        // B read as if dense (ld = rows) when its columns are 3 apart more: a leading dimension ignored.
        Operands padded = make_operands(types, 20, 12, 16, false, false, rng, 3);
        const Product q{false, false, 1.0f, 0.0f, &padded.a, &padded.b, &padded.d};
        const Verdict dense = check_product(q, run_product(lt, q, padded.d, 0, false, padded.b.rows), padded.d.ld, types.out);
        CHECK(dense.outside > 20 * 12 / 2);
        CHECK(dense.worst > 100);
    }
    // A sum accumulated in bf16 (rounded after each add), as a split-K reduction in the output type
    // would: outside the bound of a bf16 output for k = 512.
    const Types bf16{CUDA_R_16BF, CUDA_R_16BF, "bf16"};
    Operands o = make_operands(bf16, 16, 16, 512, false, false, rng);
    const Product p{false, false, 1.0f, 0.0f, &o.a, &o.b, &o.d};
    std::vector<float> bf16_sum((size_t)16 * 16);
    for (int j = 0; j < 16; j++)
        for (int i = 0; i < 16; i++) {
            float s = 0;
            for (int t = 0; t < 512; t++) s = round_to(CUDA_R_16BF, s + p.op_a(i, t) * p.op_b(t, j));
            bf16_sum[(size_t)i + (size_t)j * 16] = s;
        }
    const Verdict v = check_product(p, bf16_sum, 16, CUDA_R_16BF);
    CHECK(v.outside > 0);
    CHECK(v.worst > 2);
    // The emulation on the same inputs is inside.
    CHECK(check_product(p, run_product(lt, p, o.d), 16, CUDA_R_16BF).outside == 0);
}

TEST_CASE("cublasLtMatmul is queued: runs at the wait, with the alpha and beta of the call") {
    Lt lt;
    Rng rng(2205);
    const Types t{CUDA_R_32F, CUDA_R_32F, "fp32"};
    Operands o = make_operands(t, 8, 6, 5, false, false, rng);
    DeviceBytes da(o.a.v.size() * 4), db(o.b.v.size() * 4), dd(o.d.v.size() * 4);
    da.upload(encode(o.a));
    db.upload(encode(o.b));
    dd.upload(encode(o.d));
    cudaStream_t stream;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    float alpha = 2.0f, beta = 1.0f;
    {
        Desc desc(false, false);
        LayoutHandle la(CUDA_R_32F, 8, 5, 8), lb(CUDA_R_32F, 5, 6, 5), ld(CUDA_R_32F, 8, 6, 8);
        LT_CHECK(cublasLtMatmul(lt.handle, desc.desc, &alpha, da.ptr(), la.layout, db.ptr(), lb.layout, &beta, dd.ptr(),
                                ld.layout, dd.ptr(), ld.layout, nullptr, nullptr, 0, stream));
        // Nothing has run: D (device memory, host-addressable in the emulation) still holds C.
        CHECK(memcmp(dd.ptr(), encode(o.d).data(), dd.bytes) == 0);
    }  // descriptors destroyed before the product runs
    alpha = 100.0f;
    beta = 0.0f;
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const Product p{false, false, 2.0f, 1.0f, &o.a, &o.b, &o.d};
    CHECK(check_product(p, decode(dd.download(), CUDA_R_32F), 8, CUDA_R_32F).outside == 0);
    REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("cublasLtMatmulAlgoGetHeuristic: no algorithm for a matrix misaligned for its type") {
    // matmul.cuh tells the heuristic each pointer's alignment; a bf16 matrix at an odd address, or an
    // fp32 one at 2 bytes, has no algorithm (returnedAlgoCount 0: its "no algorithm" exit). 2-byte
    // aligned bf16 and leading dimensions that are no multiple of 16 bytes are served (by the
    // element-wise variant), as test/test_gpu_kernels.cu's offset-1 and C = 12 products expect.
    Lt lt;
    DeviceBytes buffer(1 << 16);
    unsigned char* base = buffer.ptr();
    REQUIRE(pointer_alignment(base) >= 16);
    cublasLtMatmulHeuristicResult_t result;
    Desc forward(true, false);
    LayoutHandle a16(CUDA_R_16BF, 12, 36, 12), b16(CUDA_R_16BF, 12, 21, 12), d16(CUDA_R_16BF, 36, 21, 36);
    LayoutHandle d32(CUDA_R_32F, 36, 21, 36);
    CHECK(heuristic(lt, forward, a16, b16, d16, base, base + 4096, base + 8192, &result) == 1);
    CHECK(heuristic(lt, forward, a16, b16, d16, base + 2, base + 4098, base + 8194, &result) == 1);
    CHECK(heuristic(lt, forward, a16, b16, d16, base + 1, base + 4096, base + 8192, &result) == 0);
    CHECK(heuristic(lt, forward, a16, b16, d16, base, base + 4097, base + 8192, &result) == 0);
    CHECK(heuristic(lt, forward, a16, b16, d16, base, base + 4096, base + 8193, &result) == 0);
    CHECK(heuristic(lt, forward, a16, b16, d32, base, base + 4096, base + 8196, &result) == 1);
    CHECK(heuristic(lt, forward, a16, b16, d32, base, base + 4096, base + 8194, &result) == 0);
    LayoutHandle a32(CUDA_R_32F, 12, 36, 12), b32(CUDA_R_32F, 12, 21, 12);
    CHECK(heuristic(lt, forward, a32, b32, d32, base + 4, base + 4096, base + 8192, &result) == 1);
    CHECK(heuristic(lt, forward, a32, b32, d32, base + 2, base + 4096, base + 8192, &result) == 0);

    // The algorithm carries the alignment it was chosen for: one chosen for 16-byte aligned matrices
    // with leading dimensions of 16 bytes (ld 8 in bf16) refuses a pointer that has only 2 bytes.
    LayoutHandle a8(CUDA_R_16BF, 8, 8, 8);
    Desc nn(false, false);
    REQUIRE(heuristic(lt, nn, a8, a8, a8, base, base + 4096, base + 8192, &result) == 1);
    const float alpha = 1, beta = 0;
    CHECK(cublasLtMatmul(lt.handle, nn.desc, &alpha, base + 2, a8.layout, base + 4096, a8.layout, &beta, base + 8192,
                         a8.layout, base + 8192, a8.layout, &result.algo, nullptr, 0, 0) == CUBLAS_STATUS_INVALID_VALUE);
    // Chosen for 2-byte alignment (ld 12: 24 bytes), the same offset pointer is fine.
    LayoutHandle a12(CUDA_R_16BF, 12, 12, 12);
    REQUIRE(heuristic(lt, nn, a12, a12, a12, base + 2, base + 4096, base + 8192, &result) == 1);
    CHECK(cublasLtMatmul(lt.handle, nn.desc, &alpha, base + 2, a12.layout, base + 4096, a12.layout, &beta, base + 8192,
                         a12.layout, base + 8192, a12.layout, &result.algo, nullptr, 0, 0) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cudaStreamSynchronize(0) == cudaSuccess);

    // requestedAlgoCount <= 0 is an error.
    Pref pref;
    int found = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.handle, nn.desc, a8.layout, a8.layout, a8.layout, a8.layout, pref.pref, 0,
                                         &result, &found) == CUBLAS_STATUS_INVALID_VALUE);
}

TEST_CASE("cuBLASLt refuses what it does not emulate, and impossible problems") {
    Lt lt;
    cublasLtMatmulDesc_t desc = nullptr;
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_16F, CUDA_R_16F) == CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatrixLayout_t layout = nullptr;
    CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_16F, 4, 4, 4) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_64F, 4, 4, 4) == CUBLAS_STATUS_NOT_SUPPORTED);

    Desc d(false, false);
    const int32_t op_c = CUBLAS_OP_C, device_mode = CUBLASLT_POINTER_MODE_DEVICE, host_mode = CUBLASLT_POINTER_MODE_HOST;
    const uint32_t relu = CUBLASLT_EPILOGUE_RELU, plain = CUBLASLT_EPILOGUE_DEFAULT;
    const void* bias = nullptr;
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_c, sizeof(op_c)) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &relu, sizeof(relu)) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &plain, sizeof(plain)) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &device_mode, sizeof(device_mode)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &host_mode, sizeof(host_mode)) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_c, 2) == CUBLAS_STATUS_INVALID_VALUE);

    Pref pref;
    const float waves = 1.0f;
    const uint32_t search = 0, bad_mask = 0x8;
    const uint64_t workspace = 0;
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, &waves, sizeof(waves)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &search, sizeof(search)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &bad_mask,
                                               sizeof(bad_mask)) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, 4) ==
          CUBLAS_STATUS_INVALID_VALUE);

    // Types and shapes, at the heuristic.
    cublasLtMatmulHeuristicResult_t result;
    int found = -1;
    LayoutHandle bf(CUDA_R_16BF, 8, 8, 8), fp(CUDA_R_32F, 8, 8, 8), wide(CUDA_R_16BF, 8, 16, 8), short_ld(CUDA_R_16BF, 8, 8, 4);
    auto ask = [&](const LayoutHandle& a, const LayoutHandle& b, const LayoutHandle& c, const LayoutHandle& dd) {
        return cublasLtMatmulAlgoGetHeuristic(lt.handle, d.desc, a.layout, b.layout, c.layout, dd.layout, pref.pref, 1,
                                              &result, &found);
    };
    CHECK(ask(bf, fp, fp, fp) == CUBLAS_STATUS_NOT_SUPPORTED);  // A and B of different types
    CHECK(ask(fp, fp, bf, bf) == CUBLAS_STATUS_NOT_SUPPORTED);  // fp32 inputs, bf16 output
    CHECK(ask(bf, bf, fp, bf) == CUBLAS_STATUS_NOT_SUPPORTED);  // C and D of different types
    CHECK(ask(bf, wide, bf, bf) == CUBLAS_STATUS_INVALID_VALUE);  // D is 8 x 8, op(B) 8 x 16
    CHECK(ask(wide, bf, bf, bf) == CUBLAS_STATUS_INVALID_VALUE);  // k 16 against 8
    CHECK(ask(bf, bf, bf, short_ld) == CUBLAS_STATUS_INVALID_VALUE);  // ld 4 below 8 rows
    CHECK(ask(bf, bf, bf, bf) == CUBLAS_STATUS_SUCCESS);
    CHECK(found == 1);

    // Destroyed objects are not live.
    cublasLtMatrixLayout_t gone = nullptr;
    LT_CHECK(cublasLtMatrixLayoutCreate(&gone, CUDA_R_16BF, 8, 8, 8));
    LT_CHECK(cublasLtMatrixLayoutDestroy(gone));
    CHECK(cublasLtMatrixLayoutDestroy(gone) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.handle, d.desc, gone, bf.layout, bf.layout, bf.layout, pref.pref, 1, &result,
                                         &found) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(nullptr, d.desc, bf.layout, bf.layout, bf.layout, bf.layout, pref.pref, 1,
                                         &result, &found) == CUBLAS_STATUS_NOT_INITIALIZED);
    CHECK(std::strlen(cublasGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED)) > 0);
    CHECK(std::strlen(cublasGetStatusString((cublasStatus_t)12345)) > 0);
}

TEST_CASE("cublasLtMatmul: matrices outside device memory, and D overlapping its inputs, are INVALID_VALUE") {
    Lt lt;
    Desc nn(false, false);
    LayoutHandle l(CUDA_R_32F, 8, 8, 8), long_ld(CUDA_R_32F, 8, 8, 64);
    DeviceBytes a(8 * 8 * 4), b(8 * 8 * 4), dbuf(8 * 8 * 4);
    std::vector<float> host(8 * 8, 1.0f);
    const float alpha = 1, beta = 0, one = 1;
    auto run = [&](const void* pa, const void* pb, const void* pc, void* pd, const LayoutHandle& dl, const float* bt) {
        return cublasLtMatmul(lt.handle, nn.desc, &alpha, pa, l.layout, pb, l.layout, bt, pc, dl.layout, pd, dl.layout,
                              nullptr, nullptr, 0, 0);
    };
    CHECK(run(host.data(), b.ptr(), dbuf.ptr(), dbuf.ptr(), l, &beta) == CUBLAS_STATUS_INVALID_VALUE);  // A in host memory
    CHECK(run(a.ptr(), b.ptr(), dbuf.ptr(), dbuf.ptr(), long_ld, &beta) == CUBLAS_STATUS_INVALID_VALUE);  // D past its allocation
    CHECK(run(a.ptr(), b.ptr(), a.ptr(), a.ptr(), l, &beta) == CUBLAS_STATUS_INVALID_VALUE);  // D is A
    CHECK(run(a.ptr(), b.ptr(), host.data(), dbuf.ptr(), l, &one) == CUBLAS_STATUS_INVALID_VALUE);  // C read from the host
    CHECK(run(a.ptr(), b.ptr(), dbuf.ptr() + 16, dbuf.ptr(), l, &one) == CUBLAS_STATUS_INVALID_VALUE);  // C, D partly overlap
    CHECK(run(a.ptr(), b.ptr(), host.data(), dbuf.ptr(), l, &beta) == CUBLAS_STATUS_SUCCESS);  // beta 0: C is not read
    REQUIRE(cudaStreamSynchronize(0) == cudaSuccess);
}

TEST_CASE("cublasLtMatmul: a workspace outside device memory, or in use on another stream, is INVALID_VALUE") {
    Lt lt;
    Desc nn(false, false);
    LayoutHandle l(CUDA_R_32F, 8, 8, 8);
    DeviceBytes a(8 * 8 * 4), b(8 * 8 * 4), d(8 * 8 * 4), workspace(1024), other_workspace(1024);
    std::vector<char> host(1024);
    const float alpha = 1, beta = 0;
    cudaStream_t side;
    REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
    auto run = [&](void* ws, cudaStream_t stream) {
        return cublasLtMatmul(lt.handle, nn.desc, &alpha, a.ptr(), l.layout, b.ptr(), l.layout, &beta, d.ptr(), l.layout,
                              d.ptr(), l.layout, nullptr, ws, 1024, stream);
    };
    CHECK(run(host.data(), 0) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(run(workspace.ptr(), 0) == CUBLAS_STATUS_SUCCESS);
    CHECK(run(workspace.ptr(), 0) == CUBLAS_STATUS_SUCCESS);      // the same stream again
    CHECK(run(workspace.ptr(), side) == CUBLAS_STATUS_INVALID_VALUE);  // stream 0's have not run
    CHECK(run(other_workspace.ptr(), side) == CUBLAS_STATUS_SUCCESS);  // a workspace per stream
    REQUIRE(cudaStreamSynchronize(0) == cudaSuccess);
    CHECK(run(workspace.ptr(), side) == CUBLAS_STATUS_SUCCESS);  // once they have, another stream may have it
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaStreamDestroy(side) == cudaSuccess);
}

// ----------------------------------------------------------------------------
// The emulation's environment switches, and kernels/matmul.cuh on them

// Sets an environment variable for a scope.
struct ScopedEnv {
    const char* name;
    ScopedEnv(const char* name_, const char* value) : name(name_) { setenv(name, value, 1); }
    ~ScopedEnv() { unsetenv(name); }
};

TEST_CASE("EMU_CUBLASLT_ALGORITHMS and EMU_CUBLASLT_SPLIT_K_ONLY: several algorithms; split-K only for a shape") {
    Lt lt;
    DeviceBytes buffer(1 << 16);
    unsigned char* base = buffer.ptr();
    Desc forward(true, false);
    LayoutHandle a(CUDA_R_16BF, 24, 56, 24), b(CUDA_R_16BF, 24, 40, 24), d(CUDA_R_16BF, 56, 40, 56);
    cublasLtMatmulHeuristicResult_t results[8];
    auto offered = [&](uint32_t mask, int requested) {
        Pref pref;
        pref.set_u32(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, mask);
        int found = -1;
        LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt.handle, forward.desc, a.layout, b.layout, d.layout, d.layout,
                                                pref.pref, requested, results, &found));
        return found;
    };
    CHECK(offered(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 8) == 1);
    {
        ScopedEnv several("EMU_CUBLASLT_ALGORITHMS", "3");
        CHECK(offered(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 8) == 3);
        CHECK(offered(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 2) == 2);
    }
    // D (56 x 40) with k 24 offers only split-K reduced in D's type: nothing under the fp32 mask (nor
    // under no split at all, mask 0); under every scheme an algorithm that neither the check nor the
    // product accept until it is set to one part of k with no reduction.
    ScopedEnv split_only("EMU_CUBLASLT_SPLIT_K_ONLY", "8x8x8,56x40x24");
    CHECK(offered(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 8) == 0);
    CHECK(offered(CUBLASLT_REDUCTION_SCHEME_NONE, 8) == 0);
    REQUIRE(offered(CUBLASLT_REDUCTION_SCHEME_MASK, 8) == 1);
    cublasLtMatmulAlgo_t algo = results[0].algo;
    cublasLtMatmulHeuristicResult_t check;
    CHECK(cublasLtMatmulAlgoCheck(lt.handle, forward.desc, a.layout, b.layout, d.layout, d.layout, &algo, &check) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    const float alpha = 1, beta = 0;
    auto product = [&] {
        return cublasLtMatmul(lt.handle, forward.desc, &alpha, base, a.layout, base + 8192, b.layout, &beta, base + 16384,
                              d.layout, base + 16384, d.layout, &algo, nullptr, 0, 0);
    };
    CHECK(product() == CUBLAS_STATUS_NOT_SUPPORTED);
    const int32_t one = 1, two = 2;
    const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE, both = 3;
    LT_CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one, sizeof(one)));
    CHECK(cublasLtMatmulAlgoCheck(lt.handle, forward.desc, a.layout, b.layout, d.layout, d.layout, &algo, &check) ==
          CUBLAS_STATUS_INVALID_VALUE);  // one part, but a reduction scheme
    LT_CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &none, sizeof(none)));
    LT_CHECK(cublasLtMatmulAlgoCheck(lt.handle, forward.desc, a.layout, b.layout, d.layout, d.layout, &algo, &check));
    CHECK(check.workspaceSize == 0);
    CHECK(product() == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cudaStreamSynchronize(0) == cudaSuccess);
    // What is refused: a scheme naming two, a split below 1, an attribute not emulated.
    CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &both, sizeof(both)) ==
          CUBLAS_STATUS_INVALID_VALUE);
    const int32_t zero = 0;
    CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &zero, sizeof(zero)) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &one, sizeof(one)) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    LT_CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &two, sizeof(two)));
    CHECK(product() == CUBLAS_STATUS_NOT_SUPPORTED);  // split-K is not emulated
}

namespace {

// The trainer's three products through kernels/matmul.cuh (N rows, C in, OC out; row-major as the
// trainer stores them): out = inp W^T, dW += dout^T inp from a random dW (beta 1, fp32), dinp =
// dout W, each checked against the double reference of the header's bound.
void check_trainer_products(int N, int C, int OC) {
    Rng rng(7);
    // Row-major (R, K) is column-major K x R.
    const HostMatrix inp = random_matrix(CUDA_R_16BF, C, N, rng), W = random_matrix(CUDA_R_16BF, C, OC, rng),
                     dout = random_matrix(CUDA_R_16BF, OC, N, rng), dW0 = random_matrix(CUDA_R_32F, C, OC, rng);
    DeviceBytes d_inp(inp.v.size() * 2), d_W(W.v.size() * 2), d_dout(dout.v.size() * 2), d_out((size_t)N * OC * 2),
        d_dW(dW0.v.size() * 4), d_dinp((size_t)N * C * 2);
    d_inp.upload(encode(inp));
    d_W.upload(encode(W));
    d_dout.upload(encode(dout));
    d_dW.upload(encode(dW0));
    d_out.poison();
    d_dinp.poison();
    matmul_setup();
    matmul_forward((floatX*)d_out.ptr(), (const floatX*)d_inp.ptr(), (const floatX*)d_W.ptr(), N, C, OC, 0);
    matmul_backward((floatX*)d_dinp.ptr(), (float*)d_dW.ptr(), (const floatX*)d_dout.ptr(), (const floatX*)d_inp.ptr(),
                    (const floatX*)d_W.ptr(), N, C, OC, 0);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(matmul_plan_count() == 3);
    matmul_teardown();
    const HostMatrix none{CUDA_R_16BF, 0, 0, 0, {}};
    const Product out{true, false, 1.0f, 0.0f, &W, &inp, &none};      // out^T (OC x N) = W . inp^T
    const Product dW{false, true, 1.0f, 1.0f, &inp, &dout, &dW0};     // dW^T (C x OC) += inp^T . dout
    const Product dinp{false, false, 1.0f, 0.0f, &W, &dout, &none};   // dinp^T (C x N) = W^T . dout^T
    CHECK(check_product(out, decode(d_out.download(), CUDA_R_16BF), OC, CUDA_R_16BF).outside == 0);
    CHECK(check_product(dW, decode(d_dW.download(), CUDA_R_32F), C, CUDA_R_32F).outside == 0);
    CHECK(check_product(dinp, decode(d_dinp.download(), CUDA_R_16BF), C, CUDA_R_16BF).outside == 0);
}

}  // namespace

TEST_CASE("kernels/matmul.cuh: several algorithms offered, the choice timed on the products' own operands") {
    // With beta 1 (dW) the timing runs write a scratch D: were they run on dW, it would hold the
    // product added 5 times more (one untimed and MATMUL_TIMING_RUNS timed runs of 1 + 3 algorithms).
    ScopedEnv several("EMU_CUBLASLT_ALGORITHMS", "6");
    check_trainer_products(40, 24, 56);
}

TEST_CASE("kernels/matmul.cuh: where only split-K reduced in bf16 is offered, the product runs unsplit") {
    // The forward (D 56 x 40, k 24) and the weight gradient (D 24 x 56, k 40) get nothing under the
    // fp32-reduction mask: matmul_plan falls back to the heuristic's algorithms set to one part of k
    // (without the fallback it exits naming the product; used as offered, cublasLtMatmul refuses them).
    ScopedEnv split_only("EMU_CUBLASLT_SPLIT_K_ONLY", "56x40x24,24x56x40");
    check_trainer_products(40, 24, 56);
}

namespace {

// D (24 x 40, fp32) = A (24 x 56) B (56 x 40) through kernels/matmul.cuh from a fresh plan (fp32, so
// that the algorithms' different last bits are not rounded away as in a bf16 D): the bytes of D, the
// index of the algorithm its plan chose, and matmul_choices_text() after it. records: a text to use.
struct ProductRun {
    std::vector<unsigned char> d;
    int choice;
    std::string text;
};
ProductRun product_with_fresh_plan(const std::string& records = "") {
    Rng rng(11);
    const int m = 24, n = 40, k = 56;
    HostMatrix a = random_matrix(CUDA_R_16BF, m, k, rng);
    const HostMatrix b = random_matrix(CUDA_R_16BF, k, n, rng);
    // Magnitudes from 2^-8 to 2^8 (powers of two keep them bf16): sums that round in fp32, in an
    // order of their terms' own (random_value's 0.25 to 1 would sum exactly in any order).
    for (float& x : a.v) x = std::ldexp(x, (int)(rng.uniform() * 17) - 8);
    DeviceBytes d_a(a.v.size() * 2), d_b(b.v.size() * 2), d_d((size_t)m * n * 4);
    d_a.upload(encode(a));
    d_b.upload(encode(b));
    d_d.poison();
    matmul_setup();
    if (!records.empty()) matmul_use_choices(records, "the test's record");
    cublaslt_matmul((float*)d_d.ptr(), (const float*)d_d.ptr(), (const floatX*)d_a.ptr(), (const floatX*)d_b.ptr(), m, n,
                    k, false, false, 0.0f, 0);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(matmul_plan_count() == 1);
    ProductRun run{d_d.download(), matmul_plans[0].choice, matmul_choices_text()};
    matmul_teardown();
    return run;
}

}  // namespace

TEST_CASE("kernels/matmul.cuh: a recorded choice is used instead of timing, where the heuristic still offers it") {
    // EMU_CUBLASLT_FASTEST makes the timing pick that algorithm; the algorithms sum k in 1, 2, 3, 4
    // parts, so two choices give different last bits.
    ScopedEnv several("EMU_CUBLASLT_ALGORITHMS", "4");
    ProductRun timed_2, timed_0;
    {
        ScopedEnv fastest("EMU_CUBLASLT_FASTEST", "2");
        timed_2 = product_with_fresh_plan();
    }
    ScopedEnv fastest("EMU_CUBLASLT_FASTEST", "0");
    timed_0 = product_with_fresh_plan();
    CHECK(timed_2.choice == 2);
    CHECK(timed_0.choice == 0);
    CHECK(timed_2.d != timed_0.d);  // the algorithms are told apart by their results
    // The record of algorithm 2 is used although the timing would pick 0: the same bytes.
    const ProductRun replayed = product_with_fresh_plan(timed_2.text);
    CHECK(replayed.choice == 2);
    CHECK(replayed.d == timed_2.d);
    CHECK(replayed.text == timed_2.text);
    // Without timing (evaluation and sampling in the trainer), the heuristic's first.
    matmul_timing = false;
    CHECK(product_with_fresh_plan().choice == 0);
    matmul_timing = true;
    // A record the heuristic no longer offers (2 algorithms now): said, and timed anew.
    {
        ScopedEnv fewer("EMU_CUBLASLT_ALGORITHMS", "2");
        matmul_setup();  // matmul_teardown clears the flag
        const ProductRun stale = product_with_fresh_plan(timed_2.text);
        CHECK(stale.choice == 0);
        CHECK(stale.d == timed_0.d);
    }
    // A record of another precision is skipped; a line that cannot be read is an error.
    std::string other = timed_2.text;
    const size_t at = other.find(FLOATX_IS_FP32 ? "\nfp32 " : "\nbf16 ");
    REQUIRE(at != std::string::npos);
    other.replace(at + 1, 4, FLOATX_IS_FP32 ? "bf16" : "fp32");
    CHECK(product_with_fresh_plan(other).choice == 0);
    CHECK_THROWS(matmul_use_choices("bf16 1 2 3\n", "a bad record"));
    matmul_records.clear();
}

TEST_CASE("kernels/matmul.cuh: with several processes, a new plan takes the choice matmul_agreement returns") {
    ScopedEnv several("EMU_CUBLASLT_ALGORITHMS", "4");
    ProductRun timed_3;
    {
        ScopedEnv fastest("EMU_CUBLASLT_FASTEST", "3");
        timed_3 = product_with_fresh_plan();
    }
    ScopedEnv fastest("EMU_CUBLASLT_FASTEST", "0");
    // This process times algorithm 0; "rank 0" chose 3: the plan runs 3 and records 3.
    std::vector<int> asked;
    matmul_agreement = [&](int choice) { asked.push_back(choice); return 3; };
    const ProductRun agreed = product_with_fresh_plan();
    matmul_agreement = nullptr;
    CHECK(asked == std::vector<int>{0});
    CHECK(agreed.choice == 3);
    CHECK(agreed.d == timed_3.d);
    CHECK(agreed.text == timed_3.text);
    CHECK(product_with_fresh_plan().d != timed_3.d);  // without it, this process's own choice
}
