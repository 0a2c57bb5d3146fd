#!/usr/bin/env bash
# The first minutes on a GPU (README "First run on a GPU"): runs everything that needs one, from the
# binaries `make gpu-check-build` left in build/gpu_check (built on a machine without a GPU; nothing is
# compiled here), each step under its own timeout, so that a hang costs one step and a failure does not
# stop the next. Writes OUT_DIR/report.md (pass counts, the kernel table, the throughput table, the
# first lines of each failure) and one log per step group: at most 8 files.
#   dev/gpu_check.sh [OUT_DIR]        default: $OUT if set, else build/gpu_check_report
# Where there is no GPU it says so in one line and exits 0; otherwise it exits 1 if any step failed.
#
# Steps and their time limits in seconds (530 in all, under 9 minutes):
#   device and driver (nvidia-smi)                                               10
#   test_gpu_kernels, test_gpu_trainer, bf16 then fp32                   4 x 40 = 160
#   compute-sanitizer memcheck, racecheck on a reduced kernel test set   2 x 50 = 100
#   dev/ benchmarks, every version: validation then timing (DEV_REPEATS=10)      90
#   trainer throughput, 71m 130m 250m 1b: 4 steps of 65536 tokens each          130
#   the one-rank NCCL path (ZeRO-1, all-reduce) bitwise against no NCCL, resume  40
set -u
cd "$(dirname "$0")/.."
if [ ! -e /proc/driver/nvidia/version ] && ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: no GPU here (no NVIDIA driver): nothing to run"
    exit 0
fi
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then  # a driver, but no GPU it can use
    echo "gpu-check: an NVIDIA driver is installed but nvidia-smi lists no GPU:"
    nvidia-smi -L 2>&1 | head -n 5
    exit 1
fi
bin=build/gpu_check
out=${1:-${OUT:-build/gpu_check_report}}
mkdir -p "$out"
report=$out/report.md
if [ ! -x $bin/bf16/test_gpu_kernels ]; then
    echo "gpu-check: no $bin/bf16/test_gpu_kernels: run make gpu-check-build (on any machine with nvcc) and carry $bin" |
        tee "$report"
    exit 1
fi
export MIXLN_REQUIRE_GPU=1  # a GPU test runner that finds no usable device fails instead of skipping

results=()    # one "| step | status | seconds |" row per step
summaries=()  # the test runners' closing lines "NAME: N passed, M failed", by step
failures=()   # the first lines of each failing step
# step NAME LOG LIMIT COMMAND...: runs COMMAND under LIMIT seconds, appending its output to LOG.
step() {
    local name=$1 log=$out/$2 limit=$3; shift 3
    local start=$SECONDS status tmp
    tmp=$(mktemp)
    echo "=== $name: $*" >>"$log"
    timeout --kill-after=5 "$limit" "$@" >"$tmp" 2>&1
    status=$?
    cat "$tmp" >>"$log"
    local seconds=$((SECONDS - start)) result=passed
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then result="TIMED OUT after ${limit}s"
    elif [ $status -ne 0 ]; then result="FAILED (exit $status)"; fi
    echo "gpu-check: $name: $result (${seconds}s)"
    results+=("| $name | $result | $seconds |")
    local summary
    summary=$(grep -E '^test_gpu_[a-z]+: [0-9]+ passed, [0-9]+ failed' "$tmp" | tail -n 1)
    [ -z "$summary" ] || summaries+=("- $name: ${summary#*: }")
    if [ "$result" != passed ]; then
        # The first lines that say what went wrong, else the last lines.
        local lines
        lines=$(grep -m 12 -E 'FAILED|[Ee]rror|ERROR|failed|VALIDATION|Invalid|Race|out of' "$tmp" || true)
        [ -n "$lines" ] || lines=$(tail -n 8 "$tmp")
        failures+=("**$name** ($result, full output in $(basename "$log")):"$'\n```\n'"$lines"$'\n```')
    fi
    rm -f "$tmp"
    return 0
}

# 1. The device and driver.
step "device and driver" info.log 10 sh -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv'

# 2. The GPU tests in both precisions. Their closing lines "NAME: N passed, M failed" go to the report.
for precision in bf16 fp32; do
    for test in test_gpu_kernels test_gpu_trainer; do
        step "$test $precision" tests.log 40 $bin/$precision/$test
    done
done

# 3. compute-sanitizer on the kernel tests with small shapes (Catch2 test names; a trailing * is a
# wildcard): out-of-bounds and misaligned accesses (memcheck), shared-memory hazards (racecheck: the
# kernels with shared memory).
sanitized="flash attention forward*,rmsnorm backward*,residual rmsnorm backward*,classifier: losses and*,global gradient norm matches*,embedding backward adds*,swiglu backward*,rope forward*,adamw steps*"
raced="flash attention forward*,rmsnorm backward*,classifier: losses and*,global gradient norm matches*"
step "compute-sanitizer memcheck" sanitizer.log 50 compute-sanitizer --tool memcheck --error-exitcode 1 \
    $bin/bf16/test_gpu_kernels "$sanitized"
step "compute-sanitizer racecheck" sanitizer.log 50 compute-sanitizer --tool racecheck --error-exitcode 1 \
    $bin/bf16/test_gpu_kernels "$raced"

# 4. Every dev/ benchmark at every version: each validates against the CPU reference, then times.
kernel_table=$out/kernel_table.md
step "dev/ benchmarks (dev/run_all.sh)" dev.log 90 sh -c \
    "DEV_REPEATS=10 DEV_BIN_DIR=$bin/bf16/dev dev/run_all.sh >$kernel_table"

# 5. Training throughput and peak memory of the Table 4 presets.
throughput=$out/throughput.txt
step "trainer throughput (dev/bench_trainer.sh)" bench.log 130 sh -c \
    "PRESETS='71m 130m 250m 1b' STEPS=4 SKIP=1 TOKENS_PER_STEP=65536 TRAIN_MIXLN=$bin/bf16/train_mixln \
     SHARD=$bin/random.bin dev/bench_trainer.sh >$throughput"

# 6. The NCCL path with one rank (RANK/WORLD_SIZE make train_mixln a rank of a torchrun-style launch)
# against the plain path, bitwise: log, gradient norms, checkpoint; then a ZeRO-1 resume.
step "one-rank NCCL path bitwise (ZeRO-1, all-reduce, resume)" nccl.log 40 bash -c '
    set -e
    bin=$1; dir=build/gpu_check_nccl; rm -rf $dir
    run="-e tiny -H 2 -i $bin/random_small.bin -j $bin/random_small.bin -b 8 -t 128 -d 2048 -x 20 -v 10 -m 4 -y 10 -c 10 -k 0"
    $bin/bf16/train_mixln $run -o $dir/plain
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -o $dir/zero1
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -Z 0 -o $dir/allreduce
    for d in zero1 allreduce; do for f in log.csv grad_norms.csv ckpt_00000020.bin; do
        cmp $dir/plain/$f $dir/$d/$f; done; done
    mkdir -p $dir/resumed && cp $dir/zero1/ckpt_00000010.bin $dir/resumed/
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -o $dir/resumed -r $dir/resumed
    cmp $dir/zero1/ckpt_00000020.bin $dir/resumed/ckpt_00000020.bin
    echo "bitwise the same: plain, ZeRO-1, all-reduce, ZeRO-1 resumed"' _ $bin

# The report.
{
    echo "# gpu-check report"
    echo
    echo "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1); $(date -u '+%Y-%m-%d %H:%M UTC'); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${results[@]}"
    echo
    echo "## GPU tests"
    echo
    if [ ${#summaries[@]} -gt 0 ]; then printf '%s\n' "${summaries[@]}"; else echo "- no test runner reached its summary line"; fi
    echo
    echo "## Kernels (dev/run_all.sh, DEV_REPEATS=10)"
    echo
    if [ -s "$kernel_table" ]; then cat "$kernel_table"; else echo "no table (see dev.log)"; fi
    echo
    echo "## Trainer throughput (dev/bench_trainer.sh, 4 steps of 65536 tokens, the first skipped)"
    echo
    echo '```'
    if [ -s "$throughput" ]; then cat "$throughput"; else echo "no table (see bench.log)"; fi
    echo '```'
    if [ ${#failures[@]} -gt 0 ]; then
        echo
        echo "## Failures"
        for f in "${failures[@]}"; do echo; echo "$f"; done
    fi
} >"$report"
rm -f "$kernel_table" "$throughput"  # both are in the report
echo "gpu-check: report in $report"
[ ${#failures[@]} -eq 0 ]
