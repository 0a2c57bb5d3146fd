#!/usr/bin/env bash
# Runs each test given (a binary, or an executable script such as test/test_scripts.sh), then prints
# one closing line adding up their "N passed, M failed" summaries. Exits non-zero if any test failed
# or any of them ended without its summary.
set -u
passed=0; failed=0; skipped=0; broken=0
for bin in "$@"; do
    out=$(mktemp)
    "$bin" 2>&1 | tee "$out"
    line=$(grep -E '^[A-Za-z0-9_.-]+: [0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
    rm -f "$out"
    if [ -z "$line" ]; then echo "run_tests: $bin ended without a summary (crashed?)"; broken=$((broken + 1)); continue; fi
    p=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")
    f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
    s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
failed=$((failed + broken))
if [ "$skipped" -gt 0 ]; then echo "total: $passed passed, $failed failed, $skipped skipped"; else echo "total: $passed passed, $failed failed"; fi
[ "$failed" -eq 0 ]
