#!/usr/bin/env bash
# make demo: from a fresh machine with no network (but the package registries) and no GPU to a
# trained Mix-LN model, its validation perplexity against a unigram baseline, a text sample, and the
# commands to run next (test/test_scripts.sh runs them as printed, on tiny data).
#   DEMO_STEPS=N  optimizer steps (default 1000; CI uses 150)
#   DEMO_DATA=DIR, DEMO_OUT=DIR  the prepared corpus (train.bin, val.bin, vocab.bin, stats.json; default
#                 data/kjv, made from the King James Bible when missing) and the run directory (out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${DEMO_STEPS:-1000}
data=${DEMO_DATA:-data/kjv}
out=${DEMO_OUT:-out/demo}
# Threads that wait at OpenMP barriers sleep instead of spinning: on a machine shared with other jobs
# spinning threads steal each other's cores (the trainer ran 6.7x slower on 2 loaded cores; docs/setup.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

echo "== 1/4 Python packages (scripts/requirements.txt)"
python3 -c "import numpy, tokenizers" 2>/dev/null ||
    python3 -m pip install -q -r scripts/requirements.txt ||
    python3 -m pip install -q --break-system-packages -r scripts/requirements.txt

echo "== 2/4 corpus: the King James Bible from Debian's bible-kjv-text (public domain)"
if ! [ -s $data/train.bin ] || ! [ -s $data/val.bin ] || ! [ -s $data/vocab.bin ] || ! [ -s $data/stats.json ]; then
    [ -s $data/kjv.txt ] || scripts/get_kjv.sh $data/kjv.txt
    python3 scripts/prepro_text.py --tokenizer bytes --out $data $data/kjv.txt
fi

trainer=./train_mixln_cpu
if [ -x ./train_mixln ] && nvidia-smi -L >/dev/null 2>&1; then trainer=./train_mixln; fi
echo "== 3/4 training a tiny Mix-LN model (alpha 0.25) for $steps steps with $trainer"
rm -rf $out
mkdir -p "$(dirname $out)"
$trainer -e tiny -a 0.25 -i $data/train.bin -j $data/val.bin -b 16 -t 128 -d 2048 -x "$steps" \
    -v 500 -m 50 -o $out -G 300 -P "And God said" -T 0.8 | tee $out.log

echo "== 4/4 result"
python3 - "$out/log.csv" "$data/stats.json" <<'PY'
import csv, json, math, sys
val = [float(r["loss"]) for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "val"]
unigram = json.load(open(sys.argv[2]))["unigram_val_loss"]
print(f"final val loss {val[-1]:.4f} nats/token, perplexity {math.exp(val[-1]):.2f}")
print(f"unigram baseline  {unigram:.4f} nats/token, perplexity {math.exp(unigram):.2f}")
if not val[-1] < unigram:
    sys.exit("error: the model did not beat the unigram baseline")
PY
table_out=$(dirname $out)/table1
cat <<EOF2

Next, from this directory:
  # layer measurements of the trained model: gradient norms, angular distance, pruning (docs/analysis.md)
  \$ ./analyze_mixln_cpu -f $out -i $data/val.bin -o $out/analysis
  # more text from it
  \$ $trainer -f $out -x 0 -G 400 -P "And the LORD said"
  # the paper's Table 1 at this scale: Post-LN, DeepNorm, Pre-LN and Mix-LN, each trained as above
  \$ python3 scripts/reproduce.py table1 --protocol packed --out $table_out -- -e tiny -i $data/train.bin -j $data/val.bin -b 16 -t 128 -d 2048 -x $steps -v 500
  # C4 as in the paper (downloads from the Hugging Face hub; docs/data-and-formats.md), and larger models on a GPU
  \$ python3 scripts/prepro_c4.py --out data/c4
  \$ make train_mixln && ./train_mixln -e 71m -i 'data/c4/train_*.bin' -j data/c4/val_000.bin
EOF2
