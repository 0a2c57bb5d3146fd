// The emulated PTX instructions of ptx.h: mma.sync m16n8k16, ldmatrix, cp.async and ex2.approx.
#include "ptx.h"
#include "race_annotations.h"
#include <cmath>
#include <cstring>
#include <deque>
#include <vector>
#include <cuda_fp16.h>

namespace emu {

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}

namespace {

float bf16_bits_to_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
float f16_bits_to_float(uint16_t h) {
    __half_raw raw;
    raw.x = h;
    return __half2float(__half(raw));
}

struct MmaLane {
    float* d;
    const uint32_t* a;
    const uint32_t* b;
    const float* c;
};

// Element i of a fragment held in b32 registers, two 16-bit elements per register, low half first.
uint16_t half_of(const uint32_t* regs, int i) { return (uint16_t)(regs[i / 2] >> (16 * (i % 2))); }

void mma_complete(void* const* lanes, unsigned, const void* context) {
    float (*convert)(uint16_t) = (float (*)(uint16_t))context;
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const MmaLane* me = (const MmaLane*)lanes[lane];
        const int group = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 8; i++) {  // A: a0..a7
            const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
            const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = convert(half_of(me->a, i));
        }
        for (int i = 0; i < 4; i++) {  // B: b0..b3
            const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][group] = convert(half_of(me->b, i));
        }
        for (int i = 0; i < 4; i++) C[i < 2 ? group : group + 8][tig * 2 + (i & 1)] = me->c[i];
    }
    // all inputs read before any output is written (d may alias c)
    for (int lane = 0; lane < 32; lane++) {
        const MmaLane* me = (const MmaLane*)lanes[lane];
        const int group = lane >> 2, tig = lane % 4;
        for (int i = 0; i < 4; i++) {
            const int row = i < 2 ? group : group + 8, col = tig * 2 + (i & 1);
            float sum = 0.0f;
            for (int k = 0; k < 16; k++) sum += A[row][k] * B[k][col];  // exact products, fp32 sum in k order
            me->d[i] = sum + C[row][col];
        }
    }
}

}  // namespace

void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line) {
    MmaLane lane{d, a, b, c};
    warp_collective("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", 0xffffffffu, file, line, &lane, mma_complete,
                    (const void*)&bf16_bits_to_float, false);
}

void mma_m16n8k16_f16(float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line) {
    MmaLane lane{d, a, b, c};
    warp_collective("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 0xffffffffu, file, line, &lane, mma_complete,
                    (const void*)&f16_bits_to_float, false);
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16

namespace {

struct LdmatrixLane {
    const void* row;  // this lane's 16 bytes, read as it arrived (null: a lane that gives no row)
    uint32_t r[4];
};
struct LdmatrixOp {
    int num;
    bool trans;
    const char* what;
};

const LdmatrixOp& ldmatrix_op(int num, bool trans, const char* file, int line) {
    static const LdmatrixOp ops[2][3] = {
        {{1, false, "ldmatrix.sync.aligned.m8n8.x1.shared.b16"}, {2, false, "ldmatrix.sync.aligned.m8n8.x2.shared.b16"},
         {4, false, "ldmatrix.sync.aligned.m8n8.x4.shared.b16"}},
        {{1, true, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16"},
         {2, true, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16"},
         {4, true, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"}}};
    if (num != 1 && num != 2 && num != 4) fail("ldmatrix .x%d (%s:%d): the number of matrices is 1, 2 or 4", num, file, line);
    return ops[trans][num == 1 ? 0 : num == 2 ? 1 : 2];
}

void ldmatrix_complete(void* const* lanes, unsigned, const void* context) {
    const LdmatrixOp& op = *(const LdmatrixOp*)context;
    uint16_t M[4][8][8];  // matrix, row, column: lane 8m + j gave row j of matrix m
    for (int m = 0; m < op.num; m++)
        for (int j = 0; j < 8; j++) std::memcpy(M[m][j], ((const LdmatrixLane*)lanes[8 * m + j])->row, 16);
    for (int lane = 0; lane < 32; lane++) {
        LdmatrixLane* me = (LdmatrixLane*)lanes[lane];
        const int row = lane / 4, col = 2 * (lane % 4);
        for (int m = 0; m < op.num; m++) {
            const uint16_t lo = op.trans ? M[m][col][row] : M[m][row][col];
            const uint16_t hi = op.trans ? M[m][col + 1][row] : M[m][row][col + 1];
            me->r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
}

}  // namespace

namespace ptx_detail {

void ldmatrix_check_row(const void* row, int num, bool trans, const char* file, int line) {
    const LdmatrixOp& op = ldmatrix_op(num, trans, file, line);
    const uint32_t offset = shared_offset(row);  // fails outside the block's shared memory
    if (offset % 16 != 0) fail("%s (%s:%d): row address %p (shared 0x%x) is not 16-byte aligned", op.what, file, line, row, offset);
    shared_pointer(offset + 15);  // the whole row inside the block's shared memory
}

void ldmatrix_exchange(uint32_t* r, int num, bool trans, const void* row, const char* file, int line) {
    const LdmatrixOp& op = ldmatrix_op(num, trans, file, line);
    LdmatrixLane lane{row, {}};
    warp_collective(op.what, 0xffffffffu, file, line, &lane, ldmatrix_complete, &op, false);
    for (int m = 0; m < num; m++) r[m] = lane.r[m];
}

}  // namespace ptx_detail

// ---- cp.async

namespace {

struct CpAsyncState {
    std::vector<ptx_detail::Copy> uncommitted;
    std::deque<std::vector<ptx_detail::Copy>> groups;  // oldest first
};
std::vector<CpAsyncState*> g_states;  // every thread's state in the running block

void cp_async_block_end() {
    IgnoreEmulatorAccesses ignore;
    for (CpAsyncState* s : g_states) delete s;
    g_states.clear();
}

CpAsyncState& state() {
    IgnoreEmulatorAccesses ignore;
    void*& slot = thread_slot();
    if (!slot) {
        CpAsyncState* s = new CpAsyncState;
        g_states.push_back(s);
        on_block_end(cp_async_block_end);
        slot = s;
    }
    return *(CpAsyncState*)slot;
}

}  // namespace

namespace ptx_detail {

void cp_async_check(const void* dst, const void* src, int cp_size, int src_size, bool cg, const char* file, int line) {
    const char* what = cg ? "cp.async.cg.shared.global" : "cp.async.ca.shared.global";
    if (cg ? cp_size != 16 : (cp_size != 4 && cp_size != 8 && cp_size != 16))
        fail("%s (%s:%d): cp-size %d (.cg: 16; .ca: 4, 8 or 16)", what, file, line, cp_size);
    if (src_size < 0 || src_size > cp_size)
        fail("%s (%s:%d): src-size %d outside 0..cp-size %d", what, file, line, src_size, cp_size);
    const uint32_t offset = shared_offset(dst);  // fails outside the block's shared memory
    shared_pointer(offset + cp_size - 1);        // the whole destination inside it
    if (offset % cp_size != 0 || (uintptr_t)src % cp_size != 0)
        fail("%s (%s:%d): destination (shared 0x%x) or source %p not aligned to cp-size %d", what, file, line, offset,
             src, cp_size);
}

void cp_async_push(const Copy& c) {
    IgnoreEmulatorAccesses ignore;
    state().uncommitted.push_back(c);
}

void cp_async_commit_group() {
    IgnoreEmulatorAccesses ignore;
    CpAsyncState& s = state();
    s.groups.push_back(std::move(s.uncommitted));  // an empty group when nothing is uncommitted
    s.uncommitted.clear();
}

void cp_async_retire(int keep, bool all, std::vector<Copy>& done) {
    IgnoreEmulatorAccesses ignore;
    if (keep < 0) fail("cp.async.wait_group %d: N is a non-negative integer constant", keep);
    if (all) cp_async_commit_group();  // wait_all = commit_group + wait_group 0
    CpAsyncState& s = state();
    while ((int)s.groups.size() > keep) {
        done.insert(done.end(), s.groups.front().begin(), s.groups.front().end());
        s.groups.pop_front();
    }
}

}  // namespace ptx_detail

// ---- ex2.approx

float ex2_approx(float x) { return std::exp2(x); }

float ex2_approx_ftz(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.0f, x);
    const float y = std::exp2(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? std::copysign(0.0f, y) : y;
}

}  // namespace emu
