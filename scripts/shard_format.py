"""Token shards in Python: the one writer and reader on the Python side (dataloader.h is the C++ one).

Format (little-endian): 32-byte header, then the token ids.
    char[8] magic "MIXLNTOK" | uint32 version 1 | uint32 token_bytes (2 or 4)
    uint64 token_count | uint32 vocab_size | uint32 row_tokens
row_tokens is 0 for a packed shard (documents back to back). A padded shard (the official Mix-LN
code's protocol) has row_tokens R > 0: rows of R ids, each one document right-padded with the
all-ones id of the token width (PAD_ID: 0xFFFF or 0xFFFFFFFF), which is no token; token_count is a
multiple of R.
"""
import os
import struct

import numpy as np

MAGIC = b"MIXLNTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")
PAD_ID = {2: 0xFFFF, 4: 0xFFFFFFFF}  # padding in a padded shard, by token width


def _write_atomically(path, ids, vocab_size, row_tokens):
    """ids: a uint16 or uint32 array, already checked."""
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, ids.dtype.itemsize, ids.size, vocab_size, row_tokens))
        f.write(ids.tobytes())
    os.replace(tmp, path)


def write_shard(path, tokens, vocab_size):
    """Writes ids (any integer sequence) as uint16 when vocab_size <= 65536, else uint32."""
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{path}: token ids must lie in [0, {vocab_size})")
    _write_atomically(path, arr.astype(dtype), vocab_size, 0)


def write_padded_shard(path, documents, row_tokens, vocab_size):
    """Writes a padded shard: each document (a sequence of at most row_tokens ids) in a row of its
    own, right-padded with PAD_ID. uint16 when vocab_size < 65536 (so PAD_ID is no id), else uint32."""
    dtype = np.uint16 if vocab_size < 65536 else np.uint32
    rows = np.full((len(documents), row_tokens), PAD_ID[np.dtype(dtype).itemsize], dtype=dtype)
    for i, doc in enumerate(documents):
        doc = np.asarray(doc, dtype=np.int64)
        if doc.size > row_tokens:
            raise ValueError(f"{path}: document {i} has {doc.size} ids, more than a row of {row_tokens}")
        if doc.size and (doc.min() < 0 or doc.max() >= vocab_size):
            raise ValueError(f"{path}: token ids must lie in [0, {vocab_size})")
        rows[i, :doc.size] = doc
    _write_atomically(path, rows.ravel(), vocab_size, row_tokens)


def _read_header(f, path):
    """(token width, token_count, vocab_size, row_tokens) from an open shard; ValueError if malformed."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise ValueError(f"{path}: truncated header")
    magic, version, width, count, vocab, row_tokens = HEADER.unpack(head)
    if magic != MAGIC or version != VERSION or width not in (2, 4):
        raise ValueError(f"{path}: not a version-1 mixln token shard")
    return width, count, vocab, row_tokens


def _read(path):
    """(ids as stored, vocab_size, row_tokens); raises ValueError on a malformed file."""
    with open(path, "rb") as f:
        width, count, vocab, row_tokens = _read_header(f, path)
        data = np.frombuffer(f.read(), dtype=np.uint16 if width == 2 else np.uint32)
    if data.size != count:
        raise ValueError(f"{path}: header promises {count} tokens, file has {data.size}")
    return data, vocab, row_tokens


def read_shard(path):
    """Returns (tokens as a numpy array, vocab_size); raises ValueError on a malformed file."""
    data, vocab, _ = _read(path)
    return data, vocab


def read_padded_rows(path):
    """Returns (rows, vocab_size) of a padded shard: an int64 array (n, row_tokens), -1 for padding.
    Raises ValueError if the shard is not a padded one."""
    data, vocab, row_tokens = _read(path)
    if row_tokens == 0 or data.size % row_tokens:
        raise ValueError(f"{path}: not a padded shard (row_tokens {row_tokens}, {data.size} tokens)")
    rows = data.astype(np.int64).reshape(-1, row_tokens)
    rows[data.reshape(-1, row_tokens) == PAD_ID[data.dtype.itemsize]] = -1
    return rows, vocab


def shard_row_tokens(path):
    """The header's row_tokens: 0 for a packed shard, the row length of a padded one."""
    with open(path, "rb") as f:
        return _read_header(f, path)[3]
