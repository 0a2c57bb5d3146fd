"""Exports a checkpoint as a Hugging Face model directory (transformers, safetensors).

    python3 scripts/export_hf.py out/demo/ckpt_00000800.bin out/demo_hf --tokenizer data/kjv

writes to OUT_DIR:
  - model.safetensors, or model-0000K-of-0000N.safetensors and model.safetensors.index.json when the
    weights pass --max-shard-mb; LLaMA's tensor names (hf_format.py), fp32 or --dtype bf16;
  - config.json and generation_config.json;
  - for a model with Post-LN layers (alpha > 0, DeepNorm) or a scaled embedding: modeling_mixln.py
    and configuration_mixln.py (loaded with trust_remote_code=True); otherwise the model is a plain
    LlamaForCausalLM;
  - with --tokenizer: tokenizer.json and tokenizer_config.json, so AutoTokenizer loads it.

CKPT is a checkpoint file or a run directory (its newest ckpt_*.bin), version 3 (older files: convert them
with scripts/upgrade_checkpoint.py). The weights are the model's: the checkpoint's zero padding of the
MLP (core/config.h's ffn_stored) is left out, so the Hugging Face model has intermediate_size d_ffn.
"""
import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np
from checkpoint_format import read_checkpoint
from hf_format import hf_config, hf_tensor_names, is_plain_llama
from safetensors_files import write_safetensors
from script_errors import run_script
from vocab_format import EOT_NAMES, _byte_level_chars, read_vocab

MODELING_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_mixln")
DTYPES = {"fp32": ("F32", "float32", 4), "bf16": ("BF16", "bfloat16", 2)}


def newest_checkpoint(path):
    """path itself, or the newest ckpt_*.bin in the directory path."""
    if not os.path.isdir(path):
        return path
    names = sorted(glob.glob(os.path.join(path, "ckpt_" + "[0-9]" * 8 + ".bin")))
    if not names:
        sys.exit(f"error: no checkpoint (ckpt_*.bin) in directory '{path}'")
    return names[-1]


def hf_tensors(checkpoint):
    """[(Hugging Face name, float32 array)] in hf_tensor_names' order, refusing non-finite weights."""
    tensors = checkpoint.tensors()
    out = []
    for t, layer, name in hf_tensor_names(checkpoint.config):
        array = tensors[t] if layer is None else tensors[t][layer]
        if not np.isfinite(array).all():
            sys.exit(f"error: checkpoint '{checkpoint.path}': tensor {t}"
                     + ("" if layer is None else f" of layer {layer}") + " holds NaN or infinite values")
        out.append((name, array))
    return out


def write_weights(out_dir, tensors, dtype, max_shard_bytes):
    """model.safetensors, or shards of at most max_shard_bytes (one tensor may exceed it) and the index."""
    itemsize = DTYPES[dtype][2]
    shards, size = [[]], 0
    for name, array in tensors:
        nbytes = array.size * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, array))
        size += nbytes
    if len(shards) == 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, DTYPES[dtype][0])
        return
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(out_dir, file), shard, DTYPES[dtype][0])
        weight_map.update({name: file for name, _ in shard})
    index = {"metadata": {"total_size": sum(a.size * itemsize for _, a in tensors)}, "weight_map": weight_map}
    write_json(os.path.join(out_dir, "model.safetensors.index.json"), index)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def byte_level_tokenizer():
    """A tokenizer whose id b is byte b (prepro_text.py --tokenizer bytes): byte-level BPE without merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tokenizer = Tokenizer(models.BPE(vocab=_byte_level_chars(), merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def load_tokenizer(path):
    """The training data's tokenizer from a tokenizer.json, or a data directory's tokenizer.json (BPE,
    hf: or C4's T5 tokenizer), or a data directory whose vocab.bin is the 256 bytes."""
    from tokenizers import Tokenizer
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if os.path.isfile(file):
        try:
            return Tokenizer.from_file(file)
        except Exception as e:
            sys.exit(f"error: --tokenizer: cannot load '{file}': {e}")
    vocab = os.path.join(path, "vocab.bin")
    if os.path.isdir(path) and os.path.isfile(vocab):
        pieces, _ = read_vocab(vocab)
        if pieces == [bytes([b]) for b in range(256)]:
            return byte_level_tokenizer()
        sys.exit(f"error: --tokenizer: '{path}' has no tokenizer.json, and its vocab.bin is not the byte vocabulary")
    sys.exit(f"error: --tokenizer: '{path}' is neither a tokenizer.json nor a data directory with one or a vocab.bin")


def write_tokenizer(out_dir, tokenizer, config):
    """tokenizer.json and tokenizer_config.json; returns the end-of-text id (None if it has none)."""
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    eot = next((name for name in EOT_NAMES if tokenizer.token_to_id(name) is not None), None)
    write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_seq_len,
        "eos_token": eot, "clean_up_tokenization_spaces": False})
    return tokenizer.token_to_id(eot) if eot else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint file, or a run directory (its newest checkpoint)")
    ap.add_argument("out_dir", help="output directory (created; files of the same names are replaced)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="stored weight type (default fp32)")
    ap.add_argument("--tokenizer", help="a tokenizer.json, or the training data's directory (its tokenizer.json, "
                                        "or a byte-level one for prepro_text.py's bytes)")
    ap.add_argument("--max-shard-mb", type=float, default=4096, help="split the weights into files of at most "
                                                                      "this many MB (default 4096)")
    args = ap.parse_args()
    if args.max_shard_mb <= 0:
        sys.exit("error: --max-shard-mb must be positive")
    checkpoint = read_checkpoint(newest_checkpoint(args.checkpoint))
    config = checkpoint.config
    if config.d_model % config.n_head:
        sys.exit(f"error: checkpoint '{checkpoint.path}': d_model {config.d_model} is not a multiple of n_head {config.n_head}")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None

    tensors = hf_tensors(checkpoint)  # refuses non-finite weights before anything is written
    os.makedirs(args.out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(args.out_dir, "model*.safetensors*")) + \
            glob.glob(os.path.join(args.out_dir, "*_mixln.py")):
        os.remove(stale)  # an earlier export's shards or modeling code
    write_weights(args.out_dir, tensors, args.dtype, args.max_shard_mb * 1e6)
    eot = write_tokenizer(args.out_dir, tokenizer, config) if tokenizer else None
    hf = hf_config(config, torch_dtype=DTYPES[args.dtype][1])
    hf.update(bos_token_id=None, eos_token_id=eot, pad_token_id=None)
    write_json(os.path.join(args.out_dir, "config.json"), hf)
    write_json(os.path.join(args.out_dir, "generation_config.json"),
               {"bos_token_id": None, "eos_token_id": eot, "pad_token_id": eot})
    if not is_plain_llama(config):
        for name in ("modeling_mixln.py", "configuration_mixln.py"):
            shutil.copy(os.path.join(MODELING_DIR, name), os.path.join(args.out_dir, name))
    kind = "LlamaForCausalLM" if is_plain_llama(config) else "MixLNForCausalLM (trust_remote_code=True)"
    print(f"exported '{checkpoint.path}' (step {checkpoint.step}) to '{args.out_dir}': {kind}, {args.dtype}"
          + ("" if tokenizer else "; no tokenizer (pass --tokenizer)"))


if __name__ == "__main__":
    run_script(main)
