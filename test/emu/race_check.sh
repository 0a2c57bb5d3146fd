#!/usr/bin/env bash
# The race checker (EMU_RACECHECK) on a reduced set: every version of every dev/ benchmark on its small
# shapes (version 1 of each is the trainer's kernel in kernels/), built with ThreadSanitizer; all but
# dev/matmul, whose products run in the emulated cuBLASLt, which has no threads to race. A report
# of a race, or a failed check, fails. Two runs at a time (each emulated run uses one core); the
# results are printed in order. Ends with "race_check_emu: N passed, M failed".
set -u
emu=${1:-build/emu}/race
jobs=${RACE_CHECK_JOBS:-2}
benchmarks="rmsnorm swiglu rope classifier adamw embedding attention residual swiglu_gemm"
export TSAN_OPTIONS="exitcode=66 report_signal_unsafe=0"
tmp=$(mktemp -d /tmp/mixln_race_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0
runs=()  # "benchmark version", in order
for b in $benchmarks; do
    n=$("$emu/dev/$b" --num-versions) || { echo "FAIL  $b: --num-versions"; failed=$((failed + 1)); continue; }
    for v in $(seq 1 "$n"); do runs+=("$b $v"); done
done
# run B V: the run's output in $tmp/B_V.out, its exit code and seconds in $tmp/B_V.rc
run() {
    local start=$SECONDS
    DEV_SMALL_ONLY=1 "$emu/dev/$1" "$2" > "$tmp/$1_$2.out" 2>&1
    echo "$? $((SECONDS - start))" > "$tmp/$1_$2.rc"
}
for r in "${runs[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    run $r &
done
wait
for r in "${runs[@]}"; do
    set -- $r
    read -r rc seconds < "$tmp/$1_$2.rc"
    races=$(grep -c "WARNING: ThreadSanitizer" "$tmp/$1_$2.out")
    if [ "$rc" -eq 0 ] && [ "$races" -eq 0 ]; then
        echo "ok    $1 v$2: no race ($seconds s)"; passed=$((passed + 1))
    else
        echo "FAIL  $1 v$2: exit code $rc, $races race reports"
        grep -A12 "WARNING: ThreadSanitizer" "$tmp/$1_$2.out" | grep -E "WARNING|#0 |Previous" | head -9 | sed 's/^/      /'
        failed=$((failed + 1))
    fi
done
echo "race_check_emu: $passed passed, $failed failed"
[ $failed -eq 0 ]
