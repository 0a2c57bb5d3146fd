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

from script_errors import BadInput

MAGIC = b"MIXLNTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")
PAD_ID = {2: 0xFFFF, 4: 0xFFFFFFFF}  # padding in a padded shard, by token width


def _header(path, width, count, vocab_size, row_tokens):
    if not 0 <= vocab_size < 1 << 32:
        raise BadInput(f"{path}: vocabulary size {vocab_size} does not fit a shard header")
    return HEADER.pack(MAGIC, VERSION, width, count, vocab_size, row_tokens)


def _check_ids(path, ids, vocab_size):
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise BadInput(f"{path}: token ids must lie in [0, {vocab_size}), got {int(ids.min())} .. {int(ids.max())}")


def _write_atomically(path, ids, vocab_size, row_tokens):
    """ids: a uint16 or uint32 array, already checked."""
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_header(path, ids.dtype.itemsize, ids.size, vocab_size, row_tokens))
        f.write(ids.tobytes())
    os.replace(tmp, path)


def token_dtype(vocab_size):
    """The ids' type in a packed shard: uint16 when vocab_size <= 65536, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def write_shard(path, tokens, vocab_size):
    """Writes ids (any integer sequence) as a packed shard."""
    arr = np.asarray(tokens, dtype=np.int64)
    _check_ids(path, arr, vocab_size)
    _write_atomically(path, arr.astype(token_dtype(vocab_size)), vocab_size, 0)


class ShardAppender:
    """Writes a shard piece by piece into PATH.tmp, which close() completes and renames to PATH,
    so a shard under its own name is always whole. keep=n reopens the PATH.tmp of an interrupted
    writer and continues after its first n ids, dropping whatever was written after them.
    row_tokens=R > 0 writes a padded shard: append() then takes whole rows of R ids, the padding
    given as PAD_ID of the shard's width (padded_dtype(vocab_size)); keep counts stored ids, padding
    included."""

    def __init__(self, path, vocab_size, keep=0, row_tokens=0):
        self.path, self.tmp, self.vocab_size = str(path), str(path) + ".tmp", vocab_size
        self.row_tokens = row_tokens
        self.dtype = padded_dtype(vocab_size) if row_tokens else token_dtype(vocab_size)
        self.count = keep
        if keep == 0:
            self.file = open(self.tmp, "wb")
            self.file.write(self._header())
            return
        self.file = open(self.tmp, "r+b")
        head = self.file.read(HEADER.size)
        end = HEADER.size + keep * self.dtype.itemsize
        if len(head) < HEADER.size or HEADER.unpack(head)[:3] != (MAGIC, VERSION, self.dtype.itemsize) \
                or HEADER.unpack(head)[5] != row_tokens or os.path.getsize(self.tmp) < end:
            raise BadInput(f"{self.tmp}: corrupted (expected a shard of at least {keep} ids to continue)")
        self.file.truncate(end)
        self.file.seek(end)

    def _header(self):
        return _header(self.path, self.dtype.itemsize, self.count, self.vocab_size, self.row_tokens)

    def append(self, tokens):
        arr = np.asarray(tokens)
        if self.row_tokens:
            if arr.size % self.row_tokens:
                raise BadInput(f"{self.path}: a padded shard takes whole rows of {self.row_tokens} ids")
            _check_ids(self.path, arr[arr != PAD_ID[self.dtype.itemsize]], self.vocab_size)
        else:
            _check_ids(self.path, arr, self.vocab_size)
        self.file.write(arr.astype(self.dtype, copy=False).tobytes())
        self.count += arr.size

    def flush(self):
        """Hands what was appended to the operating system, so it survives the process being killed."""
        self.file.flush()

    def close(self):
        self.file.seek(0)
        self.file.write(self._header())
        self.file.close()
        os.replace(self.tmp, self.path)


def padded_dtype(vocab_size):
    """The ids' type in a padded shard: uint16 when vocab_size < 65536 (so that PAD_ID is no id), else uint32."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def write_padded_shard(path, documents, row_tokens, vocab_size):
    """Writes a padded shard: each document (a sequence of at most row_tokens ids) in a row of its
    own, right-padded with PAD_ID. uint16 when vocab_size < 65536 (so PAD_ID is no id), else uint32."""
    dtype = padded_dtype(vocab_size)
    rows = np.full((len(documents), row_tokens), PAD_ID[np.dtype(dtype).itemsize], dtype=dtype)
    for i, doc in enumerate(documents):
        doc = np.asarray(doc, dtype=np.int64)
        if doc.size > row_tokens:
            raise BadInput(f"{path}: document {i} has {doc.size} ids, more than a row of {row_tokens}")
        _check_ids(path, doc, vocab_size)
        rows[i, :doc.size] = doc
    _write_atomically(path, rows.ravel(), vocab_size, row_tokens)


def _read_header(f, path):
    """(token width, token_count, vocab_size, row_tokens) from an open shard, checked against the
    file's size; BadInput (a ValueError) if malformed."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise BadInput(f"{path}: truncated header, not a mixln token shard")
    magic, version, width, count, vocab, row_tokens = HEADER.unpack(head)
    if magic != MAGIC or version != VERSION or width not in (2, 4):
        raise BadInput(f"{path}: not a version-1 mixln token shard")
    size = os.path.getsize(path)
    if size != HEADER.size + count * width:
        raise BadInput(f"{path}: corrupted: the header promises {count} tokens, the file has "
                       f"{(size - HEADER.size) / width:g}")
    return width, count, vocab, row_tokens


def _read(path):
    """(ids as stored, vocab_size, row_tokens); raises BadInput (a ValueError) on a malformed file."""
    with open(path, "rb") as f:
        width, count, vocab, row_tokens = _read_header(f, path)
        data = np.fromfile(f, dtype=np.uint16 if width == 2 else np.uint32, count=count)
    return data, vocab, row_tokens


def read_shard(path):
    """Returns (tokens as a numpy array, vocab_size); raises BadInput (a ValueError) on a malformed file."""
    data, vocab, _ = _read(path)
    return data, vocab


def read_shard_slices(path, slice_tokens):
    """The shard's ids without padding, slice_tokens at a time (numpy arrays), so that memory stays
    bounded."""
    with open(path, "rb") as f:
        width, count, _, row_tokens = _read_header(f, path)
        for at in range(0, count, slice_tokens):
            ids = np.fromfile(f, dtype=np.uint16 if width == 2 else np.uint32, count=min(slice_tokens, count - at))
            yield ids[ids != PAD_ID[width]] if row_tokens else ids


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
