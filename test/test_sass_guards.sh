#!/usr/bin/env bash
# The SASS guards (scripts/sass_guards.py, issue 23 item 5): the trainer's sm_90a code against
# test/sass_expectations.txt ($SASS_OBJECTS, LABEL=OBJECT pairs: `make test` sets this precision's
# test_gpu_trainer.o, bf16=build/test_gpu_trainer.o by default), after the checker is shown to catch
# each kind of wrong claim on a small CUDA file written here (a 16-bit and a 128-bit copy, a local
# array, a kernel of 130+ registers, ldmatrix + mma.sync + cp.async) whose instructions are known.
# No GPU needed; skipped only where nvcc is missing (a missing cuobjdump or nvdisasm fails).
# Ends with "test_sass_guards: N passed, M failed, K skipped", K the trainer's PENDING checks.
set -u
cd "$(dirname "$0")/.."
nvcc=${NVCC:-nvcc}
if ! command -v "$nvcc" >/dev/null; then
    echo "test_sass_guards: skipped: no nvcc, so no sm_90a code to read"
    echo "test_sass_guards: 0 passed, 0 failed, 1 skipped"
    exit 0
fi
objects=${SASS_OBJECTS:-bf16=build/test_gpu_trainer.o}
guards="python3 scripts/sass_guards.py"
tmp=$(mktemp -d /tmp/mixln_sass_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0; skipped=0
pass() { passed=$((passed + 1)); echo "  ok    $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $1"; [ -n "${2:-}" ] && tail -n 15 <<<"$2" | sed 's/^/        /'; }

if cuobjdump=$($guards where 2>&1); then pass "cuobjdump and nvdisasm found: $cuobjdump"; else
    fail "cuobjdump and nvdisasm found (pip install -r scripts/requirements.txt)" "$cuobjdump"
    echo "test_sass_guards: $passed passed, $failed failed"; exit 1
fi

cat > "$tmp/fixture.cu" <<'EOF'
#include <cuda_bf16.h>
__global__ void copy16_kernel(__nv_bfloat16* out, const __nv_bfloat16* in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
__global__ void __launch_bounds__(256) copy128_kernel(int4* out, const int4* in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
// Written at an index known only at run time: the array lives in local memory.
__global__ void local_array_kernel(float* out, const int* index) {
    float a[32];
    for (int i = 0; i < 32; i++) a[i] = out[i * 64 + threadIdx.x];
    a[index[threadIdx.x] & 31] += 1.f;
    out[threadIdx.x] = a[index[threadIdx.x + 64] & 31];
}
// Volatile loads stay in order and the first use needs the last one: all 128 live at once.
__global__ void many_registers_kernel(float* out, const volatile float* in, float x) {
    float v[128];
#pragma unroll
    for (int i = 0; i < 128; i++) v[i] = in[i * 1024 + threadIdx.x];
    float s = 0.f;
#pragma unroll
    for (int i = 127; i >= 0; i--) s = s * x + v[i];
    out[threadIdx.x] = s;
}
// One warp: a 16x16 bf16 tile to shared memory by cp.async, A's fragments by ldmatrix, one mma.sync.
__global__ void __launch_bounds__(32) mma_kernel(float* d, const __nv_bfloat16* a, const unsigned* b) {
    __shared__ __align__(16) __nv_bfloat16 tile[16 * 16];
    const unsigned lane = threadIdx.x;
    const unsigned dst = (unsigned)__cvta_generic_to_shared(tile + lane * 8);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(a + lane * 8));
    asm volatile("cp.async.wait_all;\n" ::);
    __syncwarp();
    unsigned fa[4], fb[2] = {b[lane], b[32 + lane]};
    const unsigned row = (unsigned)__cvta_generic_to_shared(tile + (lane % 16) * 16 + (lane / 16) * 8);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(fa[0]), "=r"(fa[1]), "=r"(fa[2]), "=r"(fa[3]) : "r"(row));
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(fa[0]), "r"(fa[1]), "r"(fa[2]), "r"(fa[3]), "r"(fb[0]), "r"(fb[1]));
    for (int i = 0; i < 4; i++) d[lane * 4 + i] = c[i];
}
EOF
if ! out=$("$nvcc" -O3 -std=c++17 -cubin -arch=sm_90a "$tmp/fixture.cu" -o "$tmp/fixture.cubin" 2>&1); then
    fail "the fixture compiles" "$out"
    echo "test_sass_guards: $passed passed, $failed failed"; exit 1
fi

# The fixture's true expectations; each case below edits one line (sed) and expects the verdict.
cat > "$tmp/true.txt" <<'EOF'
copy16_kernel          threads=1024
copy128_kernel         ldg128 stg128
local_array_kernel     threads=64 local-ok
many_registers_kernel  threads=256
mma_kernel             hmma ldsm ldgsts
EOF
# expect NAME EXIT_CODE PATTERN SED_SCRIPT: the checker on the fixture with true.txt edited by SED_SCRIPT
# exits EXIT_CODE, and its output matches PATTERN (grep -E).
expect() {
    local name=$1 code=$2 pattern=$3 out status
    sed -E "$4" "$tmp/true.txt" > "$tmp/case.txt"
    out=$($guards check --expect "$tmp/case.txt" fixture="$tmp/fixture.cubin" 2>&1); status=$?
    if [ "$status" -eq "$code" ] && grep -qE "$pattern" <<<"$out"; then pass "$name"; else
        fail "$name: expected exit $code and /$pattern/, got exit $status" "$out"
    fi
}
expect "the fixture's true claims pass" 0 "sass_guards: 15 passed, 0 failed, 0 pending" ""
expect "16-bit loads claimed 128-bit fail" 1 "FAIL +fixture copy16_kernel: ldg128: 0 x" "s/^copy16_kernel .*/& ldg128/"
expect "16-bit stores claimed 128-bit fail" 1 "FAIL +fixture copy16_kernel: stg128: 0 x" "s/^copy16_kernel .*/& stg128/"
expect "HMMA claimed of a copy fails" 1 "FAIL +fixture copy128_kernel: hmma: 0 x" "s/^copy128_kernel .*/& hmma/"
expect "LDSM claimed of a copy fails" 1 "FAIL +fixture copy128_kernel: ldsm: 0 x" "s/^copy128_kernel .*/& ldsm/"
expect "LDGSTS claimed of a copy fails" 1 "FAIL +fixture copy128_kernel: ldgsts: 0 x" "s/^copy128_kernel .*/& ldgsts/"
expect "a feature for the object's label is checked" 1 "FAIL +fixture copy128_kernel: hmma: 0 x" "s/^copy128_kernel .*/& hmma@fixture/"
expect "local memory without local-ok fails" 1 "FAIL +fixture local_array_kernel: local memory: LOCAL 0 STACK [1-9]" "s/ local-ok//"
expect "130+ registers x 512 threads fail" 1 "FAIL +fixture many_registers_kernel: registers: 1[3-9][0-9] per thread x 512 .*over 65536" "s/threads=256/threads=512/"
expect "__launch_bounds__ wins over threads=" 0 "PASS +fixture copy128_kernel: registers: 14 per thread x 256 threads \(__launch_bounds__; the line's threads=512 not used" "s/^copy128_kernel /& threads=512 /"
expect "no launch bounds and no threads= fails" 1 "FAIL +fixture copy16_kernel: registers: .*no __launch_bounds__ and no threads=" "s/threads=1024//"
expect "a kernel without a line fails" 1 "FAIL +fixture copy16_kernel: listed: matches no line" "/^copy16_kernel/d"
expect "a line matching no kernel fails" 1 "FAIL +fixture .*case.txt:6: renamed_kernel matches no kernel" "\$a renamed_kernel threads=32"
expect "a pending claim is PENDING, not failed" 0 "PENDING fixture copy16_kernel: ldg128: 0 x .*issue item 23.2$" "s/^copy16_kernel .*/& ldg128:pending(23.2)/"
expect "a pending claim already true says so" 0 "PENDING fixture copy128_kernel: stg128: 1 x .*drop its :pending" "s/stg128/stg128:pending(23.2)/"
expect "an unknown token is an error" 2 "unknown token 'ldg129'" "s/^copy16_kernel .*/& ldg129/"
expect "an unknown label is an error" 2 "hmma@bf61: no object is labelled bf61" "s/^mma_kernel .*/& hmma@bf61/"

# The trainer's code.
read -ra object_args <<<"$objects"
out=$($guards check --expect test/sass_expectations.txt "${object_args[@]}" 2>&1); status=$?
grep -E "^(FAIL|PENDING)" <<<"$out" | sed 's/^/        /'
line=$(grep -E "^sass_guards: [0-9]+ passed" <<<"$out")
pending=$(grep -cE "^PENDING" <<<"$out")
if [ "$status" -eq 0 ] && [ -n "$line" ]; then pass "the trainer's kernels ($objects): ${line#sass_guards: }"; else
    fail "the trainer's kernels ($objects): exit $status" "$out"
fi
skipped=$((skipped + pending))
echo "test_sass_guards: $passed passed, $failed failed, $skipped skipped (skipped: the PENDING checks)"
[ "$failed" -eq 0 ]
