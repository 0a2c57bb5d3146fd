// Emulated twins of the inline-PTX instructions the kernels use (dev/attention.cu, dev/classifier.cu,
// dev/common.cuh). A helper that wraps an `asm` statement calls the twin under #ifdef MIXLN_EMU. Each
// follows its PTX ISA section (numbering of PTX ISA 8.x):
//
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//     9.7.14.5.14 "Multiply-and-Accumulate Instruction: mma", fragments as in 9.7.14.5.8 "Matrix Fragments
//     for mma.m16n8k16 with floating point type" (groupID = lane >> 2, threadID_in_group = lane % 4):
//       A (16x16, row): a0..a7, two per b32 register, low half first;
//         row = groupID for a0, a1, a4, a5, groupID + 8 for a2, a3, a6, a7;
//         col = 2 * threadID_in_group + (i & 1), + 8 for i >= 4.
//       B (16x8, col): b0..b3 in two registers; row = 2 * threadID_in_group + (i & 1), + 8 for i >= 2;
//         col = groupID.
//       C, D (16x8 f32): c0..c3; row = groupID for c0, c1, groupID + 8 for c2, c3;
//         col = 2 * threadID_in_group + (i & 1).
//     Warp collective over all 32 lanes (.sync.aligned). Each D element is the fp32 sum, over k in order, of
//     the exact products (a bf16 or f16 product is exact in fp32), plus C: the hardware's order and internal
//     rounding are unspecified, so a test allows an fp32 accumulation's error.
//
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//     9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix": lanes 0-7 (.x1), 0-15 (.x2) or 0-31
//     (.x4) each give the address of one 16-byte row (lane 8i + j: row j of matrix i; the other lanes'
//     addresses are ignored); lane l receives in register i matrix i's elements (l / 4, 2 (l % 4)) and
//     (l / 4, 2 (l % 4) + 1), low half first; with .trans, (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
//     Row addresses must lie in the block's shared memory, 16-byte aligned: otherwise it fails.
//     Each address-giving lane reads its row itself, in its own fiber, as it arrives (so the race checker
//     sees the read as that thread's), then the lanes exchange the rows.
//
//   cp.async.{ca,cg}.shared.global [dst], [src], cp-size{, src-size};  cp.async.commit_group;
//   cp.async.wait_group N;  cp.async.wait_all
//     9.7.9.25.3.1-3 "Data Movement and Conversion Instructions: cp.async, cp.async.commit_group,
//     cp.async.wait_group / cp.async.wait_all": cp-size 4, 8 or 16 (.cg: 16 only), dst and src aligned to
//     cp-size, bytes past src-size filled with zeros. The source is read at the call; the destination is
//     filled with poison (0xFF) at once, and the data lands only when the issuing thread executes the
//     matching wait: wait_group N completes every committed group but the N most recent, wait_all every
//     copy (committed or not). A read of the destination before its wait sees poison (NaN). Copies still
//     pending when the block ends are dropped (their shared memory ends with the block). The source read,
//     the poison write and the landing write are made by the issuing thread in its own fiber, so the race
//     checker sees them as its accesses (a buffer refilled while another thread still reads it shows).
//
//   ex2.approx.ftz.f32
//     9.7.3.21 "Floating Point Instructions: ex2": 2^x; the hardware's maximum relative error is about
//     2^-22, the emulation's result is the host's exp2f (nearly correctly rounded); .ftz: a subnormal
//     input is 0 (result 1), a subnormal result is flushed to a zero of the same sign.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>
#include "execution.h"

namespace emu {

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c (d may be c).
void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c,
                       const char* file = __builtin_FILE(), int line = __builtin_LINE());
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 d, a, b, c.
void mma_m16n8k16_f16(float* d, const uint32_t* a, const uint32_t* b, const float* c,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE());

namespace ptx_detail {
// ldmatrix: checks a giving lane's row address (shared memory, 16-byte aligned; fails naming the lane);
// then the warp exchanges the rows read (row: this lane's 16 bytes, or null for a lane that gives none).
void ldmatrix_check_row(const void* row, int num, bool trans, const char* file, int line);
void ldmatrix_exchange(uint32_t* r, int num, bool trans, const void* row, const char* file, int line);
// cp.async: the checks of one copy; the calling thread's pending copies.
struct Copy {
    unsigned char* dst;
    int bytes;
    unsigned char data[16];
};
void cp_async_check(const void* dst, const void* src, int cp_size, int src_size, bool cg, const char* file, int line);
void cp_async_push(const Copy& c);
// Takes out the copies that complete: every committed group but the `keep` most recent, and with
// all, the uncommitted ones too (after committing them).
void cp_async_retire(int keep, bool all, std::vector<Copy>& done);
void cp_async_commit_group();
}  // namespace ptx_detail

// ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16 r, [row]: num = 1, 2 or 4 registers into r. The
// row address as a generic pointer into shared memory or as a shared-window address (cvta.to.shared).
// (static: compiled into the kernel's own source, so the race checker sees its accesses.)
static inline void ldmatrix_m8n8(uint32_t* r, int num, bool trans, const void* row,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned char bytes[16];
    const bool gives = this_thread().lane < 8 * num;
    if (gives) {
        ptx_detail::ldmatrix_check_row(row, num, trans, file, line);
        std::memcpy(bytes, row, 16);
    }
    ptx_detail::ldmatrix_exchange(r, num, trans, gives ? bytes : nullptr, file, line);
}
static inline void ldmatrix_m8n8(uint32_t* r, int num, bool trans, uint32_t shared_address,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    const bool gives = this_thread().lane < 8 * num;  // the other lanes' addresses are ignored
    ldmatrix_m8n8(r, num, trans, gives ? shared_pointer(shared_address) : nullptr, file, line);
}

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size{, src_size}. cg: the .cg variant (16 bytes only).
static inline void cp_async(void* dst, const void* src, int cp_size, int src_size, bool cg,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ptx_detail::cp_async_check(dst, src, cp_size, src_size, cg, file, line);
    ptx_detail::Copy c;
    c.dst = (unsigned char*)dst;
    c.bytes = cp_size;
    std::memset(c.data, 0, sizeof c.data);
    if (src_size > 0) std::memcpy(c.data, src, src_size);  // bytes past src-size: zeros
    std::memset(dst, 0xFF, cp_size);                        // poison until the matching wait
    ptx_detail::cp_async_push(c);
}
static inline void cp_async(uint32_t dst_shared_address, const void* src, int cp_size, int src_size, bool cg,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cp_async(shared_pointer(dst_shared_address), src, cp_size, src_size, cg, file, line);
}
inline void cp_async_commit_group() { ptx_detail::cp_async_commit_group(); }
static inline void cp_async_land(int keep, bool all) {
    std::vector<ptx_detail::Copy> done;
    ptx_detail::cp_async_retire(keep, all, done);
    for (const ptx_detail::Copy& c : done) std::memcpy(c.dst, c.data, c.bytes);
}
// cp.async.wait_group n; cp.async.wait_all.
static inline void cp_async_wait_group(int n) { cp_async_land(n, false); }
static inline void cp_async_wait_all() { cp_async_land(0, true); }

// ex2.approx.ftz.f32 and ex2.approx.f32.
float ex2_approx_ftz(float x);
float ex2_approx(float x);

}  // namespace emu
