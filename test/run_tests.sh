#!/usr/bin/env bash
# Runs each test given (a binary, or an executable script such as test/test_scripts.sh) with its full
# output in LOG_DIR/NAME.log (default build/test_logs), prints one line per test, its "N passed, M
# failed" summary and the log's path, with the first failures when there are any, then a closing line
# adding them up. Exits non-zero if any test failed or any of them ended without its summary.
# OpenMP threads sleep at barriers unless OMP_WAIT_POLICY says otherwise (see scripts/demo.sh).
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
log_dir=${LOG_DIR:-build/test_logs}
mkdir -p "$log_dir"
passed=0; failed=0; skipped=0; broken=0
for bin in "$@"; do
    name=$(basename "$bin"); log=$log_dir/${name%.sh}.log
    start=$SECONDS
    "$bin" > "$log" 2>&1
    rc=$?
    line=$(grep -E '^[A-Za-z0-9_.-]+: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "$name: ended without a summary (exit code $rc; crashed?), log: $log"
        tail -n 5 "$log" | sed 's/^/    /'
        broken=$((broken + 1)); continue
    fi
    echo "$line  ($((SECONDS - start)) s, log: $log)"
    p=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")
    f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
    s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    # the first failures: Catch2's "file:line: FAILED:", test_scripts.sh's "FAIL  check"
    [ "$f" -gt 0 ] && grep -E ': FAILED:|^ *FAIL ' "$log" | head -n 10 | sed 's/^ */    /'
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "    but it exited with code $rc"; broken=$((broken + 1)); fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
failed=$((failed + broken))
if [ "$skipped" -gt 0 ]; then echo "total: $passed passed, $failed failed, $skipped skipped"; else echo "total: $passed passed, $failed failed"; fi
[ "$failed" -eq 0 ]
