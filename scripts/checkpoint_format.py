"""Checkpoints in Python: the one reader and writer on the Python side (core/checkpoint.h is the C++ one).

Format (little-endian): a 512-byte header of 64 int64 slots, then float32 arrays.
    slot 0  magic "MIXLNCKP"            slot 14     number of parameters P
    slot 1  version (1 or 2)            slot 15     optimizer steps completed
    slots 2-7  vocab_size, max_seq_len, slot 16     1 if Adam moments follow, else 0
       n_layer, n_head, d_model, d_ffn  slots 17-26 train state (data position, RNG, batch, ranks, ...)
    slot 8  norm scheme (NORM_SCHEMES)  slot 27     version 2: CRC-32 of the file (below); version 1: 0
    slot 9  alpha (double bits)         slot 28     train state (version 2)
    slots 10, 11  scaled_init, scaled_embed        slots 29-63  0
    slots 12, 13  rope_theta, norm_eps (double bits)
    then params[P] (the layout of param_layout), then, if slot 16 is 1, Adam's m[P] and v[P].
Version 2's slot 27 is zlib's CRC-32 of the whole file with slot 27 read as zero. Version 1 files have
no checksum: they are read unverified.

read_checkpoint memory-maps the arrays, so a large checkpoint is not read into memory at once.
write_checkpoint writes a weights-only version 2 file (no optimizer state, step 0, train state zero),
the kind that `train_mixln_cpu -f` starts from.
"""
import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from script_errors import BadInput

MAGIC = b"MIXLNCKP"
VERSION = 2
HEADER_SLOTS = 64
HEADER_BYTES = 8 * HEADER_SLOTS
CRC_SLOT = 27
CRC_CHUNK_BYTES = 1 << 26


class CheckpointError(BadInput):
    """A file that is not a readable checkpoint; the message names the file."""


@dataclass(frozen=True)
class ModelConfig:
    """core/config.h's ModelConfig."""
    vocab_size: int
    max_seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    d_ffn: int
    norm_scheme: int = 0
    alpha: float = 0.0
    scaled_init: bool = False
    scaled_embed: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


# Norm scheme (slot 8, core/config.h's NormScheme) -> (name as -n spells it, number of Post-LN layers,
# DeepNorm's residual weight s in x_{l+1} = norm(s*x + f(x))): core/config.h's num_post_ln_layers and
# residual_scale.
NORM_SCHEMES = {
    0: ("mixln", lambda c: math.floor(c.alpha * c.n_layer + 1e-9), lambda c: 1.0),
    1: ("deepnorm", lambda c: c.n_layer, lambda c: (2.0 * c.n_layer) ** 0.25),  # DeepNet's formula
    2: ("deepnorm_paper", lambda c: c.n_layer, lambda c: math.sqrt(8.0)),      # the Mix-LN code's 'deeppost'
}


def norm_scheme_name(config):
    return NORM_SCHEMES[config.norm_scheme][0]


def num_post_ln_layers(config):
    """Layers [0, this) are Post-LN (paper eq. 1), the rest Pre-LN (eq. 2)."""
    return NORM_SCHEMES[config.norm_scheme][1](config)


def residual_scale(config):
    return NORM_SCHEMES[config.norm_scheme][2](config)


def embedding_scale(config):
    """Scaled embedding (paper Appendix B): the embedding output times sqrt(d_model)."""
    return math.sqrt(config.d_model) if config.scaled_embed else 1.0


def param_layout(config):
    """[(name, shape)] in file order: mirrors make_param_layout in core/config.h (keep the two in step).
    Per-layer tensors hold all n_layer layers back to back, so their shape starts with n_layer."""
    V, C, F, L = config.vocab_size, config.d_model, config.d_ffn, config.n_layer
    return [("wte", (V, C)), ("norm_a", (L, C)), ("wq", (L, C, C)), ("wk", (L, C, C)), ("wv", (L, C, C)),
            ("wo", (L, C, C)), ("norm_b", (L, C)), ("wgate", (L, F, C)), ("wup", (L, F, C)),
            ("wdown", (L, C, F)), ("norm_f", (C,)), ("lm_head", (V, C))]


def num_params(config):
    return sum(math.prod(shape) for _, shape in param_layout(config))


@dataclass
class Checkpoint:
    path: str
    version: int
    config: ModelConfig
    step: int
    has_moments: bool
    params: np.ndarray  # (P,) float32, memory-mapped

    def tensors(self):
        """{name: view of params in its shape}, in file order."""
        out, offset = {}, 0
        for name, shape in param_layout(self.config):
            n = math.prod(shape)
            out[name] = self.params[offset:offset + n].reshape(shape)
            offset += n
        return out


def _double(bits):
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


def _double_bits(x):
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _file_crc(mapped):
    """CRC-32 of a checkpoint's bytes (a uint8 array) with slot 27 taken as zero."""
    header = bytearray(mapped[:HEADER_BYTES])
    header[8 * CRC_SLOT:8 * CRC_SLOT + 8] = bytes(8)
    crc = zlib.crc32(header)
    for start in range(HEADER_BYTES, mapped.size, CRC_CHUNK_BYTES):
        crc = zlib.crc32(mapped[start:start + CRC_CHUNK_BYTES], crc)
    return crc


def read_checkpoint(path):
    """Reads and checks a version 1 or 2 checkpoint; raises CheckpointError naming the file."""
    def fail(what):
        return CheckpointError(f"checkpoint '{path}': {what}")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise fail(f"cannot open: {e.strerror}") from None
    if size < HEADER_BYTES:
        raise fail(f"truncated header ({size} bytes, less than {HEADER_BYTES})")
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    h = np.frombuffer(mapped[:HEADER_BYTES].tobytes(), dtype="<i8")
    if h[:1].tobytes() != MAGIC:
        raise fail("bad magic: not a mixln checkpoint")
    version = int(h[1])
    if version not in (1, 2):
        raise fail(f"unsupported version {version} (this reader reads 1 and 2)")
    if int(h[8]) not in NORM_SCHEMES:
        raise fail(f"unknown norm scheme {int(h[8])} (known: {sorted(NORM_SCHEMES)})")
    dims = [int(x) for x in h[2:8]]
    if min(dims) <= 0:
        raise fail(f"bad model shape {dims} (corrupt header)")
    config = ModelConfig(*dims, norm_scheme=int(h[8]), alpha=_double(h[9]), scaled_init=bool(h[10]),
                         scaled_embed=bool(h[11]), rope_theta=_double(h[12]), norm_eps=_double(h[13]))
    n = int(h[14])
    if n != num_params(config):
        raise fail(f"parameter count {n} does not match its model config ({num_params(config)}; corrupt header)")
    has_moments = int(h[16]) != 0
    expected = HEADER_BYTES + 4 * n * (3 if has_moments else 1)
    if size != expected:
        raise fail(f"size mismatch: the header promises {expected} bytes, the file has {size}"
                   + (" (truncated)" if size < expected else ""))
    if version == 2 and _file_crc(mapped) != int(h[CRC_SLOT]) & 0xFFFFFFFF:
        raise fail(f"CRC-32 mismatch: stored {int(h[CRC_SLOT]) & 0xFFFFFFFF:#010x}, computed "
                   f"{_file_crc(mapped):#010x} (corrupt file)")
    params = np.memmap(path, dtype="<f4", mode="r", offset=HEADER_BYTES, shape=(n,))
    return Checkpoint(path, version, config, int(h[15]), has_moments, params)


def write_checkpoint(path, config, tensors):
    """Writes a weights-only version 2 checkpoint: tensors maps each name of param_layout to an array
    of its shape (converted to float32). Written to PATH.tmp, fsync'ed and renamed over PATH."""
    layout = param_layout(config)
    if set(tensors) != {name for name, _ in layout}:
        raise ValueError(f"checkpoint '{path}': tensors {sorted(tensors)} are not the layout's")
    h = np.zeros(HEADER_SLOTS, dtype="<i8")
    h[0] = np.frombuffer(MAGIC, dtype="<i8")[0]
    h[1] = VERSION
    h[2:8] = [config.vocab_size, config.max_seq_len, config.n_layer, config.n_head, config.d_model, config.d_ffn]
    h[8] = config.norm_scheme
    h[9], h[12], h[13] = _double_bits(config.alpha), _double_bits(config.rope_theta), _double_bits(config.norm_eps)
    h[10], h[11] = int(config.scaled_init), int(config.scaled_embed)
    h[14] = num_params(config)
    crc = zlib.crc32(h.tobytes())
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(h.tobytes())
            for name, shape in layout:
                data = np.ascontiguousarray(tensors[name], dtype="<f4")
                if data.shape != shape:
                    raise ValueError(f"checkpoint '{path}': {name} has shape {data.shape}, the layout {shape}")
                crc = zlib.crc32(data.data.cast("B"), crc)
                f.write(data.data.cast("B"))
            h[CRC_SLOT] = crc
            f.seek(0)
            f.write(h.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
