#!/usr/bin/env bash
# The GPU test runner (test/gpu_main.cpp) skips only where no NVIDIA driver is installed: given a
# runner binary (the argument, or $GPU_RUNNER, which `make test` sets), checks that
#   - a driver that is present but unusable fails the run, naming the CUDA error: simulated with CUDA's
#     stub libcuda.so.1 (which loads, and whose every call fails) first on the library path;
#   - without a driver, MIXLN_REQUIRE_GPU=1 (a GPU check) fails the run, and without it the run skips.
# The last two only where this machine has no driver. Ends with "test_gpu_runner: N passed, M failed".
set -u
runner=${1:-$GPU_RUNNER}
passed=0; failed=0
check() {  # check NAME EXPECTED_STATUS(0 or nonzero) PATTERN COMMAND...
    local name=$1 expect=$2 pattern=$3; shift 3
    local out status
    out=$("$@" 2>&1); status=$?
    if { [ "$expect" = 0 ] && [ $status -eq 0 ]; } || { [ "$expect" != 0 ] && [ $status -ne 0 ]; }; then
        if grep -qE "$pattern" <<<"$out"; then passed=$((passed + 1)); return; fi
    fi
    failed=$((failed + 1))
    echo "FAILED: $name (exit $status), expected ${expect/nonzero/non-zero} and /$pattern/ in:"; echo "$out" | head -5
}

stub=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/../lib64/stubs/libcuda.so
if [ -e "$stub" ]; then
    fake=$(mktemp -d)
    ln -s "$(readlink -f "$stub")" "$fake/libcuda.so.1"
    check "a present but unusable driver fails" nonzero "error: no usable CUDA device \(.+\) although an NVIDIA driver is installed" \
        env LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$runner"
    rm -rf "$fake"
fi
if [ ! -e /proc/driver/nvidia/version ] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    check "no driver: skipped" 0 "no NVIDIA driver, no GPU \(.+\); skipping [0-9]+ GPU test cases" "$runner"
    check "no driver, MIXLN_REQUIRE_GPU=1: fails" nonzero "error: no usable CUDA device \(.+\) although MIXLN_REQUIRE_GPU=1" \
        env MIXLN_REQUIRE_GPU=1 "$runner"
fi
echo "test_gpu_runner: $passed passed, $failed failed"
[ $failed -eq 0 ]
