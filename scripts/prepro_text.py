"""Turns local text files into train/val token shards for the trainers.

    python3 scripts/prepro_text.py --out data/kjv data/kjv/kjv.txt
    python3 scripts/prepro_text.py --tokenizer bpe --vocab-size 4096 --out data/kjv_bpe data/kjv/kjv.txt

Documents are the blank-line-separated paragraphs of the inputs; every --val-every'th document goes
to val.bin, the rest to train.bin. Tokenizers:
    bytes      each UTF-8 byte is its own id (vocab 256): no training, exact; documents are
               separated by a blank line, there is no end-of-text token
    bpe        a byte-level BPE (as GPT-2's) of --vocab-size ids trained on the training documents;
               id 0 is the end-of-text token "<|endoftext|>", appended to every document
    hf:NAME    a tokenizer from the Hugging Face hub (needs the network), e.g. hf:google-t5/t5-base,
               or a local tokenizer.json; its "<|endoftext|>" or "</s>" is appended to every document
Besides the shards, writes vocab.bin (each id's bytes, for decoding: see vocab_format.py) and, for
bpe and hf, the tokenizer itself as tokenizer.json. bytes needs only numpy; bpe and hf import the
tokenizers package (scripts/requirements.txt) when used.

Prints, and writes to stats.json, the unigram baseline: the cross-entropy on val of train's token
frequencies (add-one smoothed), in nats per token. A model that learned anything beyond token
frequencies beats it.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shard_format import write_shard  # noqa: E402
from vocab_format import byte_vocab, tokenizer_vocab, write_vocab  # noqa: E402

BPE_EOT = "<|endoftext|>"


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


def load_hf_tokenizer(name):
    """A tokenizers.Tokenizer from a tokenizer.json path or a Hugging Face hub name, set not to split
    special tokens out of the text by name: "<|endoftext|>" inside a document stays text for our
    BPE (T5's SentencePiece model still matches its special pieces, as the paper's tokenizer does)."""
    from tokenizers import Tokenizer
    if os.path.exists(name):
        tokenizer = Tokenizer.from_file(name)
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(name)
        except OSError as e:  # huggingface_hub's offline and not-found errors are OSErrors
            sys.exit(f"error: cannot load tokenizer '{name}' from the Hugging Face hub (offline, or no such "
                     f"repository?): {e}\nPass the path of a local tokenizer.json instead.")
    tokenizer.encode_special_tokens = True
    return tokenizer


def train_bpe(docs, vocab_size):
    """A byte-level BPE trained on docs: the end-of-text token is id 0, the 256 bytes come next,
    then the merges, most frequent first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="UTF-8 text files")
    ap.add_argument("--out", required=True, help="output directory for train.bin, val.bin, vocab.bin, stats.json")
    ap.add_argument("--tokenizer", default="bytes", help="bytes, bpe or hf:NAME (default bytes)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for bpe, at least 257 (default 4096)")
    ap.add_argument("--val-every", type=int, default=20, help="every N-th document goes to validation (default 20)")
    args = ap.parse_args()
    if args.tokenizer not in ("bytes", "bpe") and not args.tokenizer.startswith("hf:"):
        sys.exit(f"error: unknown --tokenizer '{args.tokenizer}' (use bytes, bpe or hf:NAME)")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        sys.exit("error: --vocab-size must be at least 257 (the 256 bytes and the end-of-text token)")

    docs = read_documents(args.inputs)
    if len(docs) < 2:
        sys.exit(f"error: need at least 2 documents (blank-line-separated paragraphs), found {len(docs)}")
    is_val = [i % args.val_every == args.val_every - 1 for i in range(len(docs))]
    os.makedirs(args.out, exist_ok=True)
    if args.tokenizer == "bytes":
        pieces, eot = byte_vocab()
        ids = [list((doc + "\n\n").encode("utf-8")) for doc in docs]
    else:
        if args.tokenizer == "bpe":
            tokenizer = train_bpe([d for d, v in zip(docs, is_val) if not v], args.vocab_size)
        else:
            tokenizer = load_hf_tokenizer(args.tokenizer[len("hf:"):])
        pieces, eot = tokenizer_vocab(tokenizer)
        if eot < 0:
            sys.exit(f"error: tokenizer '{args.tokenizer}' has no end-of-text token")
        tokenizer.save(os.path.join(args.out, "tokenizer.json"))
        ids = [e.ids + [eot] for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
    vocab_size = len(pieces)
    write_vocab(os.path.join(args.out, "vocab.bin"), pieces, eot)

    arrays = {}
    for name, want_val in (("train", False), ("val", True)):
        arrays[name] = np.concatenate([np.asarray(d, dtype=np.int64) for d, v in zip(ids, is_val) if v == want_val])
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
    print(f"{len(docs)} documents -> {stats['train_tokens']} train / {stats['val_tokens']} val tokens in {args.out} "
          f"(vocab {vocab_size})")
    print(f"unigram baseline on val: {baseline:.4f} nats/token (perplexity {math.exp(baseline):.2f})")


if __name__ == "__main__":
    main()
