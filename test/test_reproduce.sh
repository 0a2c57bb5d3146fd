#!/usr/bin/env bash
# End-to-end checks of the seeded table runner (scripts/reproduce.py --seeds) and of prepro_text.py's
# BPE with documents kept apart (--bpe N --pad-to T), on a tiny corpus this script writes, with a tiny
# model trained a few steps: the BPE round trip (Python and the C++ trainer's vocab.bin reader), a
# table over 2 seeds with its analysis and plots, its numbers against the per-seed logs, resuming
# (a second invocation runs nothing new; an interrupted seed alone runs again), and the CPU-study
# presets. Uses ./train_mixln_cpu and ./analyze_mixln_cpu (make builds them). Ends with
# "test_reproduce: N passed, M failed" (plus ", K skipped" when the Python packages of
# scripts/requirements.txt are missing).
set -u
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
tmp=$(mktemp -d /tmp/mixln_reproduce_XXXXXX)
export PYTHONPATH=$PWD/scripts
trap 'rm -rf "$tmp"' EXIT
SUITE=test_reproduce PYTHON_MODULES="numpy tokenizers tqdm matplotlib"
source test/script_checks.sh

# The tiny corpus: 48 paragraphs of made-up sentences (some long enough to need several rows of 32
# ids), with non-ASCII text and one paragraph that spells out the end-of-text token.
python3 - "$tmp/text.txt" <<'EOF'
import random, sys
rng = random.Random(5)
words = ("the of and to in that he shall unto for his a they be is him not them it with all thou was "
         "which said lord god israel king people house land day son children").split()
docs = []
for i in range(48):
    n = rng.choice([6, 20, 60, 140])
    docs.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + ".")
docs[3] += " Naïve café — 日本語 🍵."
docs[7] += " <|endoftext|> stays text."
open(sys.argv[1], "w", encoding="utf-8").write("\n\n".join(docs) + "\n")
EOF

echo "prepro_text.py --bpe --pad-to: documents kept apart in padded rows"
check "--bpe 300 --pad-to 32 runs" python3 scripts/prepro_text.py --bpe 300 --pad-to 32 --val-every 4 --workers 1 \
    --out "$tmp/data" "$tmp/text.txt"
# The rows of a document: the first whole, each next one overlapping it by one id; a document's
# last row ends with <|endoftext|>. Reassembled and decoded with vocab.bin: the paragraphs.
check "encode then decode gives the text back: rows overlap by one id, each document ends with <|endoftext|>" \
    python3 - "$tmp" <<'PY'
import json, sys
import numpy as np
from shard_format import read_padded_rows, shard_row_tokens
from vocab_format import read_vocab
tmp = sys.argv[1]
docs = [d.strip() for d in open(f"{tmp}/text.txt", encoding="utf-8").read().split("\n\n") if d.strip()]
pieces, eot = read_vocab(f"{tmp}/data/vocab.bin")
assert len(pieces) == 300 and pieces[eot] == b"<|endoftext|>", (len(pieces), eot)
assert max(map(len, pieces)) > 3, "no multi-byte tokens"
stats = json.load(open(f"{tmp}/data/stats.json"))
for split, want in (("train", [d for i, d in enumerate(docs) if i % 4 != 3]), ("val", [d for i, d in enumerate(docs) if i % 4 == 3])):
    assert shard_row_tokens(f"{tmp}/data/{split}.bin") == 32
    rows, vocab = read_padded_rows(f"{tmp}/data/{split}.bin")
    assert vocab == 300
    got, current, ids = [], [], 0
    for row in rows:
        row = row[row >= 0].tolist()
        ids += len(row)
        assert row, "an empty row"
        current += row if not current else row[1:]  # the overlap
        if row[-1] == eot:
            got.append(b"".join(pieces[i] for i in current[:-1]).decode("utf-8"))
            current = []
        else:
            assert len(row) == 32, "a row that is not a document's last must be full"
    assert not current and got == want, (len(got), len(want))
    assert any(len(d.encode()) > 200 for d in want), "no document long enough to need several rows"
    assert stats[f"{split}_tokens"] == ids and stats[f"{split}_positions"] == rows.size, (split, stats)
assert stats["pad_to"] == 32 and stats["long_documents"] == "split"
PY
check "--long-documents truncate: one row per document, its first 31 ids and <|endoftext|>" python3 - "$tmp" <<'PY'
import subprocess, sys
from shard_format import read_padded_rows
from vocab_format import read_vocab
tmp = sys.argv[1]
subprocess.run(["python3", "scripts/prepro_text.py", "--bpe", "300", "--pad-to", "32", "--long-documents", "truncate",
                "--val-every", "4", "--workers", "1", "--out", f"{tmp}/trunc", f"{tmp}/text.txt"], check=True, capture_output=True)
_, eot = read_vocab(f"{tmp}/trunc/vocab.bin")
rows, _ = read_padded_rows(f"{tmp}/trunc/train.bin")
split, _ = read_padded_rows(f"{tmp}/data/train.bin")
assert len(rows) == 36 < len(split), (len(rows), len(split))
for row in rows:
    ids = row[row >= 0]
    assert ids[-1] == eot and (ids[:-1] != eot).all() and ids.size <= 32, row
PY
# The C++ side reads the same vocab.bin (tokenizer/tokenizer.h): the trainer encodes the prompt,
# trains on the padded rows and decodes a sample of multi-byte BPE tokens.
samples_in_cpp() {
    ./train_mixln_cpu -e tiny -L 1 -C 32 -H 2 -F 32 -i "$tmp/data/train.bin" -j "$tmp/data/val.bin" -b 2 -t 32 -d 64 -x 2 \
        -o "$tmp/sample_run" -G 12 -T 0 -P "Naïve café and the king" > "$tmp/sample.log" 2>&1 || { cat "$tmp/sample.log"; return 1; }
    grep -aq "(padded documents)" "$tmp/sample.log" && grep -a -A1 "^sample" "$tmp/sample.log" | grep -aq "^Naïve café and the king" ||
        { cat "$tmp/sample.log"; return 1; }
}
check "the C++ trainer reads the BPE vocab.bin: encodes a non-ASCII prompt, trains on padded rows, decodes a sample" samples_in_cpp
check "--bpe and another --tokenizer at once is refused" fails_with "give one of --bpe and --tokenizer" \
    python3 scripts/prepro_text.py --bpe 300 --tokenizer hf:x --out "$tmp/bad" "$tmp/text.txt"

echo "reproduce.py --seeds"
flags=(-e tiny -L 2 -C 32 -H 2 -F 32 -i "$tmp/data/train.bin" -j "$tmp/data/val.bin" -b 2 -t 32 -d 64 -x 4 -c 2 -v 2)
reproduce() { python3 scripts/reproduce.py table1 --trainer ./train_mixln_cpu --analyze --analysis-batches 1 --out "$tmp/t1" "$@" -- "${flags[@]}"; }
runs_two_seeds() {
    reproduce --seeds 2 > "$tmp/t1.log" 2>&1 || { cat "$tmp/t1.log"; return 1; }
    [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/t1.log")" -eq 8 ] && [ "$(grep -c '^+ .*analyze_mixln_cpu' "$tmp/t1.log")" -eq 8 ] &&
        grep -q -- "-n deepnorm_paper -s 2 -o $tmp/t1/DeepNorm/seed_2$" "$tmp/t1.log" || { cat "$tmp/t1.log"; return 1; }
    for png in final loss val_loss grad_norms angular_distance angular_distance_rows angular_distance_next pruning; do
        [ "$(head -c 4 "$tmp/t1/plots/$png.png" | tail -c 3)" = "PNG" ] || { echo "plots/$png.png is not a PNG"; return 1; }
    done
}
check "table1 with --seeds 2: 8 runs in OUT/CONFIG/seed_S, each analysed, and the plots" runs_two_seeds
# Recomputes the table from the per-seed logs: the final validation loss of each seed, their mean and
# standard deviation, and the differences to Pre-LN paired by seed; and the analysis means.
check "results.csv, runs.csv, results.md and analysis_*.csv agree with the per-seed logs" python3 - "$tmp" <<'PY'
import csv, json, math, statistics, sys
tmp = sys.argv[1]
def final(config, seed):
    rows = list(csv.DictReader(open(f"{tmp}/t1/{config}/seed_{seed}/log.csv")))
    val = [r for r in rows if r["split"] == "val" and r["step"] == "4"]
    assert len(val) == 1, (config, seed, rows)
    return float(val[0]["loss"])
configs = ["Post-LN", "DeepNorm", "Pre-LN", "Mix-LN"]
loss = {(c, s): final(c, s) for c in configs for s in (1, 2)}
assert loss[("Pre-LN", 1)] != loss[("Pre-LN", 2)], "the seeds gave the same run"
runs = list(csv.DictReader(open(f"{tmp}/t1/runs.csv")))
assert len(runs) == 8
for r in runs:
    assert r["status"] == "ok" and abs(float(r["val_loss"]) - loss[(r["config"], int(r["seed"]))]) < 1e-6, r
    assert abs(float(r["val_ppl"]) - math.exp(float(r["val_loss"]))) < 1e-3 * float(r["val_ppl"]), r
results = {r["config"]: r for r in csv.DictReader(open(f"{tmp}/t1/results.csv"))}
md = open(f"{tmp}/t1/results.md").read()
for c in configs:
    r, mine = results[c], [loss[(c, 1)], loss[(c, 2)]]
    assert r["seeds"] == "2" and r["ok"] == "2" and r["ref"] == "Pre-LN", r
    assert abs(float(r["val_loss_mean"]) - statistics.fmean(mine)) < 1e-6, r
    assert abs(float(r["val_loss_std"]) - statistics.stdev(mine)) < 1e-6, r
    ppl = [math.exp(x) for x in mine]
    assert abs(float(r["val_ppl_mean"]) - statistics.fmean(ppl)) < 1e-3 and abs(float(r["val_ppl_std"]) - statistics.stdev(ppl)) < 1e-3, r
    assert r["val_losses"] == ";".join(f"{x:.4f}" for x in mine), r
    line = next(l for l in md.splitlines() if l.startswith(f"| {c} |"))
    assert f"| {statistics.fmean(mine):.4f} ± {statistics.stdev(mine):.4f} |" in line and f"{mine[0]:.4f}, {mine[1]:.4f} |" in line, line
    if c == "Pre-LN":
        assert r["pairs"] == "0" and "(reference)" in line, (r, line)
        continue
    d = [loss[(c, s)] - loss[("Pre-LN", s)] for s in (1, 2)]
    assert r["pairs"] == "2" and abs(float(r["delta_loss_mean"]) - statistics.fmean(d)) < 1e-6, r
    assert abs(float(r["delta_loss_std"]) - statistics.stdev(d)) < 1e-6, r
    assert f"| {statistics.fmean(d):+.4f} ± {statistics.stdev(d):.4f} (n=2) |" in line, line
baseline = json.load(open(f"{tmp}/data/stats.json"))["unigram_val_loss"]
assert f"| unigram baseline | | {baseline:.4f} | {math.exp(baseline):.2f} |" in md, md
for name, key, value in (("grad_norms", "layer", "total"), ("angular_distance", "layer", "distance"), ("pruning", "layer", "delta_loss")):
    agg = [r for r in csv.DictReader(open(f"{tmp}/t1/analysis_{name}.csv")) if r["config"] == "Mix-LN"]
    per_seed = [list(csv.DictReader(open(f"{tmp}/t1/Mix-LN/seed_{s}/analysis/{name}.csv"))) for s in (1, 2)]
    assert len(agg) == len(per_seed[0]) > 0, name
    for i, r in enumerate(agg):
        vals = [float(p[i][value]) for p in per_seed]
        assert r["seeds"] == "2" and abs(float(r[f"{value}_mean"]) - statistics.fmean(vals)) < 1e-5, (name, r, vals)
        assert abs(float(r[f"{value}_std"]) - statistics.stdev(vals)) < 1e-5, (name, r, vals)
PY
reruns_nothing() {
    cp "$tmp/t1/results.md" "$tmp/first.md" && cp "$tmp/t1/results.csv" "$tmp/first.csv"
    reproduce --seeds 2 > "$tmp/again.log" 2>&1 || { cat "$tmp/again.log"; return 1; }
    reproduce --seeds 1,2 > "$tmp/again2.log" 2>&1 || { cat "$tmp/again2.log"; return 1; }
    ! grep -q "^+ " "$tmp/again.log" "$tmp/again2.log" && grep -q "^0 runs or analyses done now" "$tmp/again.log" &&
        diff "$tmp/first.md" "$tmp/t1/results.md" && diff "$tmp/first.csv" "$tmp/t1/results.csv"
}
check "a second invocation (--seeds 2, or --seeds 1,2) runs nothing and writes the same table" reruns_nothing
# One seed killed after its step-2 checkpoint (no final checkpoint, no DONE), one killed after the
# trainer finished but before DONE: only the first runs again, resuming; the table is the same.
resumes_one_seed() {
    rm "$tmp/t1/Mix-LN/seed_2/DONE" "$tmp/t1/Mix-LN/seed_2/ckpt_00000004.bin" "$tmp/t1/Post-LN/seed_1/DONE"
    reproduce --seeds 2 > "$tmp/resume.log" 2>&1 || { cat "$tmp/resume.log"; return 1; }
    [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/resume.log")" -eq 1 ] &&
        grep -q -- "-o $tmp/t1/Mix-LN/seed_2 -r $tmp/t1/Mix-LN/seed_2$" "$tmp/resume.log" &&
        grep -q "resuming at step 2" "$tmp/resume.log" && [ -f "$tmp/t1/Post-LN/seed_1/DONE" ] &&
        diff "$tmp/first.md" "$tmp/t1/results.md" || { cat "$tmp/resume.log"; return 1; }
}
check "an interrupted seed alone runs again, from its checkpoint, to the same result" resumes_one_seed
# Killed in the final validation: the final checkpoint is there, the log's last validation and DONE
# are not; the trainer cannot resume at the last step, so that seed starts over (and its new final
# checkpoint is analysed again), to the same result.
restarts_after_final_checkpoint() {
    rm "$tmp/t1/Pre-LN/seed_1/DONE" && sed -i '/^4,val,/d' "$tmp/t1/Pre-LN/seed_1/log.csv"
    reproduce --seeds 2 > "$tmp/restart.log" 2>&1 || { cat "$tmp/restart.log"; return 1; }
    [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/restart.log")" -eq 1 ] && [ "$(grep -c '^+ .*analyze_mixln_cpu -f '"$tmp/t1/Pre-LN/seed_1"' ' "$tmp/restart.log")" -eq 1 ] &&
        grep -q -- "-o $tmp/t1/Pre-LN/seed_1 -W 1$" "$tmp/restart.log" && diff "$tmp/first.md" "$tmp/t1/results.md" ||
        { cat "$tmp/restart.log"; return 1; }
}
check "a seed killed in its final validation starts over, to the same result" restarts_after_final_checkpoint
# --reuse: a run whose flags match a finished run of another --out (the same values, here with -x
# given twice) is copied with its analysis, not run; seed 3, not in t1, runs.
reuses_finished_runs() {
    python3 scripts/reproduce.py table1 --trainer ./train_mixln_cpu --analyze --analysis-batches 1 --no-plots --seeds 1,3 \
        --configs Mix-LN --reuse "$tmp/t1" --out "$tmp/re" -- "${flags[@]}" -x 4 > "$tmp/re.log" 2>&1 || { cat "$tmp/re.log"; return 1; }
    [ "$(grep -c "^copied $tmp/t1/.*/seed_1 -> $tmp/re/.*/seed_1 " "$tmp/re.log")" -eq 2 ] &&
        [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/re.log")" -eq 2 ] && [ "$(grep -c '^+ ./train_mixln_cpu.* -s 3 ' "$tmp/re.log")" -eq 2 ] &&
        [ "$(grep -c '^+ .*analyze_mixln_cpu' "$tmp/re.log")" -eq 2 ] &&
        cmp "$tmp/t1/Mix-LN/seed_1/log.csv" "$tmp/re/Mix-LN/seed_1/log.csv" &&
        tr -d '\r' < "$tmp/re/runs.csv" > "$tmp/re_runs.csv" && grep -q "^Mix-LN,1,ok,.*,$tmp/t1/Mix-LN/seed_1$" "$tmp/re_runs.csv" &&
        grep -q "^Mix-LN,3,ok,.*,$" "$tmp/re_runs.csv" &&
        grep -q "copied from t1 (--reuse" "$tmp/re/results.md" || { cat "$tmp/re.log" "$tmp/re/runs.csv"; return 1; }
}
check "--reuse copies finished runs of the same flags from another study and runs the others" reuses_finished_runs
# Diverged runs, with a stand-in trainer: Post-LN stops on a non-finite loss (exit code 3), DeepNorm
# on -N skipped updates (4), the others finish with a val loss of 5 + seed / 10 (Mix-LN 0.1 lower).
diverged_runs() {
    cat > "$tmp/stand_in" <<'EOF'
#!/usr/bin/env bash
out= seed= alpha= norm=
while [ $# -gt 0 ]; do
    case $1 in -o) out=$2;; -s) seed=$2;; -a) alpha=$2;; -n) norm=$2;; esac; shift
done
mkdir -p "$out"
[ "$alpha" = 1 ] && exit 3
[ -n "$norm" ] && exit 4
loss=$(python3 -c "print(5 + $seed / 10 - (0.1 if '$alpha' == '0.25' else 0))")
printf 'step,split,loss,lr,grad_norm\n2,train,%s,0.001,1\n2,val,%s,0.001,0\n' "$loss" "$loss" > "$out/log.csv"
: > "$out/ckpt_00000002.bin"
EOF
    chmod +x "$tmp/stand_in"
    local run=(python3 scripts/reproduce.py table1 --seeds 3 --protocol packed --trainer "$tmp/stand_in" --no-plots --out "$tmp/dv" -- -x 2 -j "$tmp/data/val.bin")
    "${run[@]}" > "$tmp/dv.log" 2>&1 && "${run[@]}" > "$tmp/dv2.log" 2>&1 || { cat "$tmp/dv.log" "$tmp/dv2.log"; return 1; }
    grep -q "^| Post-LN | 0/3, 3 diverged | - | - | - | - | diverged, diverged, diverged |$" "$tmp/dv/results.md" &&
        grep -q "^| DeepNorm | 0/3, 3 diverged | - |" "$tmp/dv/results.md" &&
        grep -q "^| Mix-LN | 3/3 | 5.1000 ± 0.1000 | .* | -0.1000 ± 0.0000 (n=3) | .* | 5.0000, 5.1000, 5.2000 |$" "$tmp/dv/results.md" &&
        [ "$(cat "$tmp/dv/Post-LN/seed_2/DONE")" = diverged ] && ! grep -q "^+ " "$tmp/dv2.log" || { cat "$tmp/dv.log" "$tmp/dv/results.md"; return 1; }
}
check "diverged runs (exit codes 3 and 4) are recorded, shown as diverged, left out of the means and not rerun" diverged_runs
check "other trainer flags for finished runs are refused" fails_with "was run with other trainer flags" \
    python3 scripts/reproduce.py table1 --seeds 2 --trainer ./train_mixln_cpu --out "$tmp/t1" -- "${flags[@]}" -l 0.01
check "-s with --seeds is refused" fails_with "-s is set per run by --seeds" \
    python3 scripts/reproduce.py table1 --seeds 2 --trainer ./train_mixln_cpu --out "$tmp/t1" -- "${flags[@]}" -s 5
check "a bad --seeds is refused" fails_with "--seeds 1,1: give at least one seed, none twice" \
    python3 scripts/reproduce.py table1 --seeds 1,1 --trainer ./train_mixln_cpu --out "$tmp/t1" -- "${flags[@]}"

echo "reproduce.py CPU-study presets"
presets_dry_run() {
    local name want
    for name in cpu_table1:24 cpu_table3:21 cpu_lr:18; do
        want=${name#*:} name=${name%:*}
        python3 scripts/reproduce.py $name --data "$tmp/data" --trainer ./train_mixln_cpu --out "$tmp/$name" --dry-run -- -t 32 \
            > "$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log"; return 1; }
        [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/$name.log")" -eq "$want" ] || { echo "$name: not $want runs"; cat "$tmp/$name.log"; return 1; }
    done
    grep -q -- "-l 1e-3 -u 0.1 -q 0.1 .* -L 24 -n deepnorm_paper -s 3 -o $tmp/cpu_table1/L24_DeepNorm/seed_3$" "$tmp/cpu_table1.log" &&
        grep -q -- "-L 24 -a 0 -l 5e-3 -s 1 -o $tmp/cpu_lr/Pre-LN_lr_5e-3/seed_1$" "$tmp/cpu_lr.log" &&
        grep -q -- "-L 24 -a 0.3334 -s 2 -o $tmp/cpu_table3/alpha_0.333/seed_2$" "$tmp/cpu_table3.log" || { cat "$tmp"/cpu_*.log; return 1; }
}
check "the presets: 24, 21 and 18 runs of 3 seeds, with the official schedule (--dry-run)" presets_dry_run
runs_a_preset() {
    python3 scripts/reproduce.py cpu_table1 --data "$tmp/data" --trainer ./train_mixln_cpu --out "$tmp/preset" --seeds 2 \
        --configs "^L8 Mix-LN" --analysis-batches 1 --no-plots -- -t 32 -b 2 -d 64 -x 2 -v 1 -C 32 -H 2 > "$tmp/preset.log" 2>&1 ||
        { cat "$tmp/preset.log"; return 1; }
    [ "$(grep -c '^+ ./train_mixln_cpu' "$tmp/preset.log")" -eq 4 ] && grep -q "^| L8 Mix-LN | 2/2 | .* (n=2) |" "$tmp/preset/results.md" &&
        grep -q "^| L8 Pre-LN | 2/2 | .* (reference) |" "$tmp/preset/results.md" && [ -f "$tmp/preset/L8_Pre-LN/seed_2/analysis/pruning.csv" ] ||
        { cat "$tmp/preset.log" "$tmp/preset/results.md"; return 1; }
}
check "a preset runs (--configs picks Mix-LN at 8 layers, its Pre-LN comes along), shrunk by flags after --" runs_a_preset
check "a preset refuses data of another row length" fails_with "takes padded rows of -t 128 (prepro_text.py --pad-to 128)" \
    python3 scripts/reproduce.py cpu_table3 --data "$tmp/data" --trainer ./train_mixln_cpu --out "$tmp/bad" --dry-run
check "a preset needs --data" fails_with "cpu_lr trains on --data DIR" \
    python3 scripts/reproduce.py cpu_lr --trainer ./train_mixln_cpu --out "$tmp/bad"

summary
