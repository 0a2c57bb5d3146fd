"""Checkpoints in Python: the one reader and writer on the Python side (core/checkpoint.h is the C++ one).

Format version 3 (little-endian): a 512-byte header of 64 int64 slots, then float32 arrays.
    slot 0  magic "MIXLNCKP"            slot 14     number of stored parameters P (padding included)
    slot 1  version, 3                  slot 15     optimizer steps completed
    slots 2-7  vocab_size, max_seq_len, slot 16     1 if Adam moments follow, else 0
       n_layer, n_head, d_model, d_ffn  slots 17-26 train state (data position, RNG, batch, ranks, ...)
    slot 8  norm scheme (NORM_SCHEMES)  slot 27     CRC-32 of the file (below)
    slot 9  alpha (double bits)         slot 28     run id
    slots 10, 11  scaled_init,          slot 29     steps whose update was skipped (a non-finite
       scaled_embed                                 gradient norm; AdamW did slot 15 - slot 29 updates)
    slots 12, 13  rope_theta, norm_eps  slots 30-63 0
       (double bits)
    then params[P] (the layout of param_layout), then, if slot 16 is 1, Adam's m[P] and v[P].
Slot 27 is zlib's CRC-32 of the whole file with slot 27 read as zero. d_ffn is the model's F; the
file stores the MLP ffn_stored(config) wide, with zeros in the padding (param_layout). Versions 1 and 2
(tensor-major, unpadded) are refused; scripts/upgrade_checkpoint.py converts them.

read_checkpoint memory-maps the arrays, so a large checkpoint is not read into memory at once;
Checkpoint.tensors() gives the model's tensors (the padding left out) as views. write_checkpoint
writes a weights-only file (no optimizer state, step 0, train state zero), the kind that
`train_mixln_cpu -f` starts from, padding the MLP with zeros.
"""
import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from script_errors import BadInput

MAGIC = b"MIXLNCKP"
VERSION = 3
OLD_LAYOUT_VERSIONS = (1, 2)  # tensor-major, unpadded: scripts/upgrade_checkpoint.py converts them
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


FFN_ALIGN = 64


def ffn_stored(config):
    """The stored MLP width Fs: d_ffn rounded up to a multiple of FFN_ALIGN (1b: 5461 -> 5504)."""
    return -(-config.d_ffn // FFN_ALIGN) * FFN_ALIGN


def param_shapes(config):
    """[(name, shape)] of the model's tensors in core/config.h's ParamTensor order, padding left out:
    what Checkpoint.tensors() returns and write_checkpoint takes. Per-layer shapes start with n_layer."""
    V, C, F, L = config.vocab_size, config.d_model, config.d_ffn, config.n_layer
    return [("wte", (V, C)), ("norm_a", (L, C)), ("wq", (L, C, C)), ("wk", (L, C, C)), ("wv", (L, C, C)),
            ("wo", (L, C, C)), ("norm_b", (L, C)), ("wgate", (L, F, C)), ("wup", (L, F, C)),
            ("wdown", (L, C, F)), ("norm_f", (C,)), ("lm_head", (V, C))]


@dataclass(frozen=True)
class ParamLayout:
    """Where the parameters are in the flat array: mirrors make_param_layout in core/config.h (keep the
    two in step). wte (V, C) | layer 0's block | ... | layer L-1's block | norm_f (C) | lm_head (V, C);
    a block is `block` in order: wq wk wv (3C, C), wo, wgate wup (2Fs, C), wdown (C, Fs), norm_a, norm_b."""
    block: tuple         # ((name, stored shape), ...) of one layer, in block order
    layers_begin: int    # where layer 0's block starts
    layer_stride: int    # elements of one block
    total: int           # stored elements P


def param_layout(config):
    V, C, Fs, L = config.vocab_size, config.d_model, ffn_stored(config), config.n_layer
    block = (("wq", (C, C)), ("wk", (C, C)), ("wv", (C, C)), ("wo", (C, C)), ("wgate", (Fs, C)), ("wup", (Fs, C)),
             ("wdown", (C, Fs)), ("norm_a", (C,)), ("norm_b", (C,)))
    stride = sum(math.prod(shape) for _, shape in block)
    return ParamLayout(block, V * C, stride, 2 * V * C + L * stride + C)


def num_params(config):
    """The stored parameter count P (slot 14)."""
    return param_layout(config).total


def num_model_parameters(config):
    """The model's parameter count, without the padding."""
    return sum(math.prod(shape) for _, shape in param_shapes(config))


def stored_block_views(blocks, config):
    """{name: view} of the per-layer tensors in blocks, an array (k, layer_stride) holding k layers'
    blocks, each in its stored shape (padding included) with a leading k."""
    views, at = {}, 0
    for name, shape in param_layout(config).block:
        views[name] = blocks[:, at:at + math.prod(shape)].reshape(len(blocks), *shape)
        at += math.prod(shape)
    return views


def block_views(blocks, config):
    """stored_block_views in the model's shapes: the padding of the MLP left out. Writing to a view
    writes into blocks."""
    F, views = config.d_ffn, stored_block_views(blocks, config)
    views["wgate"], views["wup"], views["wdown"] = views["wgate"][:, :F], views["wup"][:, :F], views["wdown"][:, :, :F]
    return views


def first_layer_with_nonzero_padding(flat, config):
    """The first layer whose MLP padding in flat (parameters or moments) holds a nonzero, or None."""
    layout, F, L = param_layout(config), config.d_ffn, config.n_layer
    blocks = flat[layout.layers_begin:layout.layers_begin + L * layout.layer_stride].reshape(L, layout.layer_stride)
    stored = stored_block_views(blocks, config)
    padding = [stored["wgate"][:, F:], stored["wup"][:, F:], stored["wdown"][:, :, F:]]
    nonzero = np.any([np.any(p.reshape(L, -1) != 0, axis=1) for p in padding], axis=0)
    return int(np.argmax(nonzero)) if nonzero.any() else None


def param_views(flat, config):
    """{name: view of flat (the P stored parameters, or an array of moments in their layout) in the
    model's shape}, in param_shapes order, the padding left out."""
    layout = param_layout(config)
    V, C, L = config.vocab_size, config.d_model, config.n_layer
    end = layout.layers_begin + L * layout.layer_stride
    views = block_views(flat[layout.layers_begin:end].reshape(L, layout.layer_stride), config)
    views.update(wte=flat[:V * C].reshape(V, C), norm_f=flat[end:end + C], lm_head=flat[end + C:].reshape(V, C))
    return {name: views[name] for name, _ in param_shapes(config)}


def old_layout_views(flat, config):
    """param_views for the layout of versions 1 and 2: the tensors of param_shapes back to back, unpadded."""
    views, at = {}, 0
    for name, shape in param_shapes(config):
        views[name] = flat[at:at + math.prod(shape)].reshape(shape)
        at += math.prod(shape)
    return views


@dataclass
class Checkpoint:
    path: str
    version: int
    config: ModelConfig
    step: int
    has_moments: bool
    header: np.ndarray  # the 64 int64 slots
    arrays: list        # params, then m and v if has_moments: (P,) float32 each, memory-mapped

    @property
    def params(self):
        return self.arrays[0]

    def tensors(self, array=None):
        """{name: view of params (or of array, m or v) in the model's shape, the padding left out}, in
        param_shapes order."""
        array = self.params if array is None else array
        views = old_layout_views if self.version in OLD_LAYOUT_VERSIONS else param_views
        return views(array, self.config)


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


def read_checkpoint(path, old_layout=False):
    """Reads and checks a version 3 checkpoint (with old_layout: a version 1 or 2 one, for
    upgrade_checkpoint.py); raises CheckpointError naming the file."""
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
    readable = OLD_LAYOUT_VERSIONS if old_layout else (VERSION,)
    if version in OLD_LAYOUT_VERSIONS and not old_layout:
        raise fail(f"version {version}: the parameter layout changed in version 3 (layer-major, padded MLP); "
                   "convert the file with scripts/upgrade_checkpoint.py OLD NEW")
    if version not in readable:
        raise fail(f"unsupported version {version} (this reader reads {' and '.join(map(str, readable))})")
    if int(h[8]) not in NORM_SCHEMES:
        raise fail(f"unknown norm scheme {int(h[8])} (known: {sorted(NORM_SCHEMES)})")
    dims = [int(x) for x in h[2:8]]
    if min(dims) <= 0:
        raise fail(f"bad model shape {dims} (corrupt header)")
    config = ModelConfig(*dims, norm_scheme=int(h[8]), alpha=_double(h[9]), scaled_init=bool(h[10]),
                         scaled_embed=bool(h[11]), rope_theta=_double(h[12]), norm_eps=_double(h[13]))
    n, expected_n = int(h[14]), num_model_parameters(config) if old_layout else num_params(config)
    if n != expected_n:
        raise fail(f"parameter count {n} does not match its model config ({expected_n}; corrupt header)")
    has_moments = int(h[16]) != 0
    expected = HEADER_BYTES + 4 * n * (3 if has_moments else 1)
    if size != expected:
        raise fail(f"size mismatch: the header promises {expected} bytes, the file has {size}"
                   + (" (truncated)" if size < expected else ""))
    if version >= 2 and _file_crc(mapped) != int(h[CRC_SLOT]) & 0xFFFFFFFF:
        raise fail(f"CRC-32 mismatch: stored {int(h[CRC_SLOT]) & 0xFFFFFFFF:#010x}, computed "
                   f"{_file_crc(mapped):#010x} (corrupt file)")
    arrays = np.memmap(path, dtype="<f4", mode="r", offset=HEADER_BYTES, shape=(3 if has_moments else 1, n))
    for array in [] if old_layout else arrays:
        layer = first_layer_with_nonzero_padding(array, config)
        if layer is not None:
            raise fail(f"layer {layer}'s MLP padding (units {config.d_ffn}..{ffn_stored(config) - 1} of gate, up "
                       "and down) is not zero (corrupt file)")
    return Checkpoint(path, version, config, int(h[15]), has_moments, h, list(arrays))


def checkpoint_header(config, has_moments=False):
    """A header for config with the train state zero and no CRC yet (write_arrays adds it)."""
    h = np.zeros(HEADER_SLOTS, dtype="<i8")
    h[0] = np.frombuffer(MAGIC, dtype="<i8")[0]
    h[1] = VERSION
    h[2:8] = [config.vocab_size, config.max_seq_len, config.n_layer, config.n_head, config.d_model, config.d_ffn]
    h[8] = config.norm_scheme
    h[9], h[12], h[13] = _double_bits(config.alpha), _double_bits(config.rope_theta), _double_bits(config.norm_eps)
    h[10], h[11] = int(config.scaled_init), int(config.scaled_embed)
    h[14] = num_params(config)
    h[16] = int(has_moments)
    return h


def write_arrays(path, h, arrays):
    """Writes header h (its CRC slot filled in here) and then each of arrays as float32: to PATH.tmp,
    fsync'ed and renamed over PATH; nothing is left behind on an error."""
    h = h.copy()
    h[CRC_SLOT] = 0
    crc = zlib.crc32(h.tobytes())
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(h.tobytes())
            for array in arrays:
                data = np.ascontiguousarray(array, dtype="<f4")
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


def stored_arrays(config, tensors):
    """The parameters in file order, as consecutive arrays (wte, each layer's block, norm_f, lm_head),
    from tensors in the model's shapes (param_shapes), the MLP padded with zeros. One block at a time,
    so a large model is not copied whole."""
    yield tensors["wte"]
    for layer in range(config.n_layer):
        block = np.zeros((1, param_layout(config).layer_stride), dtype="<f4")
        for name, view in block_views(block, config).items():
            view[0] = tensors[name][layer]
        yield block
    yield tensors["norm_f"]
    yield tensors["lm_head"]


def write_checkpoint(path, config, tensors):
    """Writes a weights-only version 3 checkpoint: tensors maps each name of param_shapes to an array
    of its shape (converted to float32); the MLP's padding is written as zeros."""
    shapes = param_shapes(config)
    if set(tensors) != {name for name, _ in shapes}:
        raise ValueError(f"checkpoint '{path}': tensors {sorted(tensors)} are not the model's")
    for name, shape in shapes:
        if np.shape(tensors[name]) != shape:
            raise ValueError(f"checkpoint '{path}': {name} has shape {np.shape(tensors[name])}, the model {shape}")
    write_arrays(path, checkpoint_header(config), stored_arrays(config, tensors))
