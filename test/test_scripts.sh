#!/usr/bin/env bash
# End-to-end checks of the Python data scripts on tiny data, offline: prepro_text.py with the byte
# and BPE tokenizers, prepro_c4.py on small files in C4's format with the BPE run's tokenizer
# (shards, decoding via vocab.bin, resuming, errors), and the vocab.bin bytes that
# test/test_tokenizer.cpp expects. Ends with "test_scripts: N passed, M failed" counting the checks
# (plus ", K skipped" when the Python packages of scripts/requirements.txt are missing).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1  # hub look-ups fail at once instead of retrying
tmp=$(mktemp -d /tmp/mixln_scripts_XXXXXX)
export PYTHONPATH=$PWD/scripts:$tmp  # the Python checks import the scripts and $tmp/helpers.py
trap 'rm -rf "$tmp"' EXIT
SUITE=test_scripts PYTHON_MODULES="numpy tokenizers huggingface_hub tqdm matplotlib"
source test/script_checks.sh

# The tiny corpus: blank-line-separated paragraphs with some non-ASCII text, and one that spells out
# the end-of-text token, which must stay plain text.
cat > "$tmp/text.txt" <<'EOF'
In the beginning was the word, and the word was with the writer.

The thing about the weather is that the weather is never the same.

Naïve café owners serve crème brûlée — and 日本語 menus — to thirsty travellers. 🍵

Then the writer wrote: <|endoftext|> is just text here, as is </s>.

Another day, another paragraph; the theme of the thing is the theme.

Numbers like 3.14159 and 2718 appear in the text too.

The end of the beginning is the beginning of the end.

She sells sea shells by the sea shore, and the shells she sells are sea shells.
EOF

# Helpers for the Python checks: the paragraphs, and decoding ids through a vocab.bin.
cat > "$tmp/helpers.py" <<'EOF'
import glob
import sys

import numpy as np
from shard_format import read_shard
from vocab_format import read_vocab

tmp = sys.argv[1]
# prepro_text.py's documents, as the whole file read at once would give them
paragraphs = [d.strip() for d in open(f"{tmp}/text.txt", encoding="utf-8").read().split("\n\n") if d.strip()]


def split_docs(docs, val_every):
    """prepro_text.py's split: (train, val)."""
    return ([d for i, d in enumerate(docs) if i % val_every != val_every - 1],
            [d for i, d in enumerate(docs) if i % val_every == val_every - 1])


def shard_tokens(pattern, vocab_size):
    """The ids of the shards matching pattern, in name order, checking each shard's vocab_size."""
    arrays = []
    for path in sorted(glob.glob(pattern)):
        tokens, vocab = read_shard(path)
        assert vocab == vocab_size, f"{path}: vocab_size {vocab}, expected {vocab_size}"
        arrays.append(tokens)
    assert arrays, f"no shards match {pattern}"
    return np.concatenate(arrays)


def check_decodes_to(vocab_path, tokens, docs):
    """The ids are the documents, each followed by the end-of-text id, and decode via vocab.bin to
    the documents' text. (Split at the ids: a document may spell out the end-of-text token.)"""
    pieces, eot = read_vocab(vocab_path)
    assert eot >= 0, "no end-of-text id"
    first = b"".join(pieces[i] for i in tokens[:20].tolist())
    assert docs[0].encode().startswith(first), f"the first ids decode to {first!r}"
    ends = np.flatnonzero(tokens == eot)
    assert ends.size == len(docs) and ends[-1] == tokens.size - 1, f"{ends.size} end-of-text ids for {len(docs)} documents"
    got = [b"".join(pieces[i] for i in doc.tolist()) for doc in np.split(tokens, ends + 1)[:-1]]
    want = [d.encode() + pieces[eot] for d in docs]
    assert got == want, f"decoded {got[:3]}..., expected {want[:3]}..."
EOF

echo "prepro_text.py, byte tokenizer"
check "runs" python3 scripts/prepro_text.py --val-every 3 --out "$tmp/bytes" "$tmp/text.txt"
check "the shards hold each document's UTF-8 bytes and a blank line" python3 - "$tmp" <<'PY'
from helpers import *
for name, docs in zip(("train", "val"), split_docs(paragraphs, 3)):
    tokens, vocab = read_shard(f"{tmp}/bytes/{name}.bin")
    assert vocab == 256 and bytes(tokens.tolist()) == "".join(d + "\n\n" for d in docs).encode(), name
PY
check "vocab.bin holds the 256 single bytes and no end-of-text id; decoding gives the text" python3 - "$tmp" <<'PY'
from helpers import *
pieces, eot = read_vocab(f"{tmp}/bytes/vocab.bin")
assert pieces == [bytes([b]) for b in range(256)] and eot == -1, (len(pieces), eot)
tokens, _ = read_shard(f"{tmp}/bytes/train.bin")
assert b"".join(pieces[i] for i in tokens[:40].tolist()) == paragraphs[0].encode()[:40]
PY

echo "prepro_text.py, BPE tokenizer"
check "runs" python3 scripts/prepro_text.py --tokenizer bpe --vocab-size 300 --val-every 3 --out "$tmp/bpe" "$tmp/text.txt"
check "merges: 257 .. 300 ids, fewer tokens than bytes, tokenizer.json saved" python3 - "$tmp" <<'PY'
from helpers import *
import os
pieces, eot = read_vocab(f"{tmp}/bpe/vocab.bin")
tokens, vocab = read_shard(f"{tmp}/bpe/train.bin")
assert 257 < len(pieces) <= 300 and vocab == len(pieces), (len(pieces), vocab)
assert pieces[eot] == b"<|endoftext|>", pieces[eot]
assert tokens.size < sum(len(d.encode()) for d in split_docs(paragraphs, 3)[0]), tokens.size
assert os.path.getsize(f"{tmp}/bpe/tokenizer.json") > 0
PY
check "the shards decode via vocab.bin to the documents, each ended by <|endoftext|>" python3 - "$tmp" <<'PY'
from helpers import *
pieces, _ = read_vocab(f"{tmp}/bpe/vocab.bin")
for name, docs in zip(("train", "val"), split_docs(paragraphs, 3)):
    check_decodes_to(f"{tmp}/bpe/vocab.bin", shard_tokens(f"{tmp}/bpe/{name}.bin", len(pieces)), docs)
PY
check "a hub tokenizer, offline, fails with a clear error" \
    fails_with "cannot load tokenizer 'no-such/tokenizer'" \
    python3 scripts/prepro_text.py --tokenizer hf:no-such/tokenizer --out "$tmp/hf" "$tmp/text.txt"

echo "prepro_text.py, streaming, encodings and resuming"
# The text as two files in a directory, the second with Windows line ends, and a hidden file that
# is left out, read 7 bytes at a time by 2 workers into shards of about 100 ids: the same ids as
# the byte run above, each shard ending a document.
streams_like_one_piece() {
    python3 - "$tmp" <<'PY' || return 1
from helpers import *
import os
os.makedirs(f"{tmp}/dir/sub")
open(f"{tmp}/dir/a.txt", "w", encoding="utf-8").write("\n\n".join(paragraphs[:4]))
open(f"{tmp}/dir/sub/b.txt", "w", encoding="utf-8", newline="\r\n").write("\n\n\n".join(paragraphs[4:]) + "\n")
open(f"{tmp}/dir/.hidden.txt", "w").write("not a document")
PY
    python3 scripts/prepro_text.py --val-every 3 --chunk-bytes 7 --workers 2 --shard-tokens 100 \
        --out "$tmp/stream" "$tmp/dir" > /dev/null || return 1
    python3 - "$tmp" <<'PY'
from helpers import *
for name in ("train", "val"):
    paths = sorted(glob.glob(f"{tmp}/stream/{name}_*.bin"))
    sizes = [read_shard(p)[0].size for p in paths]
    assert all(s >= 100 for s in sizes[:-1]) and (name == "val" or len(paths) > 2), (name, sizes)
    assert all(bytes(read_shard(p)[0][-2:].tolist()) == b"\n\n" for p in paths), f"{name}: a shard ends mid-document"
    assert (shard_tokens(f"{tmp}/stream/{name}_*.bin", 256) == read_shard(f"{tmp}/bytes/{name}.bin")[0]).all(), name
PY
}
check "a directory read in 7-byte chunks by 2 workers into shards: the ids of the one-piece run" streams_like_one_piece

# Windows-1252 text: 0x92 is its apostrophe, 0xe9 an e-acute, 0x81 is undefined in it.
printf 'It\x92s a fine day.\n\nThe caf\xe9 is open.\n\nA third one.\n\nThe fourth \x81 one.\n' > "$tmp/cp1252.txt"
check "Windows-1252 read as UTF-8: the error names the file, the offset and the byte" \
    fails_with "cp1252.txt: byte 0x92 at offset 2 is not valid utf-8" \
    python3 scripts/prepro_text.py --val-every 2 --out "$tmp/w_strict" "$tmp/cp1252.txt"
decodes_cp1252() {
    local e done
    for e in replace:replaced skip:skipped; do
        done=${e#*:} e=${e%:*}
        python3 scripts/prepro_text.py --val-every 2 --encoding cp1252 --errors $e --out "$tmp/w_$e" "$tmp/cp1252.txt" \
            > "$tmp/w_$e.log" || { cat "$tmp/w_$e.log"; return 1; }
        grep -q "^1 bytes not valid cp1252 were $done" "$tmp/w_$e.log" || { cat "$tmp/w_$e.log"; return 1; }
    done
    python3 - "$tmp" <<'PY'
from helpers import *
import json
for e, done, bad in (("replace", "replaced", "\ufffd"), ("skip", "skipped", "")):
    text = b"".join(bytes(read_shard(f"{tmp}/w_{e}/{n}.bin")[0].tolist()) for n in ("train", "val")).decode()
    assert text == "It\u2019s a fine day.\n\nA third one.\n\nThe caf\u00e9 is open.\n\n" f"The fourth {bad} one.\n\n", text
    stats = json.load(open(f"{tmp}/w_{e}/stats.json"))
    assert stats[f"bytes_{done}"] == 1 and stats["encoding"] == "cp1252", stats
PY
}
check "--encoding cp1252 decodes it; --errors replace and skip count the undefined byte" decodes_cp1252
check "BPE trains on the first --bpe-sample-bytes of the training documents, and says so" python3 - "$tmp" <<'PY'
from helpers import *
import json, subprocess
out = subprocess.run(["python3", "scripts/prepro_text.py", "--tokenizer", "bpe", "--vocab-size", "280", "--val-every", "3",
                      "--bpe-sample-bytes", "100", "--out", f"{tmp}/bpe_sample", f"{tmp}/text.txt"],
                     check=True, capture_output=True, text=True).stdout
train = split_docs(paragraphs, 3)[0]
want = len(train[0].encode()) + len(train[1].encode())  # the first document reaching 100 bytes is the second
assert f"trained on {want} bytes (2 documents)" in out, out
assert json.load(open(f"{tmp}/bpe_sample/stats.json"))["bpe_sample"] == {"documents": 2, "bytes": want}
PY

# A run killed (SIGKILL) once it has closed a shard and is writing the next, then rerun: the output
# is the uninterrupted run's, and the shards closed before the kill are kept, not rewritten.
killed_run_resumes() {
    python3 -c "import sys; sys.stdout.write(open(sys.argv[1]).read() * 1500)" "$tmp/text.txt" > "$tmp/long.txt"
    local run=(python3 scripts/prepro_text.py --val-every 3 --chunk-bytes 2048 --workers 1 --shard-tokens 40000 "$tmp/long.txt")
    "${run[@]}" --out "$tmp/whole" > /dev/null || return 1
    python3 - "$tmp" "${run[@]}" --out "$tmp/killed" <<'PY' || return 1
import json, subprocess, sys, time
run = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
while run.poll() is None:
    try:
        closed = json.load(open(f"{sys.argv[1]}/killed/progress.json"))["train"]["shards"]
    except (OSError, ValueError):
        closed = 0
    if closed:
        run.kill()
        break
    time.sleep(0.002)
assert run.wait() == -9, "the run finished before it could be killed"
PY
    (cd "$tmp/killed" && ls -i train_0*.bin) > "$tmp/killed.inodes"
    "${run[@]}" --out "$tmp/killed" > /dev/null || return 1
    diff "$tmp/killed.inodes" <(cd "$tmp/killed" && ls -i $(awk '{print $2}' "$tmp/killed.inodes")) || return 1
    local f
    for f in $(cd "$tmp/whole" && ls *.bin stats.json); do cmp "$tmp/whole/$f" "$tmp/killed/$f" || return 1; done
    [ "$(ls "$tmp/whole")" = "$(ls "$tmp/killed")" ]
}
check "a killed run, rerun, continues where it stopped and writes the uninterrupted run's files" killed_run_resumes

echo "prepro_c4.py on local files in C4's format, with the BPE tokenizer"
check "write the C4-format inputs" python3 - "$tmp" <<'PY'
from helpers import *
import gzip, json
docs = [f"Document {i}.\n{paragraphs[i % len(paragraphs)]}\n{paragraphs[(3 * i) % len(paragraphs)]}" for i in range(48)]
def lines(ds):
    return "".join(json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{i}"}) + "\n"
                   for i, d in enumerate(ds))
with gzip.open(f"{tmp}/c4-train.00000.json.gz", "wt", encoding="utf-8") as f:
    f.write(lines(docs[:30]) + "\n")  # a trailing blank line is skipped
with open(f"{tmp}/c4-train.00001.json", "w", encoding="utf-8") as f:
    f.write(lines(docs[30:40]))
with gzip.open(f"{tmp}/c4-validation.00000.json.gz", "wt", encoding="utf-8") as f:
    f.write(lines(docs[40:]))
json.dump(docs, open(f"{tmp}/c4_docs.json", "w"))
PY
# c4 ARGS...: prepro_c4.py on those files with the BPE tokenizer; its output also goes to $tmp/c4.log.
c4() {
    python3 scripts/prepro_c4.py --tokenizer "$tmp/bpe/tokenizer.json" --shard-tokens 300 --workers 2 \
        --train-files "$tmp/c4-train.00000.json.gz" "$tmp/c4-train.00001.json" \
        --val-files "$tmp/c4-validation.00000.json.gz" "$@" 2>&1 | tee "$tmp/c4.log"
    return "${PIPESTATUS[0]}"
}
# snapshot NAME: the inodes and checksums of the output shards (a rewritten shard gets a new inode).
snapshot() { (cd "$tmp/c4" && ls -i train_*.bin val_*.bin > "$tmp/$1.inodes" && md5sum train_*.bin val_*.bin > "$tmp/$1.md5") 2>/dev/null; }

check "runs" c4 --out "$tmp/c4"
snapshot first
check "the shards decode to the documents in order; each ends a document, all but the last >= 300 tokens" \
    python3 - "$tmp" <<'PY'
from helpers import *
import json
docs = json.load(open(f"{tmp}/c4_docs.json"))
pieces, eot = read_vocab(f"{tmp}/c4/vocab.bin")
assert pieces == read_vocab(f"{tmp}/bpe/vocab.bin")[0], "vocab.bin differs from the BPE run's"
for name, ds in (("train", docs[:40]), ("val", docs[40:])):
    paths = sorted(glob.glob(f"{tmp}/c4/{name}_*.bin"))
    sizes = [read_shard(p)[0].size for p in paths]
    assert all(read_shard(p)[0][-1] == eot for p in paths), f"{name}: a shard ends mid-document"
    assert all(s >= 300 for s in sizes[:-1]) and (name == "val" or len(paths) > 2), (name, sizes)
    check_decodes_to(f"{tmp}/c4/vocab.bin", shard_tokens(f"{tmp}/c4/{name}_*.bin", len(pieces)), ds)
PY
check "the summary counts the documents and tokens written; stats.json has the unigram baseline" python3 - "$tmp" <<'PY'
from helpers import *
log = open(f"{tmp}/c4.log").read()
for name, docs in (("train", 40), ("val", 8)):
    paths = sorted(glob.glob(f"{tmp}/c4/{name}_*.bin"))
    tokens = sum(read_shard(p)[0].size for p in paths)
    line = f"{name}: {docs} documents, {tokens} tokens in {len(paths)} shards"
    assert line in log, f"no line '{line}' in:\n{log}"
import json
vocab = len(read_vocab(f"{tmp}/c4/vocab.bin")[0])
train, val = (shard_tokens(f"{tmp}/c4/{name}_*.bin", vocab) for name in ("train", "val"))
counts = np.bincount(train, minlength=vocab) + 1.0
baseline = float(-np.log(counts / counts.sum())[val].mean())
stats = json.load(open(f"{tmp}/c4/stats.json"))
assert abs(stats["unigram_val_loss"] - baseline) < 1e-9 and stats["val_tokens"] == val.size, (stats, baseline)
assert f"unigram baseline on val: {baseline:.4f} nats/token" in log, log
PY

# The C4 shards feed the trainer: two steps on them, validation, and a decoded sample.
trains_on_c4_shards() {
    ./train_mixln_cpu -e tiny -L 1 -C 32 -H 2 -F 32 -i "$tmp/c4/train_*.bin" -j "$tmp/c4/val_*.bin" \
        -b 2 -t 32 -d 64 -x 2 -o "$tmp/c4_run" -G 10 -P "The" > "$tmp/c4_run.log" 2>&1 || { cat "$tmp/c4_run.log"; return 1; }
    grep -q "val loss" "$tmp/c4_run.log" && grep -q "^sample" "$tmp/c4_run.log" || { cat "$tmp/c4_run.log"; return 1; }
}
check "the shards load in the trainer, which trains, validates and samples with their vocab.bin" trains_on_c4_shards

# The paper's table runner on the C4 shards: every variant of Table 1 trains, and a rerun resumes
# nothing and rewrites the same table.
reproduces_table1() {
    local flags=(-e tiny -L 2 -C 32 -H 2 -F 32 -i "$tmp/c4/train_*.bin" -j "$tmp/c4/val_*.bin" -b 2 -t 32 -d 64 -x 3)
    python3 scripts/reproduce.py table1 --protocol packed --trainer ./train_mixln_cpu --out "$tmp/t1" -- "${flags[@]}" > "$tmp/t1.log" 2>&1 || { cat "$tmp/t1.log"; return 1; }
    for name in Post-LN DeepNorm Pre-LN Mix-LN; do grep -q "^| $name | [0-9.]* | [0-9.]* |$" "$tmp/t1/results.md" || { cat "$tmp/t1/results.md"; return 1; }; done
    cp "$tmp/t1/results.md" "$tmp/t1_first.md"
    python3 scripts/reproduce.py table1 --protocol packed --trainer ./train_mixln_cpu --out "$tmp/t1" -- "${flags[@]}" > "$tmp/t1_again.log" 2>&1 &&
        ! grep -q "^+ " "$tmp/t1_again.log" && diff "$tmp/t1_first.md" "$tmp/t1/results.md"
}
check "reproduce.py table1 trains every variant, writes the table, and skips finished runs" reproduces_table1

# The paper's protocol (issue 17): prepro_c4.py --pad-to writes one document per row, its first T - 1
# ids and the end-of-text id, padded; reproduce.py's default protocol validates on those over a
# token budget and runs the official code's DeepNorm; it refuses packed validation shards.
check "prepro_c4.py --pad-to 32 writes padded shards, one truncated document per row" c4 --out "$tmp/c4_padded" --pad-to 32
check "the padded rows are the documents, truncated to 31 ids and </s>" python3 - "$tmp" <<'PY'
from helpers import *
from shard_format import read_padded_rows
for name in ("train", "val"):
    pieces, eot = read_vocab(f"{tmp}/c4/vocab.bin")
    packed = shard_tokens(f"{tmp}/c4/{name}_*.bin", len(pieces))
    docs = np.split(packed, np.flatnonzero(packed == eot)[:-1] + 1)  # each ends with eot
    rows = np.concatenate([read_padded_rows(p)[0] for p in sorted(glob.glob(f"{tmp}/c4_padded/{name}_*.bin"))])
    assert len(rows) == len(docs), (name, len(rows), len(docs))
    assert any(d.size > 32 for d in docs), "no document long enough to be truncated"
    for row, doc in zip(rows, docs):
        want = np.concatenate([doc[:-1][:31], [eot]])
        assert (row[:want.size] == want).all() and (row[want.size:] == -1).all(), (row, doc)
PY
reproduces_table1_in_the_papers_protocol() {
    local flags=(-e tiny -L 2 -C 32 -H 2 -F 32 -i "$tmp/c4_padded/train_*.bin" -j "$tmp/c4_padded/val_*.bin" -b 2 -t 32 -d 64 -x 3)
    python3 scripts/reproduce.py table1 --trainer ./train_mixln_cpu --out "$tmp/t1p" -- "${flags[@]}" > "$tmp/t1p.log" 2>&1 || { cat "$tmp/t1p.log"; return 1; }
    grep -q "^+ .* -m 10M -n deepnorm_paper -o $tmp/t1p/DeepNorm$" "$tmp/t1p.log" &&
        grep -q "val loss .* (padded documents)" "$tmp/t1p.log" && grep -q "^| Mix-LN | [0-9.]* | [0-9.]* |$" "$tmp/t1p/results.md" ||
        { cat "$tmp/t1p.log"; return 1; }
}
check "reproduce.py's default protocol: padded validation over 10M tokens, DeepNorm as the paper's code" reproduces_table1_in_the_papers_protocol
check "reproduce.py's default protocol refuses packed validation shards" fails_with "is packed; or use --protocol packed" \
    python3 scripts/reproduce.py table3 --trainer ./train_mixln_cpu --out "$tmp/t3" -- -i "$tmp/c4/train_*.bin" -j "$tmp/c4/val_*.bin"

# An unfinished variant resumes from its checkpoint with -r (the run directory's rules let the same run
# continue); one that died before its first checkpoint starts over with -W 1.
resumes_unfinished_runs() {
    local flags=(-e tiny -L 1 -C 32 -H 2 -F 32 -i "$tmp/c4/train_*.bin" -j "$tmp/c4/val_*.bin" -b 2 -t 32 -d 64 -x 4 -c 2)
    python3 scripts/reproduce.py table1 --protocol packed --trainer ./train_mixln_cpu --out "$tmp/t1r" -- "${flags[@]}" > "$tmp/t1r.log" 2>&1 || { cat "$tmp/t1r.log"; return 1; }
    rm "$tmp/t1r/Pre-LN/DONE" "$tmp/t1r/Pre-LN/ckpt_00000004.bin"  # killed after step 3
    rm "$tmp/t1r/Mix-LN/DONE" "$tmp/t1r/Mix-LN/"ckpt_*.bin           # killed before step 2
    python3 scripts/reproduce.py table1 --protocol packed --trainer ./train_mixln_cpu --out "$tmp/t1r" -- "${flags[@]}" > "$tmp/t1r_again.log" 2>&1 || { cat "$tmp/t1r_again.log"; return 1; }
    grep -q "resuming at step 2" "$tmp/t1r_again.log" && grep -q "Mix-LN -W 1" "$tmp/t1r_again.log" &&
        [ -f "$tmp/t1r/Pre-LN/ckpt_00000004.bin" ] && [ -f "$tmp/t1r/Mix-LN/ckpt_00000004.bin" ] || { cat "$tmp/t1r_again.log"; return 1; }
}
check "reproduce.py resumes an unfinished run with -r and restarts one that saved no checkpoint" resumes_unfinished_runs

# The plot scripts turn the analysis tool's CSVs and the trainers' logs into PNG files.
plots_from_csvs() {
    ./analyze_mixln_cpu -f "$tmp/t1/Mix-LN" -i "$tmp/c4/val_*.bin" -b 2 -t 32 -d 64 -m 2 -o "$tmp/an" > "$tmp/an.log" 2>&1 || { cat "$tmp/an.log"; return 1; }
    python3 scripts/plot_grad_norms.py -o "$tmp/p/g.png" A="$tmp/an/grad_norms.csv" B="$tmp/an/grad_norms.csv" &&
    python3 scripts/plot_angular_distance.py -o "$tmp/p/a.png" A="$tmp/an/angular_distance.csv" &&
    python3 scripts/plot_angular_distance.py --row-normalize -o "$tmp/p/r.png" A="$tmp/an/angular_distance.csv" &&
    python3 scripts/plot_pruning.py -o "$tmp/p/p.png" A="$tmp/an/pruning.csv" &&
    python3 scripts/plot_loss.py -o "$tmp/p/l.png" Pre="$tmp/t1/Pre-LN/log.csv" Mix="$tmp/t1/Mix-LN/log.csv" || return 1
    for f in g a r p l; do [ "$(head -c 4 "$tmp/p/$f.png" | tail -c 3)" = "PNG" ] || { echo "$f.png is not a PNG"; return 1; }; done
}
check "the plot scripts draw every CSV the tools write" plots_from_csvs

rerun_leaves_shards() {
    c4 --out "$tmp/c4" && snapshot rerun && diff "$tmp/first.inodes" "$tmp/rerun.inodes" && diff "$tmp/first.md5" "$tmp/rerun.md5"
}
check "a rerun leaves the finished shards alone" rerun_leaves_shards

# Rewinds the output to how an interrupted run leaves it after two train shards, then resumes.
resume_after_interruption() {
    python3 - "$tmp" <<'PY' || return 1
from helpers import *
import json, os
progress = json.load(open(f"{tmp}/c4/progress.json"))
eot = read_vocab(f"{tmp}/c4/vocab.bin")[1]
kept = [read_shard(f"{tmp}/c4/train_{k:03d}.bin")[0] for k in range(2)]
progress["train"] = {"shards": 2, "documents": int(sum((t == eot).sum() for t in kept)),
                     "tokens": int(sum(t.size for t in kept))}
del progress["val"]
json.dump(progress, open(f"{tmp}/c4/progress.json", "w"))
for path in glob.glob(f"{tmp}/c4/*_*.bin"):
    if not path.endswith(("/train_000.bin", "/train_001.bin")):
        os.remove(path)
PY
    c4 --out "$tmp/c4" && snapshot resumed && diff "$tmp/first.md5" "$tmp/resumed.md5" &&
        diff <(grep -E 'train_00[01]' "$tmp/first.inodes") <(grep -E 'train_00[01]' "$tmp/resumed.inodes")
}
check "after an interruption, a rerun keeps the shards done and writes the same others" resume_after_interruption
check "other arguments on a resumed --out stop with an error" \
    fails_with "is from a run with other arguments" c4 --out "$tmp/c4" --model-vocab 1000
check "an id at or past --model-vocab stops with an error" \
    fails_with "but the model has only 260 rows (--model-vocab)" c4 --out "$tmp/c4_small" --model-vocab 260
check "C4 from the hub, offline, fails with a clear error" \
    fails_with "cannot download allenai/c4" \
    python3 scripts/prepro_c4.py --tokenizer "$tmp/bpe/tokenizer.json" --out "$tmp/hub"

echo "bad input: one line naming the problem, a non-zero exit, no traceback"
: > "$tmp/empty.txt"
mkdir -p "$tmp/empty_dir/.hidden" && echo "hidden" > "$tmp/empty_dir/.hidden/x.txt"
echo '{"text": "one"}' > "$tmp/bad.json" && echo 'not json' >> "$tmp/bad.json"
echo "not a tokenizer" > "$tmp/bad_tokenizer.json"
printf 'a,b\n' > "$tmp/no_rows.csv"
text() { python3 scripts/prepro_text.py --out "$(mktemp -u "$tmp/out_XXXXXX")" "$@"; }
check "prepro_text: a missing file" fails_with "nope.txt: no such file or directory" text "$tmp/nope.txt"
check "prepro_text: a glob that matches nothing" fails_with "*.nope: no files match" text "$tmp/*.nope"
check "prepro_text: a directory with nothing readable" fails_with "empty_dir: a directory with no readable files" \
    text "$tmp/empty_dir"
check "prepro_text: empty input" fails_with "no documents in $tmp/empty.txt" text "$tmp/empty.txt"
check "prepro_text: too few documents for validation" fails_with "none for validation" text --val-every 50 "$tmp/text.txt"
check "prepro_text: a missing tokenizer path" fails_with "$tmp/nope/tokenizer.json: no such file" \
    text --tokenizer "hf:$tmp/nope/tokenizer.json" "$tmp/text.txt"
check "prepro_text: a file that is not a tokenizer.json" fails_with "bad_tokenizer.json: not a tokenizer.json" \
    text --tokenizer "hf:$tmp/bad_tokenizer.json" "$tmp/text.txt"
check "prepro_text: a vocabulary smaller than the bytes and end-of-text" fails_with "--vocab-size must be at least 257" \
    text --tokenizer bpe --vocab-size 100 "$tmp/text.txt"
check "prepro_text: an unknown encoding" fails_with "unknown text encoding 'klingon'" text --encoding klingon "$tmp/text.txt"
check "prepro_text: an unwritable output" fails_with "text.txt/out: Not a directory" \
    python3 scripts/prepro_text.py --out "$tmp/text.txt/out" "$tmp/text.txt"
corrupt_last_train_shard() {  # the resumed run of the test above, one of its shards cut short, redone
    local last
    last=$(cd "$tmp/killed" && ls train_*.bin | tail -n 1)
    truncate -s -3 "$tmp/killed/$last" && sed -i 's/"finished": true/"finished": false/' "$tmp/killed/progress.json" &&
        python3 scripts/prepro_text.py --val-every 3 --chunk-bytes 2048 --workers 1 --shard-tokens 40000 \
            --out "$tmp/killed" "$tmp/long.txt"
}
check "prepro_text: a corrupted shard" fails_with "corrupted: the header promises" corrupt_last_train_shard
c4_bad() { python3 scripts/prepro_c4.py --out "$tmp/c4_bad" --val-files "$tmp/c4-validation.00000.json.gz" "$@"; }
check "prepro_c4: a missing tokenizer path" fails_with "$tmp/nope/tokenizer.json: no such file" \
    c4_bad --tokenizer "$tmp/nope/tokenizer.json" --train-files "$tmp/bad.json"
check "prepro_c4: a missing file" fails_with "no such file: $tmp/nope.json" \
    c4_bad --tokenizer "$tmp/bpe/tokenizer.json" --train-files "$tmp/nope.json"
check "prepro_c4: a line that is not JSON" fails_with "bad.json, line 2: not a JSON object with a \"text\" field" \
    c4_bad --tokenizer "$tmp/bpe/tokenizer.json" --train-files "$tmp/bad.json"
check "prepro_c4: empty input" fails_with "no documents in the train files $tmp/empty.txt" \
    c4_bad --tokenizer "$tmp/bpe/tokenizer.json" --train-files "$tmp/empty.txt"
check "prepro_c4: an unwritable output" fails_with "text.txt/out: Not a directory" \
    python3 scripts/prepro_c4.py --tokenizer "$tmp/bpe/tokenizer.json" --out "$tmp/text.txt/out" \
    --train-files "$tmp/bad.json" --val-files "$tmp/bad.json"
corrupt_c4_shard() { truncate -s -2 "$tmp/c4/val_000.bin" && c4 --out "$tmp/c4"; }
check "prepro_c4: a corrupted shard" fails_with "val_000.bin: corrupted: the header promises" corrupt_c4_shard
check "make_random_shard: an unwritable output" fails_with "text.txt: File exists" \
    python3 scripts/make_random_shard.py --out "$tmp/text.txt/r.bin" --tokens 10
check "make_random_shard: a vocabulary too large for a shard" fails_with "does not fit a shard header" \
    python3 scripts/make_random_shard.py --out "$tmp/r.bin" --tokens 10 --vocab-size $((1 << 32))
check "reproduce: a missing trainer" fails_with "$tmp/nope: No such file or directory" \
    python3 scripts/reproduce.py table1 --protocol packed --trainer "$tmp/nope" --out "$tmp/t_bad" -- -e tiny
check "plot: a missing file" fails_with "nope.csv: no such file" python3 scripts/plot_loss.py -o "$tmp/p.png" "$tmp/nope.csv"
check "plot: a CSV with no rows" fails_with "no_rows.csv: no rows" python3 scripts/plot_pruning.py -o "$tmp/p.png" "$tmp/no_rows.csv"
check "plot: a CSV of another kind" fails_with "log.csv: no column 'layer'" \
    python3 scripts/plot_angular_distance.py -o "$tmp/p.png" "$tmp/t1/Mix-LN/log.csv"
printf 'config,seed,status,val_loss,val_ppl,wall_s,dir,copied_from\nPost-LN,1,diverged,,,1.0,x,\n' > "$tmp/runs_diverged.csv"
check "plot_final: a table without a finished run" fails_with "runs_diverged.csv: no finished run" \
    python3 scripts/plot_final.py -o "$tmp/p.png" "$tmp/runs_diverged.csv"
check "get_kjv: an unwritable output" fails_with "error: cannot write $tmp/text.txt/kjv.txt" scripts/get_kjv.sh "$tmp/text.txt/kjv.txt"

echo "vocab_format.py"
check "writes the bytes test/test_tokenizer.cpp reads" python3 - "$tmp" <<'PY'
from vocab_format import write_vocab, read_vocab
import sys
path = f"{sys.argv[1]}/golden.bin"
write_vocab(path, [b"a", b"bc", b""], 1)
got = open(path, "rb").read().hex()
golden = "4d49584c4e564f43" "01000000" "03000000" "01000000" "01000000" "61" "02000000" "6263" "00000000"
assert got == golden, got
assert read_vocab(path) == ([b"a", b"bc", b""], 1)
PY
check "a SentencePiece-style (T5) vocabulary: ids decode to the text, \"▁\" as a space" python3 - "$tmp" <<'PY'
from helpers import *
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from vocab_format import tokenizer_vocab
# a tiny Unigram model with T5's pre-tokenizer and decoder, which start every text with a space
tokenizer = Tokenizer(models.Unigram())
tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
tokenizer.train_from_iterator(paragraphs, trainers.UnigramTrainer(
    vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
tokenizer.encode_special_tokens = True  # as the scripts set it
pieces, eot = tokenizer_vocab(tokenizer)
assert eot == 1 and pieces[:3] == [b"<pad>", b"</s>", b"<unk>"], (eot, pieces[:3])
for p in paragraphs:
    ids = tokenizer.encode(p).ids
    assert 2 not in ids, f"<unk> in the ids of {p!r}"
    assert b"".join(pieces[i] for i in ids) == b" " + p.encode(), p
PY
check "rejects truncated and overlong files" python3 - "$tmp" <<'PY'
from vocab_format import read_vocab
import sys
path = f"{sys.argv[1]}/golden.bin"
good = open(path, "rb").read()
for bad, why in ((good[:-5], "entry 1 runs past the end"), (good[:-4], "truncated at entry 2"), (good + b"x", "stray bytes")):
    open(path, "wb").write(bad)
    try:
        read_vocab(path)
    except ValueError as e:
        assert why in str(e), (why, str(e))
    else:
        raise AssertionError(f"no error for a file {why}")
PY

echo "demo.sh's Next commands, run as printed after a short demo on tiny data"
# A corpus that a tiny model learns within a few steps (it must beat the unigram baseline, as the
# demo checks): a handful of sentences in varying order, 90 KB.
python3 - "$tmp/demo.txt" <<'PY'
import random, sys
sentences = ["And God said, Let there be light: and there was light.", "The LORD is my shepherd; I shall not want.",
             "In the beginning God created the heaven and the earth.", "Blessed are the meek: for they shall inherit the earth."]
rng = random.Random(1)
open(sys.argv[1], "w").write("\n\n".join(" ".join(rng.choice(sentences) for _ in range(4)) for _ in range(400)) + "\n")
PY
check "prepare the demo's corpus" python3 scripts/prepro_text.py --val-every 3 --out "$tmp/demo_data" "$tmp/demo.txt"
demo_runs() {
    DEMO_DATA=$tmp/demo_data DEMO_OUT=$tmp/runs/demo DEMO_STEPS=10 scripts/demo.sh > "$tmp/demo.log" 2>&1 ||
        { tail -n 20 "$tmp/demo.log"; return 1; }
    grep -q "^sample" "$tmp/demo.log" && grep -q "^Next" "$tmp/demo.log"
}
check "the demo trains, beats the unigram baseline, samples and prints what to run next" demo_runs
next_commands=$(sed -n 's/^  \$ //p' "$tmp/demo.log" 2>/dev/null)
while IFS= read -r cmd; do
    case $cmd in
        *prepro_c4.py*|*./train_mixln\ *) echo "  skip  $cmd  (needs the Hugging Face hub or a GPU)" ;;
        ?*) check "$cmd" bash -c "$cmd" ;;
    esac
done <<<"$next_commands"
check "analyze_mixln_cpu takes -t and -b from the checkpoint" bash -c "./analyze_mixln_cpu -f $tmp/runs/demo \
    -i $tmp/demo_data/val.bin -A angle -m 1 -o $tmp/runs/angle | grep -q 'batches of 16 x 128 tokens'"
check "analyze_mixln_cpu notes a -t that differs from the checkpoint's" bash -c "./analyze_mixln_cpu -f $tmp/runs/demo \
    -i $tmp/demo_data/val.bin -A angle -m 1 -t 64 -o $tmp/runs/angle | grep -q 'note: -t 64 differs'"
check "the runs of the Next commands wrote their results" test -s "$tmp/runs/demo/analysis/pruning.csv" -a \
    -s "$tmp/runs/table1/results.md" -a "$(grep -c '^  \$ ' "$tmp/demo.log")" -eq 5

echo "Makefile and scripts/install_deps.sh"
# Flags on the make command line add to the Makefile's (before: CXXFLAGS+=... dropped -O2 -fopenmp -std=c++17).
flags_add_up() {
    make -s -n -B train_mixln_cpu CXXFLAGS+=-DMIXLN_EXTRA | grep -- "-O2 .*-fopenmp -std=c++17 .*-DMIXLN_EXTRA" &&
        make -s -n -B build/sanitize/test_main.o SANITIZE=1 | grep -- "-std=c++17 .*-fsanitize=address,undefined"
}
check "flags given to make add to the Makefile's; SANITIZE=1 adds ASan and UBSan" flags_add_up
# make test on a fresh machine: Catch2's header missing -> apt-get install catch2 (a stand-in apt-get here).
installs_catch2() {
    mkdir -p "$tmp/fakebin" && printf '#!/bin/sh\necho "$@" >> %s/apt.log\n' "$tmp" > "$tmp/fakebin/apt-get" && chmod +x "$tmp/fakebin/apt-get"
    [ "$(id -u)" -eq 0 ] || { printf '#!/bin/sh\nexec "$@"\n' > "$tmp/fakebin/sudo"; chmod +x "$tmp/fakebin/sudo"; }
    PATH="$tmp/fakebin:$PATH" CATCH2_INCLUDE_DIR="$tmp/no_catch2" scripts/install_deps.sh test &&
        grep -q "install -y -qq catch2" "$tmp/apt.log" && rm "$tmp/apt.log" &&
        PATH="$tmp/fakebin:$PATH" scripts/install_deps.sh test && [ ! -e "$tmp/apt.log" ]  # nothing when it is there
}
check "scripts/install_deps.sh installs Catch2 when its header is missing, and nothing when it is there" installs_catch2

# make gpu-check without a GPU: stand-ins for nvidia-smi, compute-sanitizer, timeout and every binary
# make gpu-check-build leaves, each printing a known line, so that the script's phases, logs, report
# and time limits are checked here. The stand-in timeout records each step's limit and makes racecheck
# time out; the stand-in trainer logs its flags and takes 200 ms a step before issue 12, 100 ms after
# (125 ms with -D 0).
stand_in_trainer() {  # FILE MS HAS_D
    cat > "$1" <<EOF
#!/bin/sh
echo "\$*" >> $tmp/gpu/trainer_flags
ms=$2; steps=1; out=out; checkpoints=yes
while [ \$# -gt 0 ]; do
    case \$1 in
        -h) echo "usage: train_mixln"; [ -z "$3" ] || echo "  -D 0|1     CUDA graphs"; exit 0 ;;
        -x) steps=\$2 ;;
        -o) out=\$2 ;;
        -D) [ "\$2" = 1 ] || ms=\$((ms + 25)) ;;
        -c) [ "\$2" != -1 ] || checkpoints= ;;
    esac
    shift 2
done
echo "device: Stand-in H200, 141 GiB"
mkdir -p \$out && echo loss > \$out/log.csv && echo norms > \$out/grad_norms.csv
for i in \$(seq 1 \$steps); do echo "step \$i/\$steps | loss 10.0 | lr 1e-03 | norm 1.0 | \$ms.0 ms | 1 tok/s | MFU 40.0% | ETA 0m01s"; done
[ -z "\$checkpoints" ] || for s in 00000010 00000020; do echo weights > \$out/ckpt_\$s.bin; done
EOF
    chmod +x "$1"
}
gpu_check_dry_run() {
    local g=$tmp/gpu
    local stubs=$g/stubs bin=$g/bin report=$g/report/report.md
    mkdir -p "$stubs" "$bin/bf16/dev" "$bin/fp32" "$bin/before"
    cat > "$stubs/nvidia-smi" <<'EOF'
#!/bin/sh
case "$*" in
    -L) echo "GPU 0: Stand-in H200 (UUID: GPU-0)" ;;
    *memory.used*) echo 2048 ;;
    *--query-gpu*) echo "Stand-in H200, 0.0, 143771 MiB" ;;
    *) echo "stand-in nvidia-smi" ;;
esac
EOF
    printf '#!/bin/sh\necho "========= ERROR SUMMARY: 0 errors"\n' > "$stubs/compute-sanitizer"
    # timeout: records each limit; racecheck times out at once; the dev step runs, then times out as if
    # killed before its table (its last argument, the table's file, is replaced by /dev/null)
    printf '#!/bin/bash\necho "$2" >> %s/limits\ncase "$*" in *racecheck*) exit 124 ;; esac\nshift 2\n' "$g" > "$stubs/timeout"
    printf 'case "$*" in *run_all*) "${@:1:$#-1}" /dev/null; exit 124 ;; esac\nexec "$@"\n' >> "$stubs/timeout"
    for p in bf16 fp32; do for t in test_gpu_kernels test_gpu_trainer; do
        printf '#!/bin/sh\necho "%s: 7 passed, 0 failed"\n' $t > "$bin/$p/$t"; done; done
    for k in $(cd dev && ls *.cu | sed 's/\.cu$//'); do
        printf '#!/bin/sh\n[ "$1" != --num-versions ] || { echo 1; exit 0; }\necho "device: Stand-in H200; 132 SMs"\necho "ceiling copy: 4300.0 GB/s"\necho "ceiling gemm: 790.0 TFLOP/s"\necho "%s 130m:16384x768 v1: 3000.0 GB/s (69.8%% of copy) 18.5 us"\n' $k > "$bin/bf16/dev/$k"
    done
    # one product's rate, for the report's comparison with the cost model's wave efficiency
    printf 'echo "matmul_forward 130m:qkv:16384x2304x768 v1: 600.0 TFLOP/s (75.9%% of gemm) 96.6 us kernel alone, 97.0 us with write-back"\n' >> "$bin/bf16/dev/matmul"
    stand_in_trainer "$bin/bf16/train_mixln" 100 yes
    stand_in_trainer "$bin/before/train_mixln" 200 ""
    chmod +x "$stubs"/* "$bin"/*/* "$bin"/bf16/dev/*
    echo tokens > "$bin/random.bin" && echo tokens > "$bin/random_small.bin"
    local code=0
    PATH="$stubs:$PATH" GPU_CHECK_BIN=$bin GPU_CHECK_WORK=$g/work dev/gpu_check.sh "$g/report" > "$g/out.txt" 2>&1 || code=$?
    local fail=0 worst
    expect() { grep -qE -- "$1" "$2" || { echo "no line /$1/ in $2"; fail=1; }; }
    [ $code -eq 1 ] || { echo "exit code $code, expected 1 (racecheck and the dev step timed out)"; fail=1; }
    [ "$(ls "$g/report")" = "$(printf '%s\n' bench.log bitwise.log dev.log info.log report.md sanitizer.log tests.log)" ] ||
        { echo "report files: $(ls "$g/report")"; fail=1; }
    [ "$(grep -c '| passed |' "$report")" -eq 9 ] || { echo "expected 9 steps passed"; fail=1; }
    expect '^\| compute-sanitizer racecheck \| TIMED OUT after 120s \|' "$report"
    expect '^\| dev/ benchmarks \(dev/run_all.sh\) \| TIMED OUT after 120s \|' "$report"
    expect '^The dev step did not finish \(see dev.log\); the runs that did:$' "$report"
    expect '^\*\*compute-sanitizer racecheck\*\* \(TIMED OUT' "$report"
    expect '^- test_gpu_trainer fp32: 7 passed, 0 failed$' "$report"
    expect '^\| attention \| 130m:16384x768 \| 1 \| 18.5 \| 3000.0 GB/s \| 69.8% of copy \|$' "$report"
    expect '^\| matmul_forward \| 130m:qkv:16384x2304x768 \| 1 \| 76% of the 8192\^3 rate \| 97% of the 8192\^3 rate \| 0.78 \|$' "$report"
    expect '^71m +before +32 +256 +0 +327680 +40.0% +200.0 +3 +2.0 +1.00$' "$report"
    expect '^250m +after +32 +256 +0 +655360 +40.0% +100.0 +3 +2.0 +2.00$' "$report"
    expect '^130m +after-D0 .* 524288 .* 1.60$' "$report"
    expect '^1b +after +32 .* 2.00$' "$report"
    ! grep -q '^1b +after-D0' "$report" || { echo "1b ran without graphs"; fail=1; }
    expect 'bitwise the same: plain, zero1 allreduce zero1_recompute nographs, ZeRO-1 resumed' "$g/report/bitwise.log"
    # The benchmark's runs: 4 before issue 12 (no -c -1: that trainer cannot be asked), 7 after with -c -1.
    [ "$(grep -c -- '-d 65536' "$g/trainer_flags")" -eq 11 ] && [ "$(grep -c -- '^-c -1 -D [01] .*-d 65536' "$g/trainer_flags")" -eq 7 ] ||
        { echo "the benchmark's trainer flags:"; grep -- '-d 65536' "$g/trainer_flags"; fail=1; }
    # The time limits: one per step; at worst (every step at its limit) what the script's header and
    # README say, under 540 s.
    [ "$(wc -l < "$g/limits")" -eq 11 ] || { echo "$(wc -l < "$g/limits") limits for 11 steps"; fail=1; }
    worst=$(sed -nE 's/.*at most ([0-9]+) s if every step.*/\1/p' "$report")
    [ -n "$worst" ] && [ "$worst" -le 540 ] && grep -q "($worst in all at worst" dev/gpu_check.sh && grep -q "$worst s in all at worst" README.md ||
        { echo "worst case '$worst' s: over 540 s, or not what dev/gpu_check.sh's header and README say"; fail=1; }
    [ $fail -eq 0 ] || { cat "$g/out.txt" "$report"; return 1; }
}
check "make gpu-check with stand-ins for the GPU tools and binaries: its steps, report and time limits" gpu_check_dry_run

summary
