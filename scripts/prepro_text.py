"""Turns local text, of any size, into train/val token shards for the trainers.

    python3 scripts/prepro_text.py --out data/kjv data/kjv/kjv.txt
    python3 scripts/prepro_text.py --tokenizer bpe --vocab-size 4096 --out data/kjv_bpe data/kjv/kjv.txt
    python3 scripts/prepro_text.py --bpe 4096 --pad-to 128 --out data/kjv_bpe4096_pad128 data/kjv/kjv.txt
    python3 scripts/prepro_text.py --tokenizer bpe --shard-tokens 100000000 --encoding cp1252 \\
        --errors replace --workers 8 --out data/mine 'corpus/*.txt' more_corpus/

Inputs: files, globs and directories (every file below one, except hidden ones), each in name
order. They are read a chunk at a time in --encoding (default utf-8), line ends "\\r\\n" and "\\r"
read as "\\n". A byte not valid in the encoding stops the run with an error naming the file, the
byte offset and the byte (--errors strict, the default); --errors replace reads it as U+FFFD and
--errors skip drops it, and stats.json counts those bytes. Documents are the blank-line-separated
paragraphs (stripped; one longer than 16M characters is cut into pieces of that size); every
--val-every'th document, counted over all inputs, goes to validation, the rest to training.

Tokenizers:
    bytes      each UTF-8 byte is its own id (vocab 256): no training, exact; documents are
               separated by a blank line, there is no end-of-text token
    bpe        a byte-level BPE (as GPT-2's) of --vocab-size ids trained on the first
               --bpe-sample-bytes bytes of the training documents; id 0 is the end-of-text token
               "<|endoftext|>", appended to every document
    hf:NAME    a tokenizer from the Hugging Face hub (needs the network), e.g. hf:google-t5/t5-base,
               or a local tokenizer.json; its "<|endoftext|>" or "</s>" is appended to every document
bytes needs numpy and tqdm; bpe and hf also the tokenizers package (scripts/requirements.txt).
--bpe N is short for --tokenizer bpe --vocab-size N. The BPE trains on training documents only
(never on a validation one).

Documents kept apart, --pad-to T (the paper's padded protocol, as prepro_c4.py --pad-to): padded
shards of rows of T ids, no row holding ids of two documents, right-padded with the shard's PAD_ID
(shard_format.py); the trainers take them with -t T, and no position sees another document. A
document longer than a row is, with --long-documents split (the default), cut into rows that
overlap by one id (row k holds ids k(T-1) .. k(T-1)+T-1), so that every id but the document's first
is a target exactly once, as in packed windows; with --long-documents truncate it keeps only its first
T - 1 ids and the end-of-text id, as the official code does (byte tokenizer: its first T bytes),
which on long documents such as the KJV's chapters drops most of the text. stats.json then counts
the ids without padding (train_tokens, val_tokens) and the stored positions (train_positions, ...),
and --shard-tokens counts positions.

Output in --out: train.bin and val.bin, or with --shard-tokens N the shards train_000.bin,
train_001.bin, ... and val_000.bin, ..., each closed at the first document end at or past N ids;
vocab.bin (each id's bytes, for decoding: see vocab_format.py); for bpe and hf the tokenizer as
tokenizer.json; and stats.json. Documents are tokenized by --workers processes while the inputs are
read, and the shards written as the tokens come, so memory stays at a few chunks of text whatever
the corpus size. A progress bar (on a terminal) shows the bytes read, documents, tokens and rate.

Resumable: the open shard is SHARD.tmp, and after each piece of work progress.json records the
documents and ids written; a rerun with the same arguments reads past the documents done, without
tokenizing them, keeps the first ids recorded in SHARD.tmp and continues (with other arguments it
stops, to not mix two runs). A rerun of a finished run only prints its summary.

Prints, and writes to stats.json, the unigram baseline: the cross-entropy on val of train's token
frequencies (add-one smoothed), in nats per token. A model that learned anything beyond token
frequencies beats it.
"""
import argparse
import json
import math
import multiprocessing
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_errors import BadInput, run_script  # noqa: E402
from shard_format import PAD_ID, ShardAppender, padded_dtype, read_shard_slices, token_dtype  # noqa: E402
from text_stream import CHUNK_BYTES, TextStream, check_encoding, expand_inputs  # noqa: E402
from vocab_format import byte_vocab, tokenizer_vocab, write_vocab  # noqa: E402

BPE_EOT = "<|endoftext|>"
COUNT_SLICE = 1 << 22  # ids counted at a time for the unigram baseline


def looks_like_path(name):
    """A tokenizer argument that cannot be a hub repository id ("name" or "namespace/name")."""
    return name.endswith(".json") or name.startswith((".", "/", "~")) or name.count("/") > 1


def load_hf_tokenizer(name):
    """A tokenizers.Tokenizer from a tokenizer.json path (or a directory holding one) or a Hugging
    Face hub name, set not to split special tokens out of the text by name: "<|endoftext|>" inside a
    document stays text for our BPE (T5's SentencePiece model still matches its special pieces, as
    the paper's tokenizer does)."""
    from tokenizers import Tokenizer
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if os.path.exists(path):
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # the tokenizers package raises a bare Exception on a malformed file
            raise BadInput(f"{path}: not a tokenizer.json ({e})") from None
    elif looks_like_path(name):
        raise BadInput(f"{path}: no such file")
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(name)
        except Exception as e:  # offline, not found, or not a valid repository id
            raise BadInput(f"cannot load tokenizer '{name}' from the Hugging Face hub (offline, or no such "
                           f"repository?): {str(e).splitlines()[0]}. Pass the path of a local tokenizer.json "
                           "instead.") from None
    tokenizer.encode_special_tokens = True
    return tokenizer


def train_bpe(docs, vocab_size):
    """A byte-level BPE trained on docs (an iterable): the end-of-text token is id 0, the 256 bytes
    come next, then the merges, most frequent first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def is_val(index, val_every):
    return index % val_every == val_every - 1


def bpe_sample(stream, val_every, sample_bytes, counts):
    """The training documents from the start of the stream until sample_bytes UTF-8 bytes of them;
    counts["documents"] and counts["bytes"] count those given."""
    for i, doc in enumerate(stream.documents()):
        if counts["bytes"] >= sample_bytes:
            return
        if not is_val(i, val_every):
            counts["documents"] += 1
            counts["bytes"] += len(doc.encode("utf-8"))
            yield doc


def prepare_tokenizer(args, files, resumed):
    """(tokenizer or None for bytes, pieces, eot id, the BPE's sample counts or None). bpe is trained
    here, or on a resume loaded from the tokenizer.json that the first run saved."""
    if args.tokenizer == "bytes":
        return (None, *byte_vocab(), None)
    saved, counts = os.path.join(args.out, "tokenizer.json"), None
    if resumed:
        tokenizer = load_hf_tokenizer(saved)
    elif args.tokenizer == "bpe":
        counts = {"documents": 0, "bytes": 0}
        print(f"training a BPE of {args.vocab_size} ids on up to {args.bpe_sample_bytes} bytes of the training "
              "documents ...", flush=True)
        stream = TextStream(files, args.encoding, args.errors, args.chunk_bytes)
        tokenizer = train_bpe(bpe_sample(stream, args.val_every, args.bpe_sample_bytes, counts), args.vocab_size)
        print(f"BPE of {tokenizer.get_vocab_size()} ids trained on {counts['bytes']} bytes ({counts['documents']} "
              f"documents) from the start of the training documents (--bpe-sample-bytes {args.bpe_sample_bytes})")
    else:
        tokenizer = load_hf_tokenizer(args.tokenizer[len("hf:"):])
    pieces, eot = tokenizer_vocab(tokenizer)
    if eot < 0:
        raise BadInput(f"tokenizer '{args.tokenizer}' has no end-of-text token ({BPE_EOT} or </s>)")
    return tokenizer, pieces, eot, counts


def work(stream, val_every, done, window):
    """Units of work: (training documents, validation documents, input bytes read), about a chunk of
    text each, leaving out the first done[split] documents of each split (written before a
    resume). window.acquire() before each keeps the reader a few units ahead of the writer."""
    train, val, chars, bytes_before = [], [], 0, 0
    seen = {"train": 0, "val": 0}
    for i, doc in enumerate(stream.documents()):
        split = "val" if is_val(i, val_every) else "train"
        seen[split] += 1
        if seen[split] <= done[split]:
            continue
        (val if split == "val" else train).append(doc)
        chars += len(doc)
        if chars >= stream.chunk_bytes:
            window.acquire()
            yield train, val, stream.bytes_read - bytes_before
            train, val, chars, bytes_before = [], [], 0, stream.bytes_read
    window.acquire()
    yield train, val, stream.bytes_read - bytes_before


_worker = {}


def init_worker(tokenizer_json, eot, dtype, pad_to=0, long_documents="split"):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    if tokenizer_json is not None:
        from tokenizers import Tokenizer
        _worker["tokenizer"] = Tokenizer.from_str(tokenizer_json)
        _worker["tokenizer"].encode_special_tokens = True
    _worker["eot"], _worker["dtype"] = eot, dtype
    _worker["pad_to"], _worker["long_documents"] = pad_to, long_documents


def encode(docs):
    """(the documents' ids back to back, each document's number of ids). With the byte tokenizer a
    document is its UTF-8 bytes and a blank line; else its ids and the end-of-text id."""
    if "tokenizer" not in _worker:
        pieces = [(doc + "\n\n").encode("utf-8") for doc in docs]
        ids = np.frombuffer(b"".join(pieces), dtype=np.uint8).astype(_worker["dtype"])
        return ids, np.array(list(map(len, pieces)), dtype=np.int64)
    ids, lengths = [], []
    for encoding in _worker["tokenizer"].encode_batch(docs, add_special_tokens=False):
        doc = encoding.ids
        doc.append(_worker["eot"])
        ids += doc
        lengths.append(len(doc))
    return np.array(ids, dtype=_worker["dtype"]), np.array(lengths, dtype=np.int64)


def document_rows(doc, row_tokens, long_documents, eot):
    """One document's ids (its end-of-text id, if any, last) as padded rows of row_tokens ids, flat:
    split cuts a long one into rows overlapping by one id (row k starts at id k(T-1), so each id
    after the first is a target once); truncate keeps its first T - 1 ids and the end-of-text id
    (without one, its first T ids). Padding is -1 here."""
    T, n = row_tokens, doc.size
    if n <= T:
        starts = [0]
    elif long_documents == "truncate":
        doc = np.concatenate([doc[:T - 1], doc[-1:]]) if eot >= 0 else doc[:T]
        starts, n = [0], T
    else:
        starts = list(range(0, n - 1, T - 1))
    rows = np.full((len(starts), T), -1, dtype=np.int64)
    for k, start in enumerate(starts):
        piece = doc[start:start + T]
        rows[k, :piece.size] = piece
    return rows.ravel()


def encode_padded(docs):
    """encode() in padded rows: (the rows back to back with PAD_ID as padding, each document's
    number of stored ids, a multiple of the row length)."""
    ids, lengths = encode(docs)
    T, dtype = _worker["pad_to"], _worker["dtype"]
    rows = [document_rows(doc, T, _worker["long_documents"], _worker["eot"])
            for doc in np.split(ids.astype(np.int64), np.cumsum(lengths)[:-1])] if len(lengths) else []
    if not rows:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    flat = np.concatenate(rows)
    flat[flat < 0] = PAD_ID[np.dtype(dtype).itemsize]
    return flat.astype(dtype), np.array([r.size for r in rows], dtype=np.int64)


def tokenize(task):
    train, val, input_bytes = task
    if _worker["pad_to"]:
        return {"train": encode_padded(train), "val": encode_padded(val)}, input_bytes
    return {"train": encode(train), "val": encode(val)}, input_bytes


class SplitWriter:
    """One split's shards: SPLIT.bin when shard_tokens is 0, else SPLIT_000.bin, SPLIT_001.bin, ...,
    each closed at the first document end at or past shard_tokens ids. state (kept in progress.json)
    counts the closed shards, all documents and ids written, and the ids in the open shard."""

    def __init__(self, out, split, vocab_size, shard_tokens, state, row_tokens=0):
        self.out, self.split, self.vocab_size, self.shard_tokens = out, split, vocab_size, shard_tokens
        self.row_tokens = row_tokens  # > 0: padded shards (documents counted in stored ids, padding included)
        self.state, self.shard = state, None
        for path in self.paths():
            if not os.path.exists(path):
                raise BadInput(f"{path} is missing, but progress.json lists it as written; delete {out} to start over")

    def path(self, k):
        name = f"{self.split}_{k:03d}.bin" if self.shard_tokens else f"{self.split}.bin"
        return os.path.join(self.out, name)

    def paths(self):
        return [self.path(k) for k in range(self.state["shards"])]

    def _open(self):
        if self.shard is None:
            path, keep = self.path(self.state["shards"]), self.state["open_tokens"]
            if keep and not os.path.exists(path + ".tmp") and os.path.exists(path):
                os.replace(path, path + ".tmp")  # closed just before an interruption, but not recorded
            self.shard = ShardAppender(path, self.vocab_size, keep, self.row_tokens)
        return self.shard

    def _close(self):
        self._open().close()
        self.shard = None
        self.state["shards"] += 1
        self.state["open_tokens"] = 0

    def add(self, tokens, lengths):
        """Appends whole documents (ids back to back, and each one's length)."""
        ends = np.cumsum(lengths)
        first, start = 0, 0
        while first < len(lengths):
            shard = self._open()
            last = len(lengths) - 1
            if self.shard_tokens:  # the first document that ends at or past the shard's size
                last = min(last, int(np.searchsorted(ends, start + self.shard_tokens - shard.count)))
            shard.append(tokens[start:ends[last]])
            self.state["documents"] += last + 1 - first
            self.state["tokens"] += int(ends[last]) - start
            self.state["open_tokens"] = shard.count
            first, start = last + 1, int(ends[last])
            if self.shard_tokens and shard.count >= self.shard_tokens:
                self._close()

    def flush(self):
        if self.shard is not None:
            self.shard.flush()

    def finish(self):
        if self.shard is not None or self.state["open_tokens"] or self.state["shards"] == 0:
            self._close()


def unigram_baseline(train_paths, val_paths, vocab_size):
    """The cross-entropy (nats per id) on the val shards of the train shards' id frequencies, add-one
    smoothed, reading the shards a slice at a time."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for path in train_paths:
        for tokens in read_shard_slices(path, COUNT_SLICE):
            found = np.bincount(tokens, minlength=vocab_size)
            if found.size > vocab_size:
                raise BadInput(f"{path}: corrupted: token id {found.size - 1} is not below the vocabulary size "
                               f"{vocab_size}")
            counts += found
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for path in val_paths:
        for tokens in read_shard_slices(path, COUNT_SLICE):
            total -= float(logp[tokens].sum())
            n += tokens.size
    return total / n


def count_ids(paths):
    """The ids in the shards, padding left out."""
    return sum(int(ids.size) for path in paths for ids in read_shard_slices(path, COUNT_SLICE))


def print_baseline(loss):
    print(f"unigram baseline on val: {loss:.4f} nats/token (perplexity {math.exp(loss):.2f})")


def write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def read_progress(path, settings):
    """The progress.json at path, checked to be from a run with these settings, or None if there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            progress = json.load(f)
    except ValueError:
        raise BadInput(f"{path}: corrupted (not JSON); delete that directory to start over") from None
    if progress.get("settings") != settings:
        raise BadInput(f"{path} is from a run with other arguments or inputs; use another --out or delete "
                       "that directory")
    return progress


def load_progress(out, settings):
    """progress.json of an earlier run with these settings, or a fresh one if there is none."""
    progress = read_progress(os.path.join(out, "progress.json"), settings)
    if progress:
        return progress
    stale = sorted(n for n in os.listdir(out) if n.startswith(("train", "val")) and n.endswith(".bin"))
    if stale:
        raise BadInput(f"{out} already holds {stale[0]} from another run (no progress.json); delete it or use "
                       "another --out")
    empty = {"shards": 0, "documents": 0, "tokens": 0, "open_tokens": 0}
    return {"settings": settings, "train": dict(empty), "val": dict(empty), "finished": False}


def is_output(path, out):
    """Whether path is one of the files this script writes in out (which a directory input may hold)."""
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(out) and \
        path.endswith((".bin", ".json", ".bin.tmp", ".json.tmp"))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="text files, globs or directories")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--tokenizer", default="bytes", help="bytes, bpe or hf:NAME (default bytes)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size for bpe, at least 257 (default 4096)")
    ap.add_argument("--bpe", type=int, metavar="N", help="short for --tokenizer bpe --vocab-size N")
    ap.add_argument("--pad-to", type=int, default=0, metavar="T",
                    help="padded shards: documents kept apart in rows of T ids (default 0: packed)")
    ap.add_argument("--long-documents", choices=["split", "truncate"], default="split",
                    help="with --pad-to, a document longer than a row: split into overlapping rows (default) "
                         "or truncate to one row (the official code's)")
    ap.add_argument("--bpe-sample-bytes", type=int, default=100_000_000,
                    help="bpe trains on this many bytes from the start of the training documents (default 100M)")
    ap.add_argument("--val-every", type=int, default=20, help="every N-th document goes to validation (default 20)")
    ap.add_argument("--shard-tokens", type=int, default=0,
                    help="ids per shard, at least (default 0: one train.bin and one val.bin)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizing processes (default: one per core)")
    ap.add_argument("--encoding", default="utf-8", help="the inputs' text encoding (default utf-8)")
    ap.add_argument("--errors", default="strict", choices=["strict", "replace", "skip"],
                    help="bytes not valid in the encoding: stop (default), read as U+FFFD, or drop")
    ap.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES,
                    help="bytes read at a time, and about the text per unit of work (default 1 MiB)")
    args = ap.parse_args()
    if args.bpe is not None:
        if args.tokenizer not in ("bytes", "bpe"):
            ap.error("--bpe N is --tokenizer bpe --vocab-size N: give one of --bpe and --tokenizer")
        args.tokenizer, args.vocab_size = "bpe", args.bpe
    if args.pad_to < 0 or args.pad_to == 1:
        ap.error("--pad-to must be 0 (packed) or at least 2")
    if args.tokenizer not in ("bytes", "bpe") and not args.tokenizer.startswith("hf:"):
        ap.error(f"unknown --tokenizer '{args.tokenizer}' (use bytes, bpe or hf:NAME)")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        ap.error("--vocab-size must be at least 257 (the 256 bytes and the end-of-text token)")
    for name in ("val_every", "workers", "bpe_sample_bytes", "chunk_bytes"):
        if getattr(args, name) < (2 if name == "val_every" else 1):
            ap.error(f"--{name.replace('_', '-')} must be at least {2 if name == 'val_every' else 1}")
    if args.shard_tokens < 0:
        ap.error("--shard-tokens must be 0 (one shard per split) or positive")
    check_encoding(args.encoding, args.errors)
    return args


def main():
    args = parse_args()
    files = [f for f in expand_inputs(args.inputs) if not is_output(f, args.out)]
    if not files:
        raise BadInput(f"no input files but this script's outputs in {args.out}")
    os.makedirs(args.out, exist_ok=True)
    settings = {"inputs": [[f, os.path.getsize(f)] for f in files],
                **{k: getattr(args, k) for k in ("tokenizer", "val_every", "shard_tokens", "encoding", "errors")}}
    if args.tokenizer == "bpe":
        settings.update(vocab_size=args.vocab_size, bpe_sample_bytes=args.bpe_sample_bytes)
    if args.pad_to:
        settings.update(pad_to=args.pad_to, long_documents=args.long_documents)
    progress = load_progress(args.out, settings)
    stats_path = os.path.join(args.out, "stats.json")
    if progress["finished"] and os.path.exists(stats_path):
        print(f"{args.out}: done before (progress.json); delete it to redo")
        with open(stats_path) as f:
            print_summary(json.load(f), args.out)
        return
    resumed = os.path.exists(os.path.join(args.out, "progress.json"))

    tokenizer, pieces, eot, bpe_sample_counts = prepare_tokenizer(args, files, resumed)
    vocab_size = len(pieces)
    if not resumed:
        write_vocab(os.path.join(args.out, "vocab.bin"), pieces, eot)
        if tokenizer is not None:
            tokenizer.save(os.path.join(args.out, "tokenizer.json"))
        progress["bpe_sample"] = bpe_sample_counts
        write_json(os.path.join(args.out, "progress.json"), progress)
    writers = {split: SplitWriter(args.out, split, vocab_size, args.shard_tokens, progress[split], args.pad_to)
               for split in ("train", "val")}
    stream = TextStream(files, args.encoding, args.errors, args.chunk_bytes)
    write_all(stream, writers, args, tokenizer, eot, vocab_size, progress)

    done = {split: progress[split] for split in writers}
    if done["train"]["documents"] + done["val"]["documents"] == 0:
        raise BadInput(f"no documents in {' '.join(args.inputs)}: the input is empty or blank")
    if done["val"]["documents"] == 0:
        raise BadInput(f"only {done['train']['documents']} documents, none for validation (every "
                       f"{args.val_every}th goes there); pass a smaller --val-every")
    for writer in writers.values():
        writer.finish()
    baseline = unigram_baseline(writers["train"].paths(), writers["val"].paths(), vocab_size)
    stats = {
        "tokenizer": args.tokenizer,
        "vocab_size": vocab_size,
        "documents": done["train"]["documents"] + done["val"]["documents"],
        "train_documents": done["train"]["documents"],
        "val_documents": done["val"]["documents"],
        "train_tokens": count_ids(writers["train"].paths()) if args.pad_to else done["train"]["tokens"],
        "val_tokens": count_ids(writers["val"].paths()) if args.pad_to else done["val"]["tokens"],
        "train_shards": [os.path.basename(p) for p in writers["train"].paths()],
        "val_shards": [os.path.basename(p) for p in writers["val"].paths()],
        "input_files": len(files),
        "input_bytes": stream.bytes_read,
        "encoding": args.encoding,
        "errors": args.errors,
        "bytes_replaced": stream.bad_bytes if args.errors == "replace" else 0,
        "bytes_skipped": stream.bad_bytes if args.errors == "skip" else 0,
        "bpe_sample": progress["bpe_sample"],
        "unigram_val_loss": baseline,
        "unigram_val_ppl": math.exp(baseline),
    }
    if args.pad_to:
        stats.update(pad_to=args.pad_to, long_documents=args.long_documents,
                     train_positions=done["train"]["tokens"], val_positions=done["val"]["tokens"])
    write_json(stats_path, stats)
    progress["finished"] = True
    write_json(os.path.join(args.out, "progress.json"), progress)
    print_summary(stats, args.out)


def write_all(stream, writers, args, tokenizer, eot, vocab_size, progress):
    """Tokenizes the documents not yet written in --workers processes, in order, appending them to
    the shards and recording the progress after each unit of work."""
    from tqdm import tqdm
    done = {split: progress[split]["documents"] for split in writers}
    window = threading.Semaphore(2 * args.workers)  # units of work read but not yet written
    total_bytes = sum(size for _, size in progress["settings"]["inputs"])
    counts = {"documents": sum(done.values()), "tokens": sum(progress[s]["tokens"] for s in writers)}
    tokens_before, start = counts["tokens"], time.time()
    dtype = padded_dtype(vocab_size) if args.pad_to else token_dtype(vocab_size)
    initargs = (tokenizer.to_str() if tokenizer else None, eot, dtype, args.pad_to, args.long_documents)
    # spawn, not fork: the parent may have used the tokenizers package's threads (training the BPE)
    with multiprocessing.get_context("spawn").Pool(args.workers, init_worker, initargs) as pool, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        for result, input_bytes in pool.imap(tokenize, work(stream, args.val_every, done, window)):
            window.release()
            for split, (tokens, lengths) in result.items():
                writers[split].add(tokens, lengths)
                writers[split].flush()
                counts["documents"] += len(lengths)
                counts["tokens"] += tokens.size
            write_json(os.path.join(args.out, "progress.json"), progress)
            rate = (counts["tokens"] - tokens_before) / max(time.time() - start, 1e-9)
            bar.set_postfix_str(f"{counts['documents']:,} docs, {counts['tokens']:,} tokens, {rate:,.0f} tokens/s",
                                refresh=False)
            bar.update(input_bytes)


def print_summary(stats, out):
    shards = f"{len(stats['train_shards'])} + {len(stats['val_shards'])} shards"
    if stats.get("pad_to"):
        shards += f", padded to rows of {stats['pad_to']} ({stats['long_documents']} long documents)"
    print(f"{stats['documents']} documents -> {stats['train_tokens']} train / {stats['val_tokens']} val tokens in "
          f"{out} ({shards}, vocab {stats['vocab_size']})")
    bad = stats["bytes_replaced"] + stats["bytes_skipped"]
    if bad:
        print(f"{bad} bytes not valid {stats['encoding']} were {'replaced' if stats['bytes_replaced'] else 'skipped'}")
    print_baseline(stats["unigram_val_loss"])


if __name__ == "__main__":
    run_script(main)
