#!/usr/bin/env bash
# train_mixln_cpu against the same model in plain PyTorch (dev/train_torch_cpu.py: eager fp32, the
# same layers, AdamW, one micro-batch of 16 x 128 per step), side by side on this CPU with the same
# number of threads, on random tokens (vocab 256). Two models: the tiny preset (d 128, 4 layers) and a
# wider one (d 512, ffn 1368, 8 heads, 4 layers), both Mix-LN 0.25.
#
#   dev/bench_cpu.sh [ROUNDS]      rounds of both trainers on both models (default 3)
#   THREADS=N STEPS=N              threads for both (default: all cores), steps per run (default 8)
#   OMP_WAIT_POLICY                both trainers' OpenMP (PyTorch ships libgomp too); default passive:
#                                  on a loaded machine spinning threads slow both several times over
#
# Each run's tokens/s is over its steps after the first two (warm-up), from the step times each
# trainer prints (forward, backward and update). The rounds interleave the two trainers, alternating
# which goes first, so that load from other jobs on the machine falls on both; the summary is the
# median over the rounds of the per-round ratio. PyTorch is installed once into build/venv-bench
# (`pip install torch numpy` from PyPI; on x86-64 Linux that wheel brings CUDA libraries, about 5 GB,
# unused here). Nothing else in the project needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${THREADS:-$(nproc)}
steps=${STEPS:-8}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
venv=build/venv-bench
shard=build/bench/random256.bin

if ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
    echo "== installing PyTorch into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy
fi
make -s train_mixln_cpu
[ -s $shard ] || python3 scripts/make_random_shard.py --out $shard --tokens 1000000 --vocab-size 256

declare -A cpp_flags=([tiny]="-e tiny" [wide]="-e tiny -C 512 -H 8 -F 1368")
declare -A torch_flags=([tiny]="-L 4 -C 128 -H 4 -F 344" [wide]="-L 4 -C 512 -H 8 -F 1368")
models="tiny wide"

# tokens/s of train_mixln_cpu over steps 3.., from its "| N ms |" step lines
run_cpp() {
    OMP_NUM_THREADS=$threads ./train_mixln_cpu ${cpp_flags[$1]} -a 0.25 -i $shard -b 16 -t 128 -d 2048 \
        -x "$steps" -W 1 -o build/bench/out_cpp |
        awk -F'|' '/^step/ { n++; if (n > 2) { split($5, a, " "); ms += a[1]; k++ } }
                   END { if (k == 0) exit 1; printf "%.0f\n", 2048 * k / (ms / 1000) }'
}
run_torch() {
    "$venv/bin/python" dev/train_torch_cpu.py --shard $shard ${torch_flags[$1]} -a 0.25 -b 16 -t 128 \
        --steps "$steps" --threads "$threads" | awk '/^torch tokens\/s:/ { print $3 }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads each, OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())')"
echo "load at start: $(uptime | sed 's/.*load average/load average/')"
declare -A ratios cpp_all torch_all
for r in $(seq 1 "$rounds"); do
    for m in $models; do
        if [ $((r % 2)) -eq 1 ]; then c=$(run_cpp $m); t=$(run_torch $m); else t=$(run_torch $m); c=$(run_cpp $m); fi
        ratio=$(awk -v c="$c" -v t="$t" 'BEGIN { printf "%.2f", c / t }')
        printf "round %d %-5s train_mixln_cpu %7d tokens/s   torch %7d tokens/s   ratio %s   (%s)\n" \
            "$r" "$m" "$c" "$t" "$ratio" "$(uptime | sed 's/.*load average/load average/')"
        ratios[$m]+="$ratio "; cpp_all[$m]+="$c "; torch_all[$m]+="$t "
    done
done
echo "load at end: $(uptime | sed 's/.*load average/load average/')"
for m in $models; do
    printf "median %-5s train_mixln_cpu %7.0f tokens/s   torch %7.0f tokens/s   ratio %s (rounds: %s)\n" "$m" \
        "$(tr ' ' '\n' <<<"${cpp_all[$m]}" | grep . | median)" "$(tr ' ' '\n' <<<"${torch_all[$m]}" | grep . | median)" \
        "$(tr ' ' '\n' <<<"${ratios[$m]}" | grep . | median)" "${ratios[$m]% }"
done
