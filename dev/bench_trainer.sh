#!/usr/bin/env bash
# Training speed of train_mixln on the paper's Table 4 presets: tokens/s and MFU per preset, measured
# over a few optimizer steps on random tokens (the data does not change the speed) after skipping the
# first ones (cuBLASLt's first calls, clocks ramping up). Each step is the paper's batch, 131072 tokens
# (-d), at T 256 in micro-batches of 32 sequences; a preset that runs out of GPU memory is retried with
# half the micro-batch. Peak memory is the most nvidia-smi saw in use on the GPU during the run (CUDA
# context and cuBLASLt workspace included), sampled every 100 ms. Needs a GPU; `make bench` builds
# ./train_mixln and runs this.
#   dev/bench_trainer.sh
#   PRESETS="71m 1b" STEPS=8 SKIP=2 MICRO_BATCH=16 RECOMPUTE=1 TOKENS_PER_STEP=65536 dev/bench_trainer.sh
#   TRAIN_MIXLN=build/gpu_check/bf16/train_mixln SHARD=build/gpu_check/random.bin dev/bench_trainer.sh
# (the binary and shard `make gpu-check-build` leaves; the shard must hold 8 steps' tokens + 1)
set -euo pipefail
cd "$(dirname "$0")/.."
presets=${PRESETS:-"71m 130m 250m 1b"}
steps=${STEPS:-8}
skip=${SKIP:-2}
micro_batch=${MICRO_BATCH:-32}
recompute=${RECOMPUTE:-0}
seq_len=256
tokens_per_step=${TOKENS_PER_STEP:-131072}
train_mixln=${TRAIN_MIXLN:-./train_mixln}
dir=build/bench  # on disk: each run ends with a checkpoint (16 GB for 1b), deleted right after
shard=${SHARD:-$dir/random.bin}

[ -x "$train_mixln" ] || { echo "dev/bench_trainer.sh: no $train_mixln; run make train_mixln" >&2; exit 1; }
[ "$steps" -gt "$skip" ] || { echo "dev/bench_trainer.sh: STEPS must exceed SKIP" >&2; exit 1; }
[ -s $shard ] || python3 scripts/make_random_shard.py --out $shard --tokens $((8 * tokens_per_step + 1)) --vocab-size 32000
mkdir -p $dir

# Runs the command while sampling the GPU's memory in use; leaves the peak in MiB in $dir/peak_mib.
with_peak_memory() {
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >$dir/memory.log 2>/dev/null &
    local sampler=$! status=0
    "$@" || status=$?
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    sort -n $dir/memory.log | tail -n 1 >$dir/peak_mib
    return $status
}

# The table goes to stdout one row per preset as each is measured (a run cut short keeps the rows so
# far); failures go to stderr.
rows=0
status=0  # 1 once a preset fails
for preset in $presets; do
    b=$micro_batch
    log=$dir/$preset.log
    while :; do
        rm -rf $dir/out
        # -u 0: a few steps, no warmup (1b's default of 1000 steps is longer than the run)
        if with_peak_memory "$train_mixln" -e $preset -i $shard -b $b -t $seq_len -d $tokens_per_step -x $steps -u 0 \
            -R $recompute -o $dir/out -k 1 >$log 2>&1; then
            break
        fi
        if grep -q "out of GPU memory" $log && [ $b -gt 1 ]; then
            echo "$preset: out of GPU memory with -b $b, retrying with -b $((b / 2))" >&2
            b=$((b / 2))
            continue
        fi
        echo "$preset: train_mixln failed (-b $b), the end of $log:" >&2
        tail -n 5 $log >&2
        status=1
        b=
        break
    done
    rm -rf $dir/out
    [ -n "$b" ] || continue
    if [ $rows -eq 0 ]; then
        grep -m 1 "^device:" $log
        printf "\n%-6s %4s %4s %2s %12s %8s %10s %6s %10s\n" preset b t R "tokens/s" MFU "ms/step" steps "peak GiB"
    fi
    rows=$((rows + 1))
    # Step lines: "step 3/8 | loss ... | lr ... | norm ... | 123.4 ms | 1062000 tok/s | MFU 35.2% | ETA ...".
    # Over the steps after the first $skip: tokens/s from the mean time; MFU_i * ms_i is the same for
    # every step, so the mean time's MFU is sum(MFU_i * ms_i) / sum(ms_i).
    peak=$(cat $dir/peak_mib)
    awk -F' [|] ' -v skip=$skip -v tokens=$tokens_per_step -v preset=$preset -v b=$b -v t=$seq_len -v r=$recompute -v peak="$peak" '
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
            if (n == 0) { printf "%-6s %4d %4d %2d  no step lines after the first %d\n", preset, b, t, r, skip; exit }
            mean = ms_sum / n
            printf "%-6s %4d %4d %2d %12.0f %8s %10.1f %6d %10s\n", preset, b, t, r, tokens / (mean / 1000),
                   no_mfu ? "-" : sprintf("%.1f%%", mfu_ms / ms_sum), mean, n, peak == "" ? "-" : sprintf("%.1f", peak / 1024)
        }' $log
done
exit $status
