#!/usr/bin/env bash
# Training speed of train_mixln on the paper's Table 4 presets: tokens/s and MFU per preset, measured
# over a few optimizer steps on random tokens (the data does not change the speed) after skipping the
# first ones (cuBLASLt's first calls, CUDA graph capture, clocks ramping up). Each step is the paper's
# batch, 131072 tokens (-d), at T 256 in micro-batches of 32 sequences; a run that runs out of GPU
# memory is retried with half the micro-batch. Peak memory is the most nvidia-smi saw in use on the GPU
# during the run (CUDA context and cuBLASLt workspace included), sampled every 100 ms. Needs a GPU;
# `make bench` builds ./train_mixln and runs this.
#
# Each argument NAME=COMMAND is a variant: a trainer and the flags it gets beside the benchmark's.
# Every preset runs each variant in turn, so that the variants meet the same GPU state side by side;
# the last column is a row's tokens/s over that of the preset's first variant. -c -1 writes no
# checkpoint (16 GB for 1b); a trainer without it (one built before it existed) writes its final
# checkpoint, deleted right after.
#   dev/bench_trainer.sh                                  one variant: "train_mixln=./train_mixln -c -1"
#   dev/bench_trainer.sh before=old/train_mixln "after=./train_mixln -c -1" "after-D0=./train_mixln -c -1 -D 0"
#   PRESETS="71m 1b" STEPS=8 SKIP=2 MICRO_BATCH=16 RECOMPUTE=1 TOKENS_PER_STEP=65536 dev/bench_trainer.sh
#   SHARD=build/gpu_check/random.bin BENCH_DIR=DIR dev/bench_trainer.sh ...
# (SHARD must hold STEPS steps' tokens + 1; by default one is made. BENCH_DIR: the runs' scratch
# directory, default build/bench.)
set -euo pipefail
cd "$(dirname "$0")/.."
presets=${PRESETS:-"71m 130m 250m 1b"}
steps=${STEPS:-8}
skip=${SKIP:-2}
micro_batch=${MICRO_BATCH:-32}
recompute=${RECOMPUTE:-0}
seq_len=256
tokens_per_step=${TOKENS_PER_STEP:-131072}
dir=${BENCH_DIR:-build/bench}
shard=${SHARD:-$dir/random.bin}
[ $# -gt 0 ] || set -- "train_mixln=./train_mixln -c -1"

names=(); commands=()
for variant in "$@"; do
    name=${variant%%=*} command=${variant#*=}
    [ "$name" != "$variant" ] && [ -n "$name" ] && [ -n "$command" ] ||
        { echo "dev/bench_trainer.sh: '$variant' is not NAME=TRAINER [FLAGS]" >&2; exit 1; }
    trainer=${command%% *}
    [ -x "$trainer" ] || { echo "dev/bench_trainer.sh: $name: no $trainer; run make train_mixln" >&2; exit 1; }
    names+=("$name"); commands+=("$command")
done
[ "$steps" -gt "$skip" ] || { echo "dev/bench_trainer.sh: STEPS must exceed SKIP" >&2; exit 1; }
mkdir -p $dir
[ -s $shard ] || python3 scripts/make_random_shard.py --out $shard --tokens $((steps * tokens_per_step + 1)) --vocab-size 32000

# Runs the command while sampling the GPU's memory in use; leaves the peak in MiB in $dir/peak_mib.
with_peak_memory() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >$dir/memory.log 2>/dev/null &
    local sampler=$! status=0
    # The first sample before the run starts (at most 3 s): a run shorter than the sampler's start-up
    # would otherwise leave no sample at all.
    for _ in $(seq 30); do [ -s $dir/memory.log ] && break; sleep 0.1; done
    "$@" || status=$?
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    sort -n $dir/memory.log | tail -n 1 >$dir/peak_mib
    return $status
}

# Runs variant $1 on preset $2 into $dir/$2.$name.log, halving -b on running out of GPU memory; prints
# the micro-batch it ran with, or fails.
run_variant() {
    local i=$1 preset=$2 b=$micro_batch log=$dir/$2.${names[$1]}.log
    while :; do
        rm -rf $dir/out
        # -u 0: a few steps, no warmup (1b's default of 1000 steps is longer than the run)
        # shellcheck disable=SC2086  # the variant's command: the trainer and its flags, split into words
        if with_peak_memory ${commands[$i]} -e $preset -i $shard -b $b -t $seq_len -d $tokens_per_step -x $steps \
            -u 0 -R $recompute -o $dir/out >$log 2>&1; then
            rm -rf $dir/out
            echo $b
            return 0
        fi
        if grep -q "out of GPU memory" $log && [ $b -gt 1 ]; then
            echo "$preset ${names[$i]}: out of GPU memory with -b $b, retrying with -b $((b / 2))" >&2
            b=$((b / 2))
            continue
        fi
        rm -rf $dir/out
        echo "$preset ${names[$i]}: the trainer failed (-b $b), the end of $log:" >&2
        tail -n 5 $log >&2
        return 1
    done
}

# The table goes to stdout one row per run as each is measured (a run cut short keeps the rows so
# far); failures go to stderr.
rows=0
status=0  # 1 once a run fails
for preset in $presets; do
    base=  # tokens/s of the preset's first variant
    for i in "${!names[@]}"; do
        if ! b=$(run_variant $i $preset); then
            status=1
            continue
        fi
        log=$dir/$preset.${names[$i]}.log
        if [ $rows -eq 0 ]; then
            grep -m 1 "^device:" $log || true
            for j in "${!names[@]}"; do echo "${names[$j]}: ${commands[$j]}"; done
            printf "\n%-6s %-10s %4s %4s %2s %12s %8s %10s %6s %10s %10s\n" preset variant b t R "tokens/s" MFU "ms/step" steps \
                "peak GiB" "vs ${names[0]}"
        fi
        rows=$((rows + 1))
        # Step lines: "step 3/8 | loss ... | lr ... | norm ... | 123.4 ms | 1062000 tok/s | MFU 35.2% | ETA ...".
        # Over the steps after the first $skip: tokens/s from the mean time; MFU_i * ms_i is the same for
        # every step, so the mean time's MFU is sum(MFU_i * ms_i) / sum(ms_i). Leaves the tokens/s in
        # $dir/tokens_per_s for the next variants' ratio.
        awk -F' [|] ' -v skip=$skip -v tokens=$tokens_per_step -v preset=$preset -v variant=${names[$i]} -v b=$b -v t=$seq_len \
            -v r=$recompute -v peak="$(cat $dir/peak_mib)" -v base="$base" -v first=$((i == 0)) -v rate_file=$dir/tokens_per_s '
            /^step +[0-9]+\/[0-9]+ [|] loss/ {
                split($1, s, /[ \/]+/)
                if (s[2] <= skip) next
                ms = ""; mfu = ""
                for (i = 2; i <= NF; i++) {
                    if ($i ~ / ms$/) ms = $i + 0
                    if ($i ~ /^MFU /) { m = $i; sub(/^MFU /, "", m); mfu = m + 0 }
                }
                n++; ms_sum += ms
                if (mfu != "") mfu_ms += mfu * ms; else no_mfu = 1
            }
            END {
                if (n == 0) {
                    printf "%-6s %-10s %4d %4d %2d  no step lines after the first %d\n", preset, variant, b, t, r, skip
                    print "" > rate_file
                    exit
                }
                mean = ms_sum / n
                rate = tokens / (mean / 1000)
                if (first) base = rate
                printf "%-6s %-10s %4d %4d %2d %12.0f %8s %10.1f %6d %10s %10s\n", preset, variant, b, t, r, rate,
                       no_mfu ? "-" : sprintf("%.1f%%", mfu_ms / ms_sum), mean, n, peak == "" ? "-" : sprintf("%.1f", peak / 1024),
                       base == "" ? "-" : sprintf("%.2f", rate / base)
                print rate > rate_file
            }' $log
        [ $i -gt 0 ] || base=$(cat $dir/tokens_per_s)
    done
done
exit $status
