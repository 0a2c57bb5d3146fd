#!/usr/bin/env bash
# Every version of every dev/ benchmark, emulated on the CPU, in the bf16 and fp32 builds: each validates
# its small shapes against the CPU reference (DEV_SMALL_ONLY=1: nothing timed, no ceilings measured) and
# must exit 0. A version that exists only in bf16 (tensor-core code) exits 3 in the fp32 build, which is
# checked as such. The scheduling is varied: the bf16 build runs with blocks and lanes in reverse order.
# Usage: dev_versions.sh EMU_BUILD_DIR (build/emu); ends with "dev_versions_emu: N passed, M failed".
set -u
emu=${1:-build/emu}
benchmarks="rmsnorm swiglu rope classifier adamw embedding attention matmul residual swiglu_gemm"
passed=0; failed=0
for precision in bf16 fp32; do
    for b in $benchmarks; do
        bin=$emu/$precision/dev/$b
        n=$("$bin" --num-versions) || { echo "FAIL  $precision $b: --num-versions"; failed=$((failed + 1)); continue; }
        for v in $(seq 1 "$n"); do
            if [ "$precision" = bf16 ]; then order=reverse; else order=forward; fi
            start=$SECONDS
            out=$(DEV_SMALL_ONLY=1 EMU_BLOCK_ORDER=$order EMU_LANE_ORDER=$order "$bin" "$v" 2>&1); rc=$?
            checks=$(grep -c ' ok$' <<<"$out")
            if [ $rc -eq 3 ] && [ "$precision" = fp32 ] && grep -q "needs bf16 storage" <<<"$out"; then
                echo "ok    $precision $b v$v: bf16 only ($((SECONDS - start)) s)"; passed=$((passed + 1))
            elif [ $rc -eq 0 ] && [ "$checks" -gt 0 ] && ! grep -q "FAIL" <<<"$out"; then
                echo "ok    $precision $b v$v: $checks checks ($((SECONDS - start)) s)"; passed=$((passed + 1))
            else
                echo "FAIL  $precision $b v$v: exit code $rc, $checks checks passed"; grep -E "FAIL|error|emu:" <<<"$out" | head -5 | sed 's/^/      /'
                failed=$((failed + 1))
            fi
        done
    done
done
echo "dev_versions_emu: $passed passed, $failed failed"
[ $failed -eq 0 ]
