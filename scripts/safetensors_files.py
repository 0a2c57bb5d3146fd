"""safetensors files (Hugging Face's weight format) with numpy alone, including bfloat16, which numpy
lacks: export_hf.py writes them tensor by tensor and import_hf.py memory-maps them.

Format (https://huggingface.co/docs/safetensors): uint64 little-endian header length n, n bytes of
JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data,
each tensor row-major little-endian at its offsets (relative to the end of the header).
The tests read the files written here back with the safetensors package.
"""
import json
import math
import os
import struct

import numpy as np
from script_errors import BadInput

# bfloat16 is stored as the top 16 bits of a float32, so it reads as uint16 and widens exactly.
NUMPY_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
ALIGN = 8  # header padded with spaces so that the data starts 8-byte aligned


def to_bfloat16(x):
    """float32 array -> its bfloat16 bits (uint16), rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def to_float32(raw, dtype):
    """An array read as NUMPY_DTYPES[dtype] -> float32 (exact for F32, BF16 and F16)."""
    if dtype == "BF16":
        return (raw.astype("<u4") << 16).view("<f4")
    return raw.astype("<f4")


def write_safetensors(path, tensors, dtype):
    """Writes [(name, float32 array)] in that order, stored as dtype ("F32" or "BF16"), through
    PATH.tmp renamed over PATH."""
    itemsize = NUMPY_DTYPES[dtype].itemsize
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in tensors:
        size = itemsize * math.prod(array.shape)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(len(blob) + 8) % ALIGN)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, array in tensors:
            data = to_bfloat16(array) if dtype == "BF16" else np.ascontiguousarray(array, dtype="<f4")
            f.write(data.data.cast("B"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_safetensors(path):
    """{name: (dtype, memory-mapped array of NUMPY_DTYPES[dtype] in its shape)}; raises BadInput naming
    the file if it is malformed or holds a dtype other than F32, BF16, F16."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise BadInput(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise BadInput(f"{path}: not a safetensors file (header is not JSON)") from None
    header.pop("__metadata__", None)
    out = {}
    for name, entry in header.items():
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in NUMPY_DTYPES:
            raise BadInput(f"{path}: tensor {name} has dtype {dtype} (supported: {', '.join(NUMPY_DTYPES)})")
        if end - begin != NUMPY_DTYPES[dtype].itemsize * math.prod(shape) or 8 + n + end > size:
            raise BadInput(f"{path}: tensor {name}'s offsets do not fit its shape or the file (truncated?)")
        out[name] = (dtype, np.memmap(path, dtype=NUMPY_DTYPES[dtype], mode="r", offset=8 + n + begin, shape=shape))
    return out
