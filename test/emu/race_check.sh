#!/usr/bin/env bash
# The race checker (EMU_RACECHECK) on a reduced set: every version of every dev/ benchmark on its small
# shapes (version 1 of each is the trainer's kernel in kernels/), built with ThreadSanitizer. A report
# of a race, or a failed check, fails. Ends with "race_check_emu: N passed, M failed".
set -u
emu=${1:-build/emu}/race
benchmarks="rmsnorm swiglu rope classifier adamw embedding attention"
export TSAN_OPTIONS="exitcode=66 report_signal_unsafe=0"
passed=0; failed=0
for b in $benchmarks; do
    bin=$emu/dev/$b
    n=$("$bin" --num-versions) || { echo "FAIL  $b: --num-versions"; failed=$((failed + 1)); continue; }
    for v in $(seq 1 "$n"); do
        start=$SECONDS
        out=$(DEV_SMALL_ONLY=1 "$bin" "$v" 2>&1); rc=$?
        races=$(grep -c "WARNING: ThreadSanitizer" <<<"$out")
        if [ $rc -eq 0 ] && [ "$races" -eq 0 ]; then
            echo "ok    $b v$v: no race ($((SECONDS - start)) s)"; passed=$((passed + 1))
        else
            echo "FAIL  $b v$v: exit code $rc, $races race reports"
            grep -A12 "WARNING: ThreadSanitizer" <<<"$out" | grep -E "WARNING|#0 |Previous" | head -9 | sed 's/^/      /'
            failed=$((failed + 1))
        fi
    done
done
echo "race_check_emu: $passed passed, $failed failed"
[ $failed -eq 0 ]
