#!/usr/bin/env bash
# make gpu-check's correctness phase (dev/gpu_check.sh, docs/gpu.md "First run on a GPU") on the CPU,
# from the emulated binaries (GPU_CHECK_EMULATED=1), so that the script's own logic has run before a
# GPU's short session depends on it. Ends with "gpu_check_emu: N passed, M failed".
#   test/emu/gpu_check_emu.sh [EMU_DIR]   default build/emu (test_gpu_{kernels,trainer}-{bf16,fp32},
#                                         {bf16,fp32}/train_mixln_emu)
# 1. The real emulated binaries: exit 0; report.md has the 5 steps passed (4 test runners, the
#    trainer's bitwise runs), each runner's pass count with no failure, the 6 steps that need a GPU
#    (nvidia-smi, compute-sanitizer x2, the 3 timed ones) as not run in emulation with a reason, no
#    Failures section; bitwise.log says which runs were bitwise the same; tests.log holds the runners'
#    output.
# 2. Two planted failures, with stand-ins for the binaries (a second's work): the fp32 kernel runner
#    failing one test case, and a trainer whose -D 0 run logs another loss (the others write the same
#    files). Exit 1; both steps FAILED in the table and in the Failures section with their lines (the
#    runner's FAILED line, cmp's "differ" naming log.csv); the other runners still passed.
# 3. compute-sanitizer's test filters each name a test case of the kernel runner.
# About 45 s of CPU on the 2-core machine, nearly all in part 1's trainer runs.
set -u
cd "$(dirname "$0")/../.."
emu=${1:-build/emu}
tmp=$(mktemp -d /tmp/mixln_gpu_check_emu_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0

# check NAME: passes if the function check_NAME succeeds; its output is printed on failure.
check() {
    local out
    if out=$("check_$1" 2>&1); then passed=$((passed + 1)); echo "ok    $2"
    else failed=$((failed + 1)); echo "FAIL  $2"; sed 's/^/      /' <<<"$out"; fi
}
# has FILE PATTERN...: every extended regular expression matches a line of FILE.
has() {
    local file=$1 ok=0; shift
    for pattern in "$@"; do grep -qE -- "$pattern" "$file" || { echo "no line /$pattern/ in $file"; ok=1; }; done
    return $ok
}

not_run_steps=("device and driver" "compute-sanitizer memcheck" "compute-sanitizer racecheck" "dev/ benchmarks"
               "trainer throughput 71m 130m 250m" "trainer throughput 1b")

# 1. The emulated binaries.
GPU_CHECK_EMULATED=1 GPU_CHECK_EMU=$emu GPU_CHECK_WORK=$tmp/work dev/gpu_check.sh "$tmp/report" >"$tmp/out.txt" 2>&1
code=$?
report=$tmp/report/report.md
check_emulated() {
    local ok=0
    [ $code -eq 0 ] || { echo "exit code $code"; ok=1; }
    has "$report" '^emulated on the CPU' '^11 steps in [0-9]+ s' || ok=1
    for runner in test_gpu_kernels test_gpu_trainer; do
        for p in bf16 fp32; do
            has "$report" "^\| $runner $p \| passed \| [0-9]+ \|$" "^- $runner $p: [1-9][0-9]* passed, 0 failed$" || ok=1
        done
    done
    has "$report" '^\| trainer bitwise: one-rank NCCL .* \| passed \| [0-9]+ \|$' || ok=1
    [ "$(grep -c '| passed |' "$report")" -eq 5 ] || { echo "$(grep -c '| passed |' "$report") steps passed, not 5"; ok=1; }
    for s in "${not_run_steps[@]}"; do has "$report" "^\| $s.* \| not run in emulation: [a-z].* \| - \|$" || ok=1; done
    ! grep -q '^## Failures' "$report" || { echo "a Failures section"; ok=1; }
    has "$tmp/report/bitwise.log" '^bitwise the same: plain, zero1 allreduce zero1_recompute nographs, ZeRO-1 resumed$' || ok=1
    [ "$(grep -cE '^test_gpu_(kernels|trainer): [0-9]+ passed, 0 failed' "$tmp/report/tests.log")" -eq 4 ] ||
        { echo "tests.log lacks the 4 runners' summaries"; ok=1; }
    [ $ok -eq 0 ] || { cat "$tmp/out.txt" "$report"; tail -n 20 "$tmp/report/bitwise.log"; }
    return $ok
}
check emulated "the correctness phase on the emulated binaries: 5 steps passed with their counts, 6 not run (with reasons)"

# 2. Planted failures: stand-ins in the emulated layout.
fake=$tmp/fake
mkdir -p "$fake/bf16"
for runner in test_gpu_kernels-bf16 test_gpu_trainer-bf16 test_gpu_trainer-fp32; do
    printf '#!/bin/sh\necho "%s: 2 passed, 0 failed"\n' "${runner%-*}" >"$fake/$runner"
done
cat >"$fake/test_gpu_kernels-fp32" <<'EOF'
#!/bin/sh
echo "test/test_gpu_kernels.cu:99: FAILED: planted: rmsnorm forward differs"
echo "test_gpu_kernels: 2 passed, 1 failed"
exit 1
EOF
# A trainer that writes log.csv, grad_norms.csv and a checkpoint every -c steps up to -x; under -D 0
# its losses differ.
cat >"$fake/bf16/train_mixln_emu" <<'EOF'
#!/bin/bash
[ "${1:-}" != -h ] || { echo "  -D 0|1     CUDA graphs"; exit 0; }
loss=5.5 out= steps= every= from=0
while [ $# -gt 0 ]; do
    case $1 in
        -o) out=$2 ;; -x) steps=$2 ;; -c) every=$2 ;; -D) [ "$2" = 1 ] || loss=5.6 ;;
        -r) from=$(ls "$2" | sed -nE 's/ckpt_0*([0-9]+)\.bin/\1/p' | sort -n | tail -n 1) ;;
    esac
    shift 2
done
mkdir -p "$out"
echo step,loss >"$out/log.csv" && echo step,norm >"$out/grad_norms.csv"
for s in $(seq $((from + 1)) "$steps"); do
    echo "$s,$loss" >>"$out/log.csv"
    if [ $((s % every)) -eq 0 ] || [ "$s" -eq "$steps" ]; then
        head -c 300 /dev/zero | tr '\0' "$s" >"$out/$(printf 'ckpt_%08d.bin' "$s")"
    fi
done
EOF
chmod +x "$fake"/* "$fake"/bf16/*
GPU_CHECK_EMULATED=1 GPU_CHECK_EMU=$fake GPU_CHECK_WORK=$tmp/fake_work dev/gpu_check.sh "$tmp/planted" >"$tmp/planted.txt" 2>&1
code=$?
planted=$tmp/planted/report.md
check_planted() {
    local ok=0
    [ $code -eq 1 ] || { echo "exit code $code, not 1"; ok=1; }
    has "$planted" '^\| test_gpu_kernels fp32 \| FAILED \(exit 1\) \| [0-9]+ \|$' '^- test_gpu_kernels fp32: 2 passed, 1 failed$' \
        '^\*\*test_gpu_kernels fp32\*\* \(FAILED \(exit 1\), full output in tests.log\):$' \
        '^test/test_gpu_kernels.cu:99: FAILED: planted: rmsnorm forward differs$' \
        '^\| trainer bitwise: one-rank NCCL .* \| FAILED \(exit 1\) \| [0-9]+ \|$' \
        '^\*\*trainer bitwise: one-rank NCCL .*\*\* \(FAILED \(exit 1\), full output in bitwise.log\):$' \
        'plain/log.csv .*nographs/log.csv differ' '^## Failures$' || ok=1
    [ "$(grep -c '| passed |' "$planted")" -eq 3 ] || { echo "$(grep -c '| passed |' "$planted") steps passed, not 3"; ok=1; }
    ! grep -q '^bitwise the same' "$tmp/planted/bitwise.log" || { echo "bitwise.log says bitwise the same"; ok=1; }
    [ $ok -eq 0 ] || { cat "$tmp/planted.txt" "$planted"; }
    return $ok
}
check planted "planted: a failing test runner and a trainer whose -D 0 run differs are failed steps, exit 1"

# 3. compute-sanitizer's test filters (dev/gpu_check.sh's sanitized and raced lists), which only a GPU
#    runs: each names at least one test case of the kernel runner (a renamed test would leave the
#    sanitizer step failing on the GPU, or checking less than it says).
check_filters() {
    local names ok=0 list p n found
    names=$("$emu/test_gpu_kernels-bf16" --list-tests 2>/dev/null | sed -n 's/^  //p')
    [ -n "$names" ] || { echo "no test names from $emu/test_gpu_kernels-bf16 --list-tests"; return 1; }
    for list in sanitized raced; do
        IFS=, read -ra patterns <<<"$(sed -n "s/^$list=\"\(.*\)\"$/\1/p" dev/gpu_check.sh)"
        [ ${#patterns[@]} -gt 0 ] || { echo "no $list= line in dev/gpu_check.sh"; ok=1; }
        for p in "${patterns[@]}"; do
            found=0
            while IFS= read -r n; do
                case "$n" in $p) found=1; break ;; esac
            done <<<"$names"
            [ $found -eq 1 ] || { echo "$list: no test case matches \"$p\""; ok=1; }
        done
    done
    return $ok
}
check filters "compute-sanitizer's test filters in dev/gpu_check.sh each name a kernel test case"

echo "gpu_check_emu: $passed passed, $failed failed"
[ $failed -eq 0 ]
