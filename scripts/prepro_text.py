"""Turns local text files into train/val token shards for the trainers.

    python3 scripts/prepro_text.py --out data/kjv data/kjv/kjv.txt

Documents are the blank-line-separated paragraphs of the inputs; every --val-every'th document goes
to val.bin, the rest to train.bin. Tokenizer: "bytes" maps each UTF-8 byte to its value (vocab 256),
so it needs no training and decodes exactly. Prints, and writes to stats.json, the unigram baseline:
the cross-entropy on val of train's token frequencies (add-one smoothed), in nats per token. A model
that learned anything beyond token frequencies beats it.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shard_format import write_shard  # noqa: E402


def read_documents(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs += [d.strip() for d in f.read().split("\n\n") if d.strip()]
    return docs


def unigram_cross_entropy(train, val, vocab_size):
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val].mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="UTF-8 text files")
    ap.add_argument("--out", required=True, help="output directory for train.bin, val.bin, stats.json")
    ap.add_argument("--tokenizer", default="bytes", choices=["bytes"], help="tokenizer (default bytes)")
    ap.add_argument("--val-every", type=int, default=20, help="every N-th document goes to validation (default 20)")
    args = ap.parse_args()

    docs = read_documents(args.inputs)
    if len(docs) < 2:
        sys.exit(f"error: need at least 2 documents (blank-line-separated paragraphs), found {len(docs)}")
    vocab_size = 256
    split = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        ids = list((doc + "\n\n").encode("utf-8"))
        split["val" if i % args.val_every == args.val_every - 1 else "train"].append(ids)
    os.makedirs(args.out, exist_ok=True)
    arrays = {}
    for name, parts in split.items():
        arrays[name] = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        write_shard(os.path.join(args.out, f"{name}.bin"), arrays[name], vocab_size)
    baseline = unigram_cross_entropy(arrays["train"], arrays["val"], vocab_size)
    stats = {
        "tokenizer": args.tokenizer,
        "vocab_size": vocab_size,
        "documents": len(docs),
        "train_tokens": int(arrays["train"].size),
        "val_tokens": int(arrays["val"].size),
        "unigram_val_loss": baseline,
        "unigram_val_ppl": math.exp(baseline),
    }
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(f"{len(docs)} documents -> {stats['train_tokens']} train / {stats['val_tokens']} val tokens in {args.out}")
    print(f"unigram baseline on val: {baseline:.4f} nats/token (perplexity {math.exp(baseline):.2f})")


if __name__ == "__main__":
    main()
