"""Tokenizes C4 (the paper's pretraining corpus) into train/val token shards for the trainers.

    python3 scripts/prepro_c4.py --out data/c4 --hub-train-files 4
    python3 scripts/prepro_c4.py --out data/c4 --tokenizer t5/tokenizer.json \\
        --train-files c4-train.00000-of-01024.json.gz --val-files c4-validation.00000-of-00008.json.gz

Input: allenai/c4's "en" files, json.gz with one JSON object per line whose "text" is a document.
By default the first --hub-train-files train files and --hub-val-files validation files are
downloaded from the Hugging Face hub (en/c4-train.00000-of-01024.json.gz, ...; cached by
huggingface_hub); --train-files and --val-files use local .json or .json.gz files instead.

Tokenizer: the paper's, T5's SentencePiece ("t5-base", from the hub as google-t5/t5-base), or
--tokenizer PATH to a tokenizer.json (e.g. one saved here or by prepro_text.py) to work offline.
Every document is followed by the end-of-text id, T5's "</s>" (or "<|endoftext|>" in our BPE).
T5's tokenizer has 32100 ids but the model has 32000 rows (--model-vocab): the last 100 ids are
the <extra_id_N> sentinels of T5's pretraining task, which never come from encoding plain text (only
from text that spells one out, "<extra_id_0>", as T5's SentencePiece model matches its special
pieces literally). The script checks every id and stops with an error naming the document if one
reaches --model-vocab. The shards and vocab.bin record min(tokenizer ids, --model-vocab) as the
vocabulary, so the trainers build a 32000-row model.

Output in --out: train_000.bin, train_001.bin, ... and val_000.bin, ...; a shard is closed at the
first document boundary at or past --shard-tokens tokens, so no document is split across shards.
Also vocab.bin (each id's bytes, see vocab_format.py), tokenizer.json, and stats.json with the
counts and the unigram baseline (as prepro_text.py's: the cross-entropy on val of train's token
frequencies, add-one smoothed, which a model that learned anything beats). Resumable: every shard is
written to a .tmp file and renamed, after which progress.json records, per split, the shards,
documents and tokens done; a rerun with the same arguments skips those documents and continues
with the next shard (with other arguments it stops, to not mix two runs). Ends with a summary of
the documents and tokens written and the baseline.

The paper's protocol, --pad-to T (the official code, from GaLore, trains and validates so, with
T = 256): one document per row of T ids, its first T - 1 ids then "</s>" (as T5's tokenizer
truncates with truncation=True), right-padded to T; the trainer leaves the padding out of the loss,
and -m 10M validates over about 10M tokens as the paper does. The shards are padded shards
(shard_format.py); --shard-tokens and the summary count the truncated documents' ids, not the
padding. Without
--pad-to (the default) documents are packed back to back with "</s>" separators and cut into
windows of the trainer's -t, so a window may begin mid-document, a document's first tokens see the
end of the previous one, long documents count in full and nothing is padding: losses close to the
paper's protocol's but not the same.
"""
import argparse
import gzip
import itertools
import json
import math
import os
import sys
import threading
from multiprocessing import Pool

import numpy as np
from huggingface_hub import hf_hub_download
from tokenizers import Tokenizer
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepro_text import load_hf_tokenizer, print_baseline, read_progress, unigram_baseline, write_json  # noqa: E402
from script_errors import BadInput, run_script  # noqa: E402
from shard_format import write_padded_shard, write_shard  # noqa: E402
from vocab_format import tokenizer_vocab, write_vocab  # noqa: E402

# The worker processes are the parallelism: keep the tokenizer in each single-threaded.
os.environ["TOKENIZERS_PARALLELISM"] = "false"

HUB_REPO = "allenai/c4"
HUB_FILES = {"train": "en/c4-train.{:05d}-of-01024.json.gz", "val": "en/c4-validation.{:05d}-of-00008.json.gz"}
DOCS_PER_TASK = 512  # documents per unit of work sent to a worker


def hub_files(split, count):
    names = [HUB_FILES[split].format(i) for i in range(count)]
    try:
        return [hf_hub_download(HUB_REPO, name, repo_type="dataset") for name in names]
    except OSError as e:  # huggingface_hub's offline and not-found errors are OSErrors
        raise BadInput(f"cannot download {HUB_REPO} {names} from the Hugging Face hub (offline?): "
                       f"{str(e).splitlines()[0]}. Pass local files with --train-files and --val-files "
                       "instead.") from None


def document_lines(paths):
    """(path, line number, line) of the files' non-blank lines (each one JSON document), .gz decompressed."""
    for path in paths:
        with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
            try:
                yield from ((path, number, line) for number, line in enumerate(f, 1) if line.strip())
            except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
                raise BadInput(f"{path}: not UTF-8 JSON lines, or a damaged .gz file ({e})") from None


def chunks(iterable, n):
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


_worker = {}


def init_worker(tokenizer_json, eot):
    _worker["tokenizer"] = Tokenizer.from_str(tokenizer_json)
    _worker["tokenizer"].encode_special_tokens = True
    _worker["eot"] = eot


def document_text(path, number, line):
    try:
        return json.loads(line)["text"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{path}, line {number}: not a JSON object with a \"text\" field") from None


def tokenize(lines):
    """A list of (path, line number, JSON line) -> each document's ids followed by the end-of-text id."""
    texts = [document_text(*line) for line in lines]
    encodings = _worker["tokenizer"].encode_batch(texts, add_special_tokens=False)
    return [np.array(e.ids + [_worker["eot"]], dtype=np.uint32) for e in encodings]


class ShardWriter:
    """Collects documents into SPLIT_NNN.bin shards of at least shard_tokens tokens, recording each
    shard in progress.json once it is on disk. progress[split] counts the shards, documents and
    tokens written so far, by this run and the ones before."""

    def __init__(self, out, split, vocab, shard_tokens, progress, pad_to=0):
        self.out, self.split, self.vocab, self.shard_tokens, self.progress = out, split, vocab, shard_tokens, progress
        self.pad_to = pad_to  # > 0: a padded shard, one document per row of pad_to ids
        self.done = progress.setdefault(split, {"shards": 0, "documents": 0, "tokens": 0})
        self.pending, self.pending_tokens = [], 0
        self.progress_path = os.path.join(out, "progress.json")
        missing = [p for p in map(self.shard_path, range(self.done["shards"])) if not os.path.exists(p)]
        if missing:
            sys.exit(f"error: {self.progress_path} lists shards that are missing ({missing[0]}); "
                     f"delete {out} to start over")

    def shard_path(self, k):
        return os.path.join(self.out, f"{self.split}_{k:03d}.bin")

    def add(self, doc):
        if self.pad_to:  # its first pad_to - 1 ids and the end-of-text id, padded when written
            doc = np.concatenate([doc[:-1][:self.pad_to - 1], doc[-1:]])
        self.pending.append(doc)
        self.pending_tokens += doc.size
        if self.pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        path = self.shard_path(self.done["shards"])
        if self.pad_to:
            write_padded_shard(path, self.pending, self.pad_to, self.vocab)
        else:
            write_shard(path, np.concatenate(self.pending), self.vocab)
        self.done["shards"] += 1
        self.done["documents"] += len(self.pending)
        self.done["tokens"] += self.pending_tokens
        self.pending, self.pending_tokens = [], 0
        with open(self.progress_path + ".tmp", "w") as f:
            json.dump(self.progress, f, indent=2)
        os.replace(self.progress_path + ".tmp", self.progress_path)


def write_split(split, paths, args, tokenizer, eot, vocab, progress):
    """Tokenizes the documents of paths into shards, after those already done; returns the counts."""
    shards = ShardWriter(args.out, split, vocab, args.shard_tokens, progress, args.pad_to)
    skip = shards.done["documents"]
    # Pool.imap reads its input as fast as it can; the semaphore keeps it at most a few tasks
    # ahead of the results used, so that the files are not read into memory all at once.
    window = threading.Semaphore(4 * args.workers)

    def tasks():
        for lines in chunks(itertools.islice(document_lines(paths), skip, None), DOCS_PER_TASK):
            window.acquire()
            yield lines

    with Pool(args.workers, initializer=init_worker, initargs=(tokenizer.to_str(), eot)) as pool, \
            tqdm(desc=split, unit=" docs", initial=skip, disable=None) as bar:
        for docs in pool.imap(tokenize, tasks()):
            window.release()
            for doc in docs:
                if doc.max() >= vocab:
                    bad = int(doc.max())
                    sys.exit(f"error: {split} document {shards.done['documents'] + len(shards.pending)} (from 0) "
                             f"has token id {bad} {tokenizer.id_to_token(bad)!r}, but the model has only {vocab} "
                             "rows (--model-vocab)")
                shards.add(doc)
            bar.update(len(docs))
    shards.flush()
    return shards.done


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train-files", nargs="+", help="local C4-format .json or .json.gz files for training")
    ap.add_argument("--val-files", nargs="+", help="local C4-format .json or .json.gz files for validation")
    ap.add_argument("--hub-train-files", type=int, default=1, help="C4 en train files to download (default 1 of 1024)")
    ap.add_argument("--hub-val-files", type=int, default=1, help="C4 en validation files to download (default 1 of 8)")
    ap.add_argument("--tokenizer", default="google-t5/t5-base", help="hub name or tokenizer.json path (default google-t5/t5-base)")
    ap.add_argument("--model-vocab", type=int, default=32000, help="rows of the model's embedding (default 32000)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard, at least (default 100M)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizing processes (default: one per core)")
    ap.add_argument("--pad-to", type=int, default=0, metavar="T",
                    help="the paper's protocol: one document per row of T ids, truncated and padded (default 0: pack)")
    args = ap.parse_args()
    if args.pad_to < 0 or args.pad_to == 1:
        sys.exit(f"error: --pad-to {args.pad_to}: a row needs at least 2 ids (or 0 to pack documents)")
    if bool(args.train_files) != bool(args.val_files):
        sys.exit("error: give both --train-files and --val-files, or neither to download from the hub")

    absent = [p for p in (args.train_files or []) + (args.val_files or []) if not os.path.isfile(p)]
    if absent:
        sys.exit(f"error: no such file: {absent[0]}")
    tokenizer = load_hf_tokenizer(args.tokenizer)
    vocab = min(tokenizer.get_vocab_size(), args.model_vocab)
    pieces, eot = tokenizer_vocab(tokenizer, vocab)
    if not 0 <= eot < vocab:
        sys.exit(f"error: tokenizer '{args.tokenizer}' has no end-of-text token below {vocab}")
    if args.train_files:
        inputs = {"train": args.train_files, "val": args.val_files}
    else:
        inputs = {"train": hub_files("train", args.hub_train_files), "val": hub_files("val", args.hub_val_files)}
    os.makedirs(args.out, exist_ok=True)
    write_vocab(os.path.join(args.out, "vocab.bin"), pieces, eot)
    tokenizer.save(os.path.join(args.out, "tokenizer.json"))

    settings = {"inputs": inputs, "tokenizer": args.tokenizer, "model_vocab": args.model_vocab,
                "shard_tokens": args.shard_tokens}
    if args.pad_to:
        settings["pad_to"] = args.pad_to
    progress = read_progress(os.path.join(args.out, "progress.json"), settings) or {"settings": settings}
    totals = {split: write_split(split, paths, args, tokenizer, eot, vocab, progress) for split, paths in inputs.items()}
    print(f"vocab.bin: {vocab} ids, end-of-text id {eot}")
    for split, done in totals.items():
        if done["documents"] == 0:
            raise BadInput(f"no documents in the {split} files {' '.join(inputs[split])}")
        print(f"{split}: {done['documents']} documents, {done['tokens']} tokens in {done['shards']} shards "
              f"({os.path.join(args.out, split)}_*.bin)")
    shards = {split: [os.path.join(args.out, f"{split}_{k:03d}.bin") for k in range(done["shards"])]
              for split, done in totals.items()}
    baseline = unigram_baseline(shards["train"], shards["val"], vocab)
    write_json(os.path.join(args.out, "stats.json"), {
        "tokenizer": args.tokenizer, "vocab_size": vocab,
        **{f"{split}_{count}": done[count] for split, done in totals.items() for count in ("documents", "tokens")},
        "unigram_val_loss": baseline, "unigram_val_ppl": math.exp(baseline)})
    print_baseline(baseline)


if __name__ == "__main__":
    run_script(main)
