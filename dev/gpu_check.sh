#!/usr/bin/env bash
# The first minutes on a GPU (docs/gpu.md, "First run on a GPU"): runs everything that needs one, from the
# binaries `make gpu-check-build` left in build/gpu_check (built on a machine without a GPU; nothing is
# compiled here), each step under its own time limit, so that a hang costs one step and a failure does
# not stop the next. Writes OUT_DIR/report.md (each step's result and time, the test runners' pass
# counts, the kernel table, the trainer's throughput before and after issue 12 with dev/cost_model.py's
# prediction for the same runs, the first lines of each failure) and one log per group of steps: 7 files.
#   dev/gpu_check.sh [OUT_DIR]   default: $OUT if set, else build/gpu_check_report
#   GPU_CHECK_BIN=DIR            the binaries (default build/gpu_check)
#   GPU_CHECK_WORK=DIR           the trainer runs' scratch space (default build/gpu_check_work)
#   GPU_CHECK_EMULATED=1         no GPU: phase 2 on the CPU, from the emulated binaries of make test-emu
#                                (build/emu, or GPU_CHECK_EMU=DIR: test_gpu_{kernels,trainer}-{bf16,fp32},
#                                bf16/train_mixln_emu), so that this script's own logic runs in CI
#                                (test/emu/gpu_check_emu.sh). The test runners run a few test cases each
#                                and the trainer the tiny shapes (see below); the steps that need a GPU
#                                (nvidia-smi, compute-sanitizer, every timing) are reported as not run.
# Where there is no GPU it says so in one line and exits 0; otherwise it exits 1 if any step failed.
#
# Phases run one after another. The steps of a phase run side by side: only checks of correctness
# share the GPU, every timed step has it alone. A phase lasts at most its longest limit plus 5 s (the
# kill after a time-out). Limits in seconds (525 in all at worst, under 9 minutes):
#   1. device and driver (nvidia-smi)                                                         10
#   2. side by side, each under its own limit:                                               120
#      test_gpu_kernels and test_gpu_trainer in bf16 and fp32 (4 x 120); compute-sanitizer
#      memcheck and racecheck on a reduced kernel test set (2 x 120); the trainer bitwise:
#      one-rank NCCL (ZeRO-1, all-reduce, -R 1, resume) and CUDA graphs off (-D 0) against the
#      plain run (120)
#   3. dev/ benchmarks, every version: validation then timing (DEV_REPEATS=10)                120
#   4. trainer throughput, 71m 130m 250m: before issue 12, after, after with -D 0              110
#   5. trainer throughput, 1b: before issue 12, after                                         140
#   the kill margin, 5 x 5                                                                     25
# (Each trainer run: 5 steps of 65536 tokens, the first 2 not counted. The 1b runs are dominated by
# the host's initialization of 1.3B weights and, before issue 12, its 16 GB final checkpoint.)
set -u
cd "$(dirname "$0")/.."
emulated=${GPU_CHECK_EMULATED:-0}
if [ "$emulated" = 1 ]; then
    :  # no driver needed
elif [ ! -e /proc/driver/nvidia/version ] && ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: no GPU here (no NVIDIA driver): nothing to run"
    exit 0
elif ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then  # a driver, but no GPU it can use
    echo "gpu-check: an NVIDIA driver is installed but nvidia-smi lists no GPU:"
    nvidia-smi -L 2>&1 | head -n 5
    exit 1
fi
bin=${GPU_CHECK_BIN:-build/gpu_check}
work=${GPU_CHECK_WORK:-build/gpu_check_work}
out=${1:-${OUT:-build/gpu_check_report}}
mkdir -p "$out"
report=$out/report.md
state=$(mktemp -d)  # per step: its log's name, output, result row, test summary, failure
trap 'rm -rf "$state"' EXIT
if [ "$emulated" = 1 ]; then
    # build/gpu_check's layout, linked to the emulated binaries, and a small random shard.
    emu=${GPU_CHECK_EMU:-build/emu}
    bin=$state/emulated_bin
    mkdir -p $bin/bf16 $bin/fp32
    links=("bf16/train_mixln bf16/train_mixln_emu")
    for p in bf16 fp32; do links+=("$p/test_gpu_kernels test_gpu_kernels-$p" "$p/test_gpu_trainer test_gpu_trainer-$p"); done
    for link in "${links[@]}"; do
        set -- $link
        [ -x "$emu/$2" ] || { echo "gpu-check: no $emu/$2: run make test-emu (or the emulated targets) first" | tee "$report"; exit 1; }
        ln -s "$(cd "$(dirname "$emu/$2")" && pwd)/$(basename "$2")" $bin/$1
    done
    python3 scripts/make_random_shard.py --out $bin/random_small.bin --tokens 20000 --vocab-size 256 >/dev/null
elif [ ! -x $bin/bf16/test_gpu_kernels ]; then
    echo "gpu-check: no $bin/bf16/test_gpu_kernels: run make gpu-check-build (on any machine with nvcc) and carry $bin" |
        tee "$report"
    exit 1
fi
export MIXLN_REQUIRE_GPU=1  # a GPU test runner that finds no usable device fails instead of skipping
rm -rf "$work"
mkdir -p "$work"

steps=0        # steps started
phase_limit=0  # the longest limit of the phase's steps
worst_case=0   # seconds, the phases so far at their limits
# step NAME LOG LIMIT COMMAND...: runs COMMAND under LIMIT seconds, its output going to LOG; waits.
# step_beside: the same in the background, beside the phase's other steps. end_phase waits for them.
step() { begin_step "$3"; run_step $steps "$@"; }
step_beside() { begin_step "$3"; run_step $steps "$@" & }
begin_step() { steps=$((steps + 1)); [ "$1" -le $phase_limit ] || phase_limit=$1; }
end_phase() { wait; worst_case=$((worst_case + phase_limit + 5)); phase_limit=0; }
# not_run NAME REASON: a step that needs a GPU, in emulation: reported as not run, neither passed nor failed.
not_run() {
    steps=$((steps + 1))
    echo "gpu-check: $1: not run in emulation ($2)"
    echo "| $1 | not run in emulation: $2 | - |" >$state/$steps.row
}

run_step() {
    local id=$1 name=$2 log=$3 limit=$4; shift 4
    local start=$SECONDS status output=$state/$id.out
    echo "$log" >$state/$id.log
    echo "=== $name: $*" >$output
    timeout --kill-after=5 "$limit" "$@" >>$output 2>&1
    status=$?
    local seconds=$((SECONDS - start)) result=passed
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then result="TIMED OUT after ${limit}s"
    elif [ $status -ne 0 ]; then result="FAILED (exit $status)"; fi
    echo "gpu-check: $name: $result (${seconds}s)"
    echo "| $name | $result | $seconds |" >$state/$id.row
    local summary
    summary=$(grep -E '^test_gpu_[a-z]+: [0-9]+ passed, [0-9]+ failed' $output | tail -n 1)
    [ -z "$summary" ] || echo "- $name: ${summary#*: }" >$state/$id.summary
    if [ "$result" != passed ]; then
        # The first lines that say what went wrong, else the last lines.
        local lines
        lines=$(tail -n +2 $output | grep -m 12 -E 'FAILED|[Ee]rror|ERROR|failed|VALIDATION|Invalid|Race|out of|differ' || true)
        [ -n "$lines" ] || lines=$(tail -n +2 $output | tail -n 8)
        [ -n "$lines" ] || lines="(no output)"
        printf '**%s** (%s, full output in %s):\n```\n%s\n```\n' "$name" "$result" "$log" "$lines" >$state/$id.failure
    fi
}

# 1. The device and driver.
if [ "$emulated" = 1 ]; then
    not_run "device and driver" "no NVIDIA driver for nvidia-smi"
else
    step "device and driver" info.log 10 sh -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv'
    end_phase
fi

# 2. Correctness, side by side (16 CPU cores: 2 OpenMP threads each). In emulation, on a CPU that
# the five steps share with whatever else runs there, each step may take 3 times its limit. The
# trainer's runs compared bitwise keep cuBLASLt's first algorithm for each product
# (MIXLN_MATMUL_TIMING=0, kernels/matmul.cuh): a timed choice may differ between runs.
export OMP_NUM_THREADS=2
limit=120
[ "$emulated" != 1 ] || limit=360
#  The GPU tests in both precisions. Their closing lines "NAME: N passed, M failed" go to the report.
#  In emulation, a few quick test cases of each (Catch2 filters): make test-emu runs them all, in 4
#  minutes; here the step is what is tested.
declare -A cases=([test_gpu_kernels]="" [test_gpu_trainer]="")
[ "$emulated" != 1 ] || cases=([test_gpu_kernels]="rmsnorm forward*,swiglu forward*,adamw steps*"
                              [test_gpu_trainer]="ZeRO-1's buckets padded*")
for precision in bf16 fp32; do
    for test in test_gpu_kernels test_gpu_trainer; do
        first_algorithms=()
        [ $test != test_gpu_trainer ] || first_algorithms=(env MIXLN_MATMUL_TIMING=0)
        step_beside "$test $precision" tests.log $limit "${first_algorithms[@]}" $bin/$precision/$test \
            ${cases[$test]:+"${cases[$test]}"}
    done
done
#  compute-sanitizer on the kernel tests with small shapes (Catch2 test names; a trailing * is a
#  wildcard): out-of-bounds and misaligned accesses (memcheck), shared-memory hazards (racecheck: the
#  kernels with shared memory).
sanitized="flash attention forward*,rmsnorm backward*,classifier: losses*,global gradient norm matches*,embedding backward adds*,swiglu backward*,rope forward*,adamw steps*"
raced="flash attention forward*,rmsnorm backward*,classifier: losses*,global gradient norm matches*"
if [ "$emulated" = 1 ]; then
    for tool in memcheck racecheck; do
        not_run "compute-sanitizer $tool" "it instruments kernels on a GPU; emulation has its own: guard bytes, the race checker"
    done
else
    step_beside "compute-sanitizer memcheck" sanitizer.log 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
        $bin/bf16/test_gpu_kernels "$sanitized"
    step_beside "compute-sanitizer racecheck" sanitizer.log 120 compute-sanitizer --tool racecheck --error-exitcode 1 \
        $bin/bf16/test_gpu_kernels "$raced"
fi
#  The whole trainer, bitwise, against the plain run (log, gradient norms, checkpoint): the NCCL path
#  with one rank (RANK/WORLD_SIZE make train_mixln a rank of a torchrun-style launch), ZeRO-1 and
#  all-reduce, with 2 micro-batches a step, so that the second one's backward starts the per-layer
#  sums, and with -R 1 (recomputed layers run between the sums' starts); CUDA graphs off (-D 0, where
#  the trainer has the flag); then a ZeRO-1 resume. In emulation: micro-batches of 2 x 48 tokens
#  (about 1.4 s of CPU each), 3 steps (the third replays both graphs), checkpoints at steps 2 and 3.
shape="-b 8 -t 128 -d 2048 -x 20 -v 10 -m 4 -y 10 -c 10" middle=10 last=20
[ "$emulated" != 1 ] || { shape="-b 2 -t 48 -d 192 -x 3 -v 3 -m 1 -y 1 -c 2" middle=2 last=3; }
step_beside "trainer bitwise: one-rank NCCL (ZeRO-1, all-reduce, -R 1, resume), graphs off" bitwise.log $limit bash -c '
    set -e
    bin=$1; dir=$2/bitwise
    export MIXLN_MATMUL_TIMING=0
    run="-e tiny -H 2 -i $bin/random_small.bin -j $bin/random_small.bin $3 -k 0"
    middle=$(printf "ckpt_%08d.bin" $4) last=$(printf "ckpt_%08d.bin" $5)
    $bin/bf16/train_mixln $run -o $dir/plain
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -o $dir/zero1
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -Z 0 -o $dir/allreduce
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -R 1 -o $dir/zero1_recompute
    variants="zero1 allreduce zero1_recompute"
    if $bin/bf16/train_mixln -h | grep -qE "^ +-D "; then
        $bin/bf16/train_mixln $run -D 0 -o $dir/nographs
        variants="$variants nographs"
    else
        echo "(this train_mixln has no -D: no graphs-off run)"
    fi
    # a checkpoint but its run id (header slot 28) and so its CRC (slot 27): bytes 216-231
    but_run_id() { head -c 216 "$1"; tail -c +233 "$1"; }
    for d in $variants; do
        for f in log.csv grad_norms.csv; do cmp $dir/plain/$f $dir/$d/$f; done
        cmp <(but_run_id $dir/plain/$last) <(but_run_id $dir/$d/$last)
    done
    mkdir -p $dir/resumed && cp $dir/zero1/$middle $dir/resumed/
    RANK=0 WORLD_SIZE=1 $bin/bf16/train_mixln $run -o $dir/resumed -r $dir/resumed
    cmp $dir/zero1/$last $dir/resumed/$last
    echo "bitwise the same: plain, $variants, ZeRO-1 resumed"' _ $bin "$work" "$shape" $middle $last
end_phase
unset OMP_NUM_THREADS

# 3. Every dev/ benchmark at every version: each validates against the CPU reference, then times.
kernel_table=$state/kernel_table.md
if [ "$emulated" = 1 ]; then
    not_run "dev/ benchmarks (dev/run_all.sh)" "timings (their validation: test/emu/dev_versions.sh)"
    not_run "trainer throughput 71m 130m 250m (dev/bench_trainer.sh)" "timings"
    not_run "trainer throughput 1b (dev/bench_trainer.sh)" "timings"
else
    step "dev/ benchmarks (dev/run_all.sh)" dev.log 120 bash -c \
        'DEV_REPEATS=10 DEV_BIN_DIR=$1/bf16/dev dev/run_all.sh >$2' _ $bin "$kernel_table"
    end_phase

    # 4, 5. Training throughput and peak memory of the Table 4 presets, the trainer before issue 12 (the
    # commit of make gpu-check-build's GPU_CHECK_BEFORE, where it was built) beside this one, with CUDA
    # graphs and, where the trainer has -D, without. 1b without graphs is left out: its steps are long
    # enough for launch gaps not to matter, and its runs are the slowest.
    new=$bin/bf16/train_mixln
    after=("after=$new -c -1")
    if $new -h | grep -qE '^ +-D '; then after=("after=$new -c -1 -D 1" "after-D0=$new -c -1 -D 0"); fi
    before=()
    [ ! -x $bin/before/train_mixln ] || before=("before=$bin/before/train_mixln")
    # env PRESETS=... "${bench[@]}" TABLE VARIANT...: dev/bench_trainer.sh, its table to TABLE
    bench=(STEPS=5 SKIP=2 TOKENS_PER_STEP=65536 SHARD=$bin/random.bin BENCH_DIR="$work/bench"
           bash -c 'dev/bench_trainer.sh "${@:2}" >"$1"' _)
    step "trainer throughput 71m 130m 250m (dev/bench_trainer.sh)" bench.log 110 env PRESETS="71m 130m 250m" "${bench[@]}" \
        $state/throughput_small.txt "${before[@]}" "${after[@]}"
    end_phase
    step "trainer throughput 1b (dev/bench_trainer.sh)" bench.log 140 env PRESETS=1b "${bench[@]}" \
        $state/throughput_1b.txt "${before[@]}" "${after[0]}"
    end_phase
fi

# The logs, in step order, and the report.
for id in $(seq 1 $steps); do [ ! -e $state/$id.log ] || rm -f "$out/$(cat $state/$id.log)"; done  # a previous run's
for id in $(seq 1 $steps); do [ ! -e $state/$id.log ] || cat $state/$id.out >>"$out/$(cat $state/$id.log)"; done
{
    echo "# gpu-check report"
    echo
    if [ "$emulated" = 1 ]; then device="emulated on the CPU ($emu), no GPU"
    else device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1); fi
    echo "$device; $(date -u '+%Y-%m-%d %H:%M UTC'); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "$steps steps in $SECONDS s (at most $worst_case s if every step had run to its limit)."
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    for id in $(seq 1 $steps); do cat $state/$id.row; done
    echo
    echo "## GPU tests"
    echo
    if ls $state/*.summary >/dev/null 2>&1; then
        for id in $(seq 1 $steps); do [ ! -e $state/$id.summary ] || cat $state/$id.summary; done
    else
        echo "- no test runner reached its summary line"
    fi
    echo
    echo "## Kernels (dev/run_all.sh, DEV_REPEATS=10)"
    echo
    if [ -s "$kernel_table" ]; then cat "$kernel_table"
    elif [ "$emulated" = 1 ]; then echo "not run in emulation"
    elif [ -s "$bin/bf16/dev/run_all.log" ]; then
        echo "The dev step did not finish (see dev.log); the runs that did:"
        echo
        dev/run_all.sh --table "$bin/bf16/dev/run_all.log"
    else echo "no table (see dev.log)"; fi
    echo
    echo "## Trainer throughput (dev/bench_trainer.sh, 5 steps of 65536 tokens at T 256, the first 2 not counted)"
    echo
    echo "before: the trainer as it was before issue 12 (built by make gpu-check-build from git); after: this"
    echo "trainer (-c -1: no checkpoint), with CUDA graphs (-D 1) and without (after-D0, -D 0) where it has -D."
    echo "The last column is tokens/s over the preset's first row's."
    for table in $state/throughput_small.txt $state/throughput_1b.txt; do
        echo
        echo '```'
        if [ -s $table ]; then cat $table
        elif [ "$emulated" = 1 ]; then echo "not run in emulation"
        else echo "no table (see bench.log)"; fi
        echo '```'
    done
    # What dev/cost_model.py predicts for the same runs (65536 tokens a step), with the copy bandwidth and
    # GEMM rate the dev step measured (the best of its runs), else the H100's measured with PyTorch
    # (dev/cost_model.py's defaults).
    echo
    echo "## Predicted by the cost model (dev/cost_model.py), beside the measured throughput above"
    echo
    ceilings=()
    dev_log=$bin/bf16/dev/run_all.log
    if [ "$emulated" != 1 ] && [ -s "$dev_log" ]; then
        copy=$(awk '$1 == "ceiling" && $2 == "copy:" && $3 > m { m = $3 } END { if (m) print m }' "$dev_log")
        gemm=$(awk '$1 == "ceiling" && $2 == "gemm:" && $3 > m { m = $3 } END { if (m) print m }' "$dev_log")
        [ -z "$copy" ] || ceilings+=(--copy-gbs "$copy")
        [ -z "$gemm" ] || ceilings+=(--gemm-tflops "$gemm")
    fi
    echo "Ceilings: ${ceilings[*]:-none measured in this run, the H100 defaults of dev/cost_model.py}."
    echo
    python3 dev/cost_model.py --tokens-per-step 65536 --gpus "" --preset 71m --preset 130m --preset 250m --preset 1b \
        "${ceilings[@]}" 2>&1 || echo "(dev/cost_model.py failed)"
    # Its two largest assumptions, product by product: each GEMM's rate as a fraction of the 8192^3 rate
    # (its wave efficiency) and the attention rates at T 256, beside what dev/matmul and dev/attention
    # measured in the dev step.
    echo
    echo "## The cost model's GEMM and attention assumptions beside the dev/ measurements"
    echo
    if [ "$emulated" = 1 ]; then echo "not run in emulation"
    elif [ -s "$dev_log" ]; then python3 dev/cost_model.py --against-dev "$dev_log" 2>&1 || echo "(dev/cost_model.py failed)"
    else echo "no dev/ log (see dev.log)"; fi
    if ls $state/*.failure >/dev/null 2>&1; then
        echo
        echo "## Failures"
        for id in $(seq 1 $steps); do [ ! -e $state/$id.failure ] || { echo; cat $state/$id.failure; }; done
    fi
} >"$report"
echo "gpu-check: report in $report"
! ls $state/*.failure >/dev/null 2>&1
