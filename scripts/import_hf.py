"""Imports a Hugging Face LLaMA model (or one export_hf.py wrote) as a weights-only checkpoint.

    python3 scripts/import_hf.py HF_DIR model.bin
    ./train_mixln_cpu -f model.bin -i data/train.bin ...        # fine-tune from it

HF_DIR holds config.json and model.safetensors (or shards with model.safetensors.index.json), in
float32, bfloat16 or float16; the weights are widened to float32 exactly. The model must be what this
project computes: LLaMA without biases, one key/value head per head, untied embeddings, plain RoPE,
SwiGLU with silu; anything else is refused, naming it. A Mix-LN directory of export_hf.py gives back
its norm scheme, alpha and scaled embedding (scaled initialization, an option of the first
initialization only, comes back as 0). The checkpoint is version 3, step 0, with no optimizer state; its MLP is stored padded with zeros
(core/config.h's ffn_stored).
"""
import argparse
import json
import os
import sys

import numpy as np
from checkpoint_format import param_shapes, write_checkpoint
from hf_format import hf_tensor_names, model_config_from_hf
from safetensors_files import read_safetensors, to_float32
from script_errors import run_script

# Buffers some LLaMA checkpoints carry that are derived from the config, not weights.
DERIVED_BUFFERS = (".rotary_emb.inv_freq",)


def read_hf_tensors(hf_dir):
    """{name: (dtype, memory-mapped array)} over model.safetensors or the shards its index names."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        sys.exit(f"error: '{hf_dir}' has no model.safetensors or model.safetensors.index.json "
                 "(PyTorch .bin weights are not read: save the model with safe_serialization=True)")
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(os.path.join(hf_dir, file)))
    return {name: t for name, t in tensors.items() if not name.endswith(DERIVED_BUFFERS)}


def checkpoint_tensors(config, hf):
    """The model's tensors (param_shapes names and shapes, float32) from the Hugging Face ones."""
    expected = hf_tensor_names(config)
    names = {name for _, _, name in expected}
    unexpected = sorted(set(hf) - names)
    if unexpected:
        biases = [n for n in unexpected if n.endswith(".bias")]
        what = f"biases ({', '.join(biases[:3])}...)" if biases else f"tensors {', '.join(unexpected[:5])}"
        sys.exit(f"error: unsupported: {what} that this project's model does not have")
    missing = sorted(names - set(hf))
    if missing:
        sys.exit(f"error: tensors missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    out = {name: np.empty(shape, dtype=np.float32) for name, shape in param_shapes(config)}
    for t, layer, name in expected:
        dtype, raw = hf[name]
        target = out[t] if layer is None else out[t][layer]
        if raw.shape != target.shape:
            sys.exit(f"error: tensor {name} has shape {raw.shape}, the config implies {target.shape}")
        target[...] = to_float32(raw, dtype)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="a Hugging Face model directory (config.json, *.safetensors)")
    ap.add_argument("checkpoint", help="the checkpoint file to write")
    args = ap.parse_args()
    try:
        with open(os.path.join(args.hf_dir, "config.json")) as f:
            hf_config = json.load(f)
        config = model_config_from_hf(hf_config)
    except OSError as e:
        sys.exit(f"error: cannot read the config of '{args.hf_dir}': {e.strerror}")
    except KeyError as e:
        sys.exit(f"error: '{args.hf_dir}/config.json': no field {e}")
    except ValueError as e:
        sys.exit(f"error: '{args.hf_dir}/config.json': {e}")
    tensors = checkpoint_tensors(config, read_hf_tensors(args.hf_dir))
    write_checkpoint(args.checkpoint, config, tensors)
    print(f"imported '{args.hf_dir}' ({config.n_layer} layers, d {config.d_model}, vocab {config.vocab_size}) "
          f"into '{args.checkpoint}'")


if __name__ == "__main__":
    run_script(main)
