"""Token shards in Python: the one writer and reader on the Python side (dataloader.h is the C++ one).

Format (little-endian): 32-byte header, then the token ids.
    char[8] magic "MIXLNTOK" | uint32 version 1 | uint32 token_bytes (2 or 4)
    uint64 token_count | uint32 vocab_size | uint32 reserved 0
"""
import struct

import numpy as np

MAGIC = b"MIXLNTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")


def write_shard(path, tokens, vocab_size):
    """Writes ids (any integer sequence) as uint16 when vocab_size <= 65536, else uint32."""
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{path}: token ids must lie in [0, {vocab_size})")
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, arr.size, vocab_size, 0))
        f.write(arr.astype(dtype).tobytes())
    import os
    os.replace(tmp, path)


def read_shard(path):
    """Returns (tokens as a numpy array, vocab_size); raises ValueError on a malformed file."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise ValueError(f"{path}: truncated header")
        magic, version, width, count, vocab, _ = HEADER.unpack(head)
        if magic != MAGIC or version != VERSION or width not in (2, 4):
            raise ValueError(f"{path}: not a version-1 mixln token shard")
        data = np.frombuffer(f.read(), dtype=np.uint16 if width == 2 else np.uint32)
    if data.size != count:
        raise ValueError(f"{path}: header promises {count} tokens, file has {data.size}")
    return data, vocab
