// The inline-PTX instructions the kernels use, each behind one small wrapper (sm_80+): asynchronous
// copies global -> shared (cp.async), the warp-level matrix load (ldmatrix), the bf16 tensor-core product
// (mma.sync m16n8k16) and the SFU's 2^x. In emulation (MIXLN_EMU) each calls its twin in emu/ptx.h,
// which follows the PTX ISA section named there (docs/emulation.md).
#pragma once
#include "common.cuh"

__device__ inline unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// cp.async.cg: 16 bytes global -> shared, bypassing L1. With valid false nothing is read and the 16
// bytes are zero-filled (src-size 0), so a tile's rows past the end of a tensor become zeros; gmem must
// still be a valid address. Both addresses 16-byte aligned.
__device__ inline void cp_async16(void* smem, const void* gmem, bool valid = true) {
#ifdef MIXLN_EMU
    emu::cp_async(smem_addr(smem), gmem, 16, valid ? 16 : 0, true);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0));
#endif
}
// Closes the group of this thread's copies issued since the last commit.
__device__ inline void cp_async_commit() {
#ifdef MIXLN_EMU
    emu::cp_async_commit_group();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's committed groups are still in flight (the N newest). Other
// threads' copies need a barrier after the wait to be visible.
template <int N>
__device__ inline void cp_async_wait() {
#ifdef MIXLN_EMU
    emu::cp_async_wait_group(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of matrix i, and lane l receives in
// r[i] matrix i's elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1), or with .trans (2(l%4), l/4) and (2(l%4)+1, l/4).
__device__ inline void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
#ifdef MIXLN_EMU
    emu::ldmatrix_m8n8(r, 4, false, smem_addr(smem));
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#endif
}
__device__ inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* smem) {
#ifdef MIXLN_EMU
    emu::ldmatrix_m8n8(r, 4, true, smem_addr(smem));
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#endif
}

// d (16x8 fp32) += a (16x16 bf16, row) b (16x8 bf16, col). With g = lane / 4, t = lane % 4:
//   a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..), a[2] = A(g, 2t+8..), a[3] = A(g+8, 2t+8..)
//   b0 = B(2t..2t+1, g), b1 = B(2t+8..2t+9, g);  d[0..1] = D(g, 2t..2t+1), d[2..3] = D(g+8, 2t..2t+1)
__device__ inline void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef MIXLN_EMU
    const unsigned b[2] = {b0, b1};
    emu::mma_m16n8k16_bf16(d, a, b, d);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// 2^x on the SFU: ex2.approx.ftz, relative error ~2^-22; a result below 2^-126 flushes to 0. For
// softmax-style sums (each >= 1) and values then stored in bf16, neither is visible; exp(x) is
// fast_exp2(x * LOG2E), with the multiply folded into an FFMA where there is one.
constexpr float LOG2E = 1.4426950408889634f;
__device__ inline float fast_exp2(float x) {
    float y;
#ifdef MIXLN_EMU
    y = emu::ex2_approx_ftz(x);
#else
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
#endif
    return y;
}
