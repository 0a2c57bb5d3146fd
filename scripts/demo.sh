#!/usr/bin/env bash
# make demo: from a fresh machine with no network (but the package registries) and no GPU to a
# trained Mix-LN model, its validation perplexity against a unigram baseline, and a text sample.
#   DEMO_STEPS=N  optimizer steps (default 800; CI uses fewer)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${DEMO_STEPS:-800}
data=data/kjv
out=out/demo

echo "== 1/4 Python packages (scripts/requirements.txt)"
python3 -c "import numpy, tokenizers" 2>/dev/null ||
    python3 -m pip install -q -r scripts/requirements.txt ||
    python3 -m pip install -q --break-system-packages -r scripts/requirements.txt

echo "== 2/4 corpus: the King James Bible from Debian's bible-kjv-text (public domain)"
[ -s $data/kjv.txt ] || scripts/get_kjv.sh $data/kjv.txt
[ -s $data/train.bin ] && [ -s $data/vocab.bin ] || python3 scripts/prepro_text.py --tokenizer bytes --out $data $data/kjv.txt

trainer=./train_mixln_cpu
if [ -x ./train_mixln ] && nvidia-smi -L >/dev/null 2>&1; then trainer=./train_mixln; fi
echo "== 3/4 training a tiny Mix-LN model (alpha 0.25) for $steps steps with $trainer"
rm -rf $out
mkdir -p "$(dirname $out)"
$trainer -e tiny -a 0.25 -i $data/train.bin -j $data/val.bin -b 16 -t 128 -d 2048 -x "$steps" \
    -v 100 -m 50 -o $out -G 300 -P "And God said" -T 0.8 | tee $out.log

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
cat <<'EOF2'

Next:
  - C4 as in the paper:  python3 scripts/prepro_c4.py --out data/c4   (see README: Data)
  - larger models:       -e 71m | 130m | 250m | 1b   (the GPU trainer, train_mixln, for real runs)
  - the paper's tables:  python3 scripts/reproduce.py table1 --out out/table1 -- ...
  - layer measurements:  ./analyze_mixln_cpu -f out/demo -i data/kjv/val.bin -o out/demo/analysis
EOF2
