# Sourced by the shell suites of Python scripts (test/test_scripts.sh, test/test_reproduce.sh): the
# counters, the two kinds of check and the closing line test/run_tests.sh reads. The suite sets SUITE
# (its name in that line) and PYTHON_MODULES (what its checks import: where one is missing, every
# check is counted as skipped) before sourcing this.
passed=0; failed=0; skipped=0
missing=
if ! python3 -c "import ${PYTHON_MODULES// /, }" 2>/dev/null; then
    missing=yes
    echo "$SUITE: Python packages missing, skipping all checks: pip install -r scripts/requirements.txt"
fi

# check NAME CMD...: passes when CMD exits 0; shows the end of CMD's output when it fails.
check() {
    local name=$1 out
    shift
    if [ -n "$missing" ]; then skipped=$((skipped + 1)); return; fi
    if out=$("$@" 2>&1); then
        passed=$((passed + 1)); echo "  ok    $name"
    else
        failed=$((failed + 1)); echo "  FAIL  $name"; tail -n 25 <<<"$out" | sed 's/^/        /'
    fi
}

# fails_with PATTERN CMD...: CMD exits non-zero, without a traceback, and its last line is an
# "error: ..." containing PATTERN.
fails_with() {
    local pattern=$1 out last
    shift
    if out=$("$@" 2>&1); then echo "$out"; echo "(exited 0; expected an error with: $pattern)"; return 1; fi
    last=$(tail -n 1 <<<"$out")
    if grep -q "^Traceback" <<<"$out" || [[ $last != *"error: "* || $last != *"$pattern"* ]]; then
        echo "$out"; echo "(expected a last line \"error: ...$pattern...\" and no traceback)"; return 1
    fi
}

# The closing line ("SUITE: N passed, M failed[, K skipped]"); returns non-zero if any check failed.
summary() {
    if [ "$skipped" -gt 0 ]; then
        echo "$SUITE: $passed passed, $failed failed, $skipped skipped"
    else
        echo "$SUITE: $passed passed, $failed failed"
    fi
    [ "$failed" -eq 0 ]
}
