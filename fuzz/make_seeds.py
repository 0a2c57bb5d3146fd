#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/*), small valid files of each format:
    python3 fuzz/make_seeds.py
Checkpoints follow docs/data-and-formats.md, "Checkpoint" (version 3, with the CRC-32 of slot 27 and the MLP's padding zero;
and a version 2 file, which the reader refuses); optimizer shards version 3."""
import os
import struct
import sys
import zlib

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "scripts"))
import numpy as np  # noqa: E402
from checkpoint_format import ModelConfig, num_params, param_views  # noqa: E402
from shard_format import write_padded_shard, write_shard  # noqa: E402
from vocab_format import write_vocab  # noqa: E402


def checkpoint(version, V=8, T=4, L=1, H=2, C=4, F=6, alpha=0.5, step=3, moments=True, shards=0, run_id=77):
    config = ModelConfig(vocab_size=V, max_seq_len=T, n_layer=L, n_head=H, d_model=C, d_ffn=F)
    n = num_params(config)
    h = [0] * 64
    h[2:9] = [V, T, L, H, C, F, 0]
    h[9] = struct.unpack("<q", struct.pack("<d", alpha))[0]
    h[12] = struct.unpack("<q", struct.pack("<d", 10000.0))[0]
    h[13] = struct.unpack("<q", struct.pack("<d", 1e-6))[0]
    h[14], h[15], h[16] = n, step, 1 if moments else 0
    h[17:27] = [0, 0, 2, 12345, 2, T, 2 * T, 1 if not shards else shards, 42, shards]
    h[1] = version
    if version >= 2:
        h[28] = run_id
    arrays = []
    for a in range(3 if moments else 1):  # the model's elements count up in 17ths; the padding is zero
        flat = np.zeros(n, dtype="<f4")
        for view in param_views(flat, config).values():
            view[...] = (a + np.arange(view.size).reshape(view.shape) % 17) / 17.0
        arrays.append(flat.tobytes())
    floats = b"".join(arrays)
    head = b"MIXLNCKP" + struct.pack("<63q", *h[1:])
    if version >= 2:
        h[27] = zlib.crc32(head + floats)
        head = b"MIXLNCKP" + struct.pack("<63q", *h[1:])
    return head + floats


def optimizer_shard(n_params=40, ranges=((10, 20), (30, 33)), step=3, world=2, rank=1):
    """Version 3: the header, the (begin, end) ranges, then m and v of their parameters."""
    n = sum(end - begin for begin, end in ranges)
    body = struct.pack("<%dq" % (2 * len(ranges)), *[x for r in ranges for x in r])
    body += struct.pack("<%df" % (2 * n), *[i / 8.0 for i in range(2 * n)])
    h = [3, n_params, step, world, rank, len(ranges), n, 0, 77] + [0] * 6
    h[7] = zlib.crc32(b"MIXLNOPT" + struct.pack("<15q", *h) + body)
    return b"MIXLNOPT" + struct.pack("<15q", *h) + body


def main():
    corpus = os.path.join(here, "corpus")
    for d in ("checkpoint", "shard", "vocab"):
        os.makedirs(os.path.join(corpus, d), exist_ok=True)
    seeds = {
        "checkpoint/v3_moments.bin": checkpoint(3),
        "checkpoint/v3_weights_only.bin": checkpoint(3, step=0, moments=False, run_id=0),
        "checkpoint/v3_two_layers.bin": checkpoint(3, L=2, alpha=1.0, moments=False),
        "checkpoint/v2_refused.bin": checkpoint(2),
        "checkpoint/optimizer_v3.bin": optimizer_shard(),
    }
    for name, data in seeds.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    write_shard(os.path.join(corpus, "shard/two_byte.bin"), [(i * 7) % 256 for i in range(40)], 256)
    write_shard(os.path.join(corpus, "shard/four_byte.bin"), [(i * 11) % 299 for i in range(30)], 70000)
    # one document per row of 3 (fuzz_shard's T), padded
    write_padded_shard(os.path.join(corpus, "shard/padded.bin"), [[5, 6], [7, 8, 9], [1], [2, 3, 4], [11, 12]], 3, 300)
    write_vocab(os.path.join(corpus, "vocab/bytes.bin"), [bytes([i]) for i in range(256)] + [b"</s>"], 256)
    write_vocab(os.path.join(corpus, "vocab/pieces.bin"), [b"a", b"b", b"ab", b"\xe2\x96\x81the", b""], -1)


if __name__ == "__main__":
    main()
