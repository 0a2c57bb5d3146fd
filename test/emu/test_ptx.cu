// The emulated tensor-core and PTX instructions (emu/ptx.h, emu/include/mma.h) against the PTX ISA's
// tables, each on index-coded inputs (every element's value encodes where it is, exactly representable
// in bf16 and fp16), so that a wrong lane or register mapping shows. The expected values come from the
// ISA's formulas written out here again, independently of emu/ptx.cpp:
//   mma.m16n8k16 (9.7.14.5.8): every register of every lane, D against a double reference
//   ldmatrix .x1/.x2/.x4, with and without .trans (9.7.14.5.15): every register of every lane, the row
//     addresses given by pointer and by shared-window address, rows scattered in shared memory
//   cp.async (9.7.9.25.3): poison before the wait, data after; wait_group N leaves the N newest groups
//     pending; wait_all; src-size zero fill; 4, 8, 16 bytes; a second block starts with no pending copy
//   ex2.approx.ftz.f32 (9.7.3.21): values, special values, flush to zero
//   WMMA 16x16x16: load, mma, store for every row/col major combination equals the reference; a kernel
//     that reads fragment elements by NVIDIA's real accumulator layout gets wrong answers (the mapping is
//     scrambled), element-wise use of x[] still works.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <mma.h>
#include "../catch_compat.h"
#include "../../kernels/common.cuh"

namespace {

template <typename T>
T* to_device(const std::vector<T>& h) {
    T* d = nullptr;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
T* device_buffer(size_t n) {
    T* d = nullptr;
    cudaCheck(cudaMalloc(&d, n * sizeof(T)));
    return d;
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

uint16_t bf16_bits(float v) {  // v exactly representable
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (uint16_t)(u >> 16);
}
uint16_t f16_bits(float v) {
    const __half h = __float2half(v);
    __half_raw raw = h;
    return raw.x;
}

// ---------------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: the ISA's fragment formulas, written out for the test.
// groupID = lane >> 2, threadID_in_group = lane % 4.
int a_row(int lane, int i) { return (lane >> 2) + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0); }
int a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
int b_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
int b_col(int lane, int i) { return lane >> 2; }
int c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
int c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

// Index-coded operands: A(r, c) = r * 16 + c - 128, B(k, n) = k * 8 + n - 64 (integers of at most 8 bits:
// exact in bf16 and fp16), C(m, n) = 1000 m + n + 0.5. Every sum is an integer (or .5) below 2^24: the
// fp32 result is exact whatever the order.
float A_value(int r, int c) { return (float)(r * 16 + c - 128); }
float B_value(int k, int n) { return (float)(k * 8 + n - 64); }
float C_value(int m, int n) { return 1000.0f * m + n + 0.5f; }

// Lane registers as the host packs them, one kernel thread per lane: a (4 regs), b (2), c (4 floats).
__global__ void mma_kernel(float* d_out, const uint32_t* a_regs, const uint32_t* b_regs, const float* c_regs, bool f16) {
    const int lane = threadIdx.x;
    uint32_t a[4], b[2];
    float c[4];
    for (int i = 0; i < 4; i++) a[i] = a_regs[lane * 4 + i];
    for (int i = 0; i < 2; i++) b[i] = b_regs[lane * 2 + i];
    for (int i = 0; i < 4; i++) c[i] = c_regs[lane * 4 + i];
    if (f16) emu::mma_m16n8k16_f16(c, a, b, c);  // d = c, in place, as the dev/ kernels use it
    else emu::mma_m16n8k16_bf16(c, a, b, c);
    for (int i = 0; i < 4; i++) d_out[lane * 4 + i] = c[i];
}

void check_mma(bool f16) {
    std::vector<uint32_t> a(32 * 4), b(32 * 2);
    std::vector<float> c(32 * 4);
    uint16_t (*bits)(float) = f16 ? f16_bits : bf16_bits;
    for (int lane = 0; lane < 32; lane++) {
        for (int i = 0; i < 8; i++)  // a_i in register i / 2, low half for even i
            a[lane * 4 + i / 2] |= (uint32_t)bits(A_value(a_row(lane, i), a_col(lane, i))) << (16 * (i % 2));
        for (int i = 0; i < 4; i++)
            b[lane * 2 + i / 2] |= (uint32_t)bits(B_value(b_row(lane, i), b_col(lane, i))) << (16 * (i % 2));
        for (int i = 0; i < 4; i++) c[lane * 4 + i] = C_value(c_row(lane, i), c_col(lane, i));
    }
    uint32_t* da = to_device(a);
    uint32_t* db = to_device(b);
    float* dc = to_device(c);
    float* dd = device_buffer<float>(32 * 4);
    mma_kernel<<<1, 32>>>(dd, da, db, dc, f16);
    cudaCheck(cudaGetLastError());
    const std::vector<float> d = to_host(dd, 32 * 4);
    int wrong = 0;
    for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
            const int m = c_row(lane, i), n = c_col(lane, i);
            double ref = C_value(m, n);
            for (int k = 0; k < 16; k++) ref += (double)A_value(m, k) * B_value(k, n);
            if ((double)d[lane * 4 + i] != ref && wrong++ < 5)
                FAIL_CHECK("lane " << lane << " d" << i << " = D(" << m << "," << n << "): " << d[lane * 4 + i]
                                   << ", reference " << ref);
        }
    CHECK(wrong == 0);
    cudaCheck(cudaFree(da));
    cudaCheck(cudaFree(db));
    cudaCheck(cudaFree(dc));
    cudaCheck(cudaFree(dd));
}

// ---------------------------------------------------------------------------------------------------
// ldmatrix: four 8x8 b16 matrices, M_m(r, c) = 256 m + 16 r + c (raw 16-bit values). Matrix m's row r
// is stored at physical row (5 (8m + r) + 3) % 32 of a 32-row shared tile, so a lane that gives the
// wrong row address shows. Lane 8m + r gives that address (lanes past 8 * num give a wrong one, which
// must be ignored); each lane writes its num registers.
uint16_t M_value(int m, int r, int c) { return (uint16_t)(256 * m + 16 * r + c); }
__host__ __device__ int physical_row(int m, int r) { return (5 * (8 * m + r) + 3) % 32; }

__global__ void ldmatrix_kernel(uint32_t* out, int num, bool trans, bool by_address) {
    __shared__ __align__(16) uint16_t tile[32 * 8];
    const int lane = threadIdx.x;
    for (int m = 0; m < 4; m++)
        for (int c = 0; c < 8; c++) tile[physical_row(m, lane % 8) * 8 + c] = (uint16_t)(256 * m + 16 * (lane % 8) + c);
    __syncwarp();
    const int m = lane / 8, r = lane % 8;
    const uint16_t* row = lane < 8 * num ? tile + physical_row(m, r) * 8 : tile + 8;  // ignored past 8 * num
    uint32_t regs[4] = {0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu};
    if (by_address) emu::ldmatrix_m8n8(regs, num, trans, (uint32_t)__cvta_generic_to_shared(row));
    else emu::ldmatrix_m8n8(regs, num, trans, (const void*)row);
    for (int i = 0; i < 4; i++) out[lane * 4 + i] = regs[i];
}

void check_ldmatrix(int num, bool trans, bool by_address) {
    uint32_t* dout = device_buffer<uint32_t>(32 * 4);
    ldmatrix_kernel<<<1, 32>>>(dout, num, trans, by_address);
    cudaCheck(cudaGetLastError());
    const std::vector<uint32_t> out = to_host(dout, 32 * 4);
    int wrong = 0;
    for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
            uint32_t want = 0xdeadbeefu;  // registers past num untouched
            if (i < num) {
                const int row = lane / 4, col = 2 * (lane % 4);  // the ISA's figure for ldmatrix fragments
                const uint16_t lo = trans ? M_value(i, col, row) : M_value(i, row, col);
                const uint16_t hi = trans ? M_value(i, col + 1, row) : M_value(i, row, col + 1);
                want = lo | ((uint32_t)hi << 16);
            }
            if (out[lane * 4 + i] != want && wrong++ < 5)
                FAIL_CHECK("x" << num << (trans ? ".trans" : "") << " lane " << lane << " r" << i << ": 0x" << std::hex
                               << out[lane * 4 + i] << ", want 0x" << want << std::dec);
        }
    CHECK(wrong == 0);
    cudaCheck(cudaFree(dout));
}

// ---------------------------------------------------------------------------------------------------
// cp.async: each thread copies its own chunks into shared memory and reads them back at each step.
// Snapshots per thread: [0] before any wait, [1] after wait_group 2, [2] after wait_group 1, [3] after
// wait_group 0; each snapshot holds the three 16-byte destinations s0, s1, s2 (12 words). Then the
// .ca sizes and zero fill: [4] before and [5] after wait_all, over d4 (4 bytes), d8 (8), dz (16 bytes
// with src-size 6), du (an uncommitted 16-byte copy, which wait_all completes).
constexpr int CP_THREADS = 64;
constexpr int SNAP_WORDS = 12;
__global__ void cp_async_kernel(uint32_t* out, const uint32_t* src) {
    __shared__ __align__(16) uint32_t s[3][CP_THREADS][4];
    __shared__ __align__(16) uint32_t x[CP_THREADS][12];  // d4 [0], d8 [2..3], dz [4..7], du [8..11]
    const int t = threadIdx.x;
    const uint32_t* g = src + (blockIdx.x * CP_THREADS + t) * 16;  // 16 words of this thread's source
    for (int w = 0; w < 4; w++) {
        for (int j = 0; j < 3; j++) s[j][t][w] = 0x11111111u;  // written, then overwritten by poison at the call
    }
    emu::cp_async((void*)s[0][t], g + 0, 16, 16, true);
    emu::cp_async_commit_group();
    emu::cp_async((uint32_t)__cvta_generic_to_shared(s[1][t]), g + 4, 16, 16, true);
    emu::cp_async_commit_group();
    emu::cp_async((void*)s[2][t], g + 8, 16, 16, false);
    emu::cp_async_commit_group();
    uint32_t* o = out + (blockIdx.x * CP_THREADS + t) * 6 * SNAP_WORDS;
    auto snapshot = [&](int k) {
        for (int j = 0; j < 3; j++)
            for (int w = 0; w < 4; w++) o[k * SNAP_WORDS + j * 4 + w] = s[j][t][w];
    };
    snapshot(0);
    emu::cp_async_wait_group(2);
    snapshot(1);
    emu::cp_async_wait_group(1);
    snapshot(2);
    emu::cp_async_wait_group(0);
    snapshot(3);
    emu::cp_async((void*)&x[t][0], g + 12, 4, 4, false);
    emu::cp_async((void*)&x[t][2], g + 12, 8, 8, false);
    emu::cp_async((void*)&x[t][4], g + 4, 16, 6, true);  // 6 bytes from the source, 10 zeros
    emu::cp_async_commit_group();
    emu::cp_async((void*)&x[t][8], g + 8, 16, 16, true);  // never committed
    for (int w = 0; w < 12; w++) o[4 * SNAP_WORDS + w] = x[t][w];
    emu::cp_async_wait_all();
    for (int w = 0; w < 12; w++) o[5 * SNAP_WORDS + w] = x[t][w];
}

// ---------------------------------------------------------------------------------------------------
// ex2.approx.ftz.f32
__global__ void ex2_kernel(float* out, const float* in, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = emu::ex2_approx_ftz(in[i]);
}

// ---------------------------------------------------------------------------------------------------
// WMMA: D (16x16 fp32) = A (16x16) B (16x16) + C, A and B in global memory with a leading dimension of
// 24 elements (row or col major), C and D with 20 (row or col major in memory).
using namespace nvcuda;
constexpr int LDA = 24, LDC = 20;

template <typename LayoutA, typename LayoutB>
__global__ void wmma_kernel(float* D, const __nv_bfloat16* A, const __nv_bfloat16* B, const float* C, bool c_col,
                            bool d_col) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(a, A, LDA);
    wmma::load_matrix_sync(b, B, LDA);
    wmma::load_matrix_sync(c, C, LDC, c_col ? wmma::mem_col_major : wmma::mem_row_major);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(D, c, LDC, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

// Reads an accumulator's elements assuming NVIDIA's sm_80 layout for m16n16k16 fp32 (two m16n8 halves:
// element i of lane l at row l/4 + 8 ((i/2) % 2), column 2 (l % 4) + (i % 2) + 8 (i / 4)), writes
// them where that layout says they are; and, separately, doubles every element (element-wise, which
// any layout allows) and stores the fragment.
__global__ void wmma_layout_kernel(float* assumed, float* doubled, const float* C) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(c, C, 16, wmma::mem_row_major);
    const int l = threadIdx.x;
    for (int i = 0; i < c.num_elements; i++) {
        const int row = l / 4 + 8 * ((i / 2) % 2), col = 2 * (l % 4) + (i % 2) + 8 * (i / 4);
        assumed[row * 16 + col] = c.x[i];
    }
    for (int i = 0; i < c.num_elements; i++) c.x[i] *= 2.0f;
    wmma::store_matrix_sync(doubled, c, 16, wmma::mem_row_major);
}

template <typename LayoutA, typename LayoutB>
void check_wmma(bool c_col, bool d_col) {
    constexpr bool a_col = std::is_same<LayoutA, wmma::col_major>::value;
    constexpr bool b_col = std::is_same<LayoutB, wmma::col_major>::value;
    auto Av = [](int r, int c) { return (float)((r * 16 + c) % 61 - 30); };
    auto Bv = [](int r, int c) { return (float)((r * 16 + c) % 53 - 26); };
    auto Cv = [](int r, int c) { return 100.0f * r + c + 0.25f; };
    std::vector<__nv_bfloat16> A(16 * LDA, __float2bfloat16(NAN)), B(16 * LDA, __float2bfloat16(NAN));
    std::vector<float> C(16 * LDC, NAN);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            A[a_col ? c * LDA + r : r * LDA + c] = __float2bfloat16(Av(r, c));
            B[b_col ? c * LDA + r : r * LDA + c] = __float2bfloat16(Bv(r, c));
            C[c_col ? c * LDC + r : r * LDC + c] = Cv(r, c);
        }
    __nv_bfloat16* dA = to_device(A);
    __nv_bfloat16* dB = to_device(B);
    float* dC = to_device(C);
    float* dD = to_device(std::vector<float>(16 * LDC, -1.0f));
    wmma_kernel<LayoutA, LayoutB><<<1, 32>>>(dD, dA, dB, dC, c_col, d_col);
    cudaCheck(cudaGetLastError());
    const std::vector<float> D = to_host(dD, 16 * LDC);
    int wrong = 0;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            double ref = Cv(r, c);
            for (int k = 0; k < 16; k++) ref += (double)Av(r, k) * Bv(k, c);
            const float got = D[d_col ? c * LDC + r : r * LDC + c];
            if ((double)got != ref && wrong++ < 5)
                FAIL_CHECK("A " << (a_col ? "col" : "row") << ", B " << (b_col ? "col" : "row") << ", C "
                                << (c_col ? "col" : "row") << ", D " << (d_col ? "col" : "row") << ": D(" << r << ","
                                << c << ") = " << got << ", reference " << ref);
        }
    CHECK(wrong == 0);
    // the padding columns past 16 are not written
    for (int r = 0; r < 16; r++)
        for (int c = 16; c < LDC; c++) CHECK(D[r * LDC + c] == -1.0f);
    cudaCheck(cudaFree(dA));
    cudaCheck(cudaFree(dB));
    cudaCheck(cudaFree(dC));
    cudaCheck(cudaFree(dD));
}

}  // namespace

TEST_CASE("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: every lane's registers as the ISA's tables say", "[emu][ptx]") {
    check_mma(false);
}

TEST_CASE("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: every lane's registers as the ISA's tables say", "[emu][ptx]") {
    check_mma(true);
}

TEST_CASE("ldmatrix.sync.aligned.m8n8 .x1 .x2 .x4, with and without .trans: every lane's registers", "[emu][ptx]") {
    for (int num : {1, 2, 4})
        for (bool trans : {false, true})
            for (bool by_address : {false, true}) {
                INFO("x" << num << (trans ? " .trans" : "") << (by_address ? ", shared-window address" : ", pointer"));
                check_ldmatrix(num, trans, by_address);
            }
}

TEST_CASE("cp.async: poison until the matching wait; wait_group N leaves the N newest groups pending", "[emu][ptx]") {
    constexpr int BLOCKS = 2, N = BLOCKS * CP_THREADS;
    std::vector<uint32_t> src(N * 16);
    for (int i = 0; i < N * 16; i++) src[i] = 0xA0000000u + i;
    uint32_t* dsrc = to_device(src);
    uint32_t* dout = device_buffer<uint32_t>(N * 6 * SNAP_WORDS);
    cp_async_kernel<<<BLOCKS, CP_THREADS>>>(dout, dsrc);
    cudaCheck(cudaGetLastError());
    const std::vector<uint32_t> out = to_host(dout, N * 6 * SNAP_WORDS);
    const uint32_t POISON = 0xFFFFFFFFu;
    int wrong = 0;
    auto expect = [&](bool ok, int t, const char* what) {
        if (!ok && wrong++ < 5) FAIL_CHECK("thread " << t << ": " << what);
    };
    for (int t = 0; t < N; t++) {
        const uint32_t* o = out.data() + t * 6 * SNAP_WORDS;
        const uint32_t* g = src.data() + t * 16;
        auto landed = [&](int k, int j) {  // snapshot k, destination j holds source words 4j..4j+3
            for (int w = 0; w < 4; w++)
                if (o[k * SNAP_WORDS + j * 4 + w] != g[4 * j + w]) return false;
            return true;
        };
        auto poisoned = [&](int k, int j) {
            for (int w = 0; w < 4; w++)
                if (o[k * SNAP_WORDS + j * 4 + w] != POISON) return false;
            return true;
        };
        expect(poisoned(0, 0) && poisoned(0, 1) && poisoned(0, 2), t, "before any wait every destination is poison");
        expect(landed(1, 0) && poisoned(1, 1) && poisoned(1, 2), t, "wait_group 2: the oldest group landed, 2 pending");
        expect(landed(2, 0) && landed(2, 1) && poisoned(2, 2), t, "wait_group 1: two groups landed, the newest pending");
        expect(landed(3, 0) && landed(3, 1) && landed(3, 2), t, "wait_group 0: all landed");
        const uint32_t* before = o + 4 * SNAP_WORDS;
        const uint32_t* after = o + 5 * SNAP_WORDS;
        bool all_poison = true;
        for (int w = 0; w < 12; w++)
            if (w != 1 && before[w] != POISON) all_poison = false;  // word 1 was never a destination
        expect(all_poison, t, ".ca 4 and 8 bytes, src-size, uncommitted: poison before wait_all");
        expect(after[0] == g[12], t, ".ca 4 bytes landed");
        expect(after[2] == g[12] && after[3] == g[13], t, ".ca 8 bytes landed");
        // src-size 6: bytes 0..5 of g[4..], then zeros
        uint32_t want_z[4] = {g[4], g[5] & 0xFFFFu, 0, 0};
        expect(after[4] == want_z[0] && after[5] == want_z[1] && after[6] == 0 && after[7] == 0, t,
               "src-size 6 of 16: 6 bytes copied, 10 zeros");
        expect(after[8] == g[8] && after[9] == g[9] && after[10] == g[10] && after[11] == g[11], t,
               "wait_all completes an uncommitted copy");
    }
    CHECK(wrong == 0);
    cudaCheck(cudaFree(dsrc));
    cudaCheck(cudaFree(dout));
}

TEST_CASE("ex2.approx.ftz.f32: 2^x within the ISA's 2^-22 relative error, flush to zero", "[emu][ptx]") {
    const std::vector<float> in = {0.0f, 1.0f, -1.0f, 0.5f, 10.25f, -3.75f, 127.5f, -125.5f, -126.0f, -127.0f,
                                   -140.0f, 1e-40f, -1e-40f, INFINITY, -INFINITY, NAN, 128.0f};
    float* din = to_device(in);
    float* dout = device_buffer<float>(in.size());
    ex2_kernel<<<1, 32>>>(dout, din, (int)in.size());
    cudaCheck(cudaGetLastError());
    const std::vector<float> out = to_host(dout, in.size());
    for (size_t i = 0; i < in.size(); i++) {
        INFO("ex2(" << in[i] << ") = " << out[i]);
        const float x = in[i];
        if (std::isnan(x)) CHECK(std::isnan(out[i]));
        else if (std::fpclassify(x) == FP_SUBNORMAL) CHECK(out[i] == 1.0f);  // .ftz: input flushed to 0
        else if (x == -INFINITY || x <= -127.0f) CHECK(out[i] == 0.0f);   // 2^-127 and below: subnormal, flushed
        else if (x == INFINITY || x >= 128.0f) CHECK(std::isinf(out[i]));
        else CHECK(std::fabs(out[i] - std::exp2((double)x)) <= std::exp2((double)x) * 0x1p-22);
    }
    cudaCheck(cudaFree(din));
    cudaCheck(cudaFree(dout));
}

TEST_CASE("WMMA 16x16x16 bf16: load, mma_sync, store equal the reference for every row/col major combination", "[emu][wmma]") {
    for (bool c_col : {false, true})
        for (bool d_col : {false, true}) {
            check_wmma<wmma::row_major, wmma::row_major>(c_col, d_col);
            check_wmma<wmma::row_major, wmma::col_major>(c_col, d_col);
            check_wmma<wmma::col_major, wmma::row_major>(c_col, d_col);
            check_wmma<wmma::col_major, wmma::col_major>(c_col, d_col);
        }
}

TEST_CASE("WMMA: the element mapping is scrambled, so code assuming NVIDIA's layout gets wrong answers", "[emu][wmma]") {
    std::vector<float> C(256);
    for (int i = 0; i < 256; i++) C[i] = (float)i;  // C(r, c) = 16 r + c
    float* dC = to_device(C);
    float* dassumed = to_device(std::vector<float>(256, -1.0f));
    float* ddoubled = device_buffer<float>(256);
    wmma_layout_kernel<<<1, 32>>>(dassumed, ddoubled, dC);
    cudaCheck(cudaGetLastError());
    const std::vector<float> assumed = to_host(dassumed, 256), doubled = to_host(ddoubled, 256);
    int misplaced = 0;
    for (int i = 0; i < 256; i++) misplaced += assumed[i] != C[i];
    INFO(misplaced << " of 256 elements misplaced by the assumed layout");
    CHECK(misplaced > 200);  // a permutation that agreed with the real layout would leave them in place
    // element-wise use of x[] is layout-independent and still right
    for (int i = 0; i < 256; i++) CHECK(doubled[i] == 2.0f * C[i]);
    // each of the 256 values still appears exactly once: the mapping is a permutation
    std::vector<int> seen(256, 0);
    for (float v : assumed)
        if (v >= 0 && v < 256) seen[(int)v]++;
    int once = 0;
    for (int s : seen) once += s == 1;
    CHECK(once == 256);
    cudaCheck(cudaFree(dC));
    cudaCheck(cudaFree(dassumed));
    cudaCheck(cudaFree(ddoubled));
}
