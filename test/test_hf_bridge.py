#!/usr/bin/env python3
"""Checks of the Hugging Face bridge without torch: the Python checkpoint reader and writer against
the trainer's files, export_hf.py and import_hf.py (round trip bit for bit, tensor names, shapes and
config.json as transformers' LLaMA expects them, read back with the safetensors package, every
refusal), logits_mixln_cpu against the trainer's loss, and the trainer starting from and evaluating
an imported checkpoint (version 3: needs the C++ reader of version 3). Needs `make train_mixln_cpu logits_mixln_cpu` (`make test` runs it); ends with
"test_hf_bridge: N passed, M failed" (", K skipped" without the packages of scripts/requirements.txt).
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
try:
    import numpy as np
    from safetensors import safe_open
    from tokenizers import Tokenizer
except ImportError as e:
    print(f"test_hf_bridge: {e.name} missing, skipping: pip install -r scripts/requirements.txt")
    print("test_hf_bridge: 0 passed, 0 failed, 1 skipped")
    sys.exit(0)
from checkpoint_format import (HEADER_BYTES, ModelConfig, checkpoint_header, num_model_parameters, num_params, param_layout, param_shapes,
                               read_checkpoint, write_checkpoint)
from shard_format import read_shard, write_shard

TMP = tempfile.mkdtemp(prefix="mixln_hf_")
SHAPE = ["-e", "tiny", "-L", "3", "-C", "48", "-H", "2", "-F", "80"]
# The variants trained for the checks: name -> the trainer's model flags.
VARIANTS = {"pre_ln": ["-a", "0"], "mix_ln_scaled_embed": ["-a", "0.34", "-E", "1"], "deepnorm": ["-n", "deepnorm"],
            "deepnorm_paper": ["-n", "deepnorm_paper"]}
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def run(*cmd, ok=True):
    """Runs cmd; returns its output (stdout and stderr). ok: it must exit 0; False: non-zero."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    out = p.stdout + p.stderr
    if (p.returncode == 0) != ok:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{out}")
    return out


def python(script, *args, ok=True):
    return run(sys.executable, f"scripts/{script}", *args, ok=ok)


def refuses(pattern, script, *args):
    """The script exits non-zero with a one-line error containing pattern."""
    out = python(script, *args, ok=False).strip()
    assert pattern in out and len(out.splitlines()) == 1, f"expected one line with {pattern!r}, got:\n{out}"


def checkpoint_of(variant):
    return f"{TMP}/{variant}/ckpt_00000002.bin"


def setup():
    """A random-token shard and a checkpoint of each variant after 2 steps."""
    python("make_random_shard.py", "--out", f"{TMP}/random.bin", "--tokens", "20000", "--vocab-size", "256")
    for name, flags in VARIANTS.items():
        run("./train_mixln_cpu", *SHAPE, *flags, "-i", f"{TMP}/random.bin", "-b", "2", "-t", "32", "-d", "64",
            "-x", "2", "-o", f"{TMP}/{name}")


def tiny_config(**kw):
    return ModelConfig(**{**dict(vocab_size=16, max_seq_len=8, n_layer=2, n_head=2, d_model=4, d_ffn=6), **kw})


def random_tensors(config, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in param_shapes(config)}


# ---- the checkpoint format ----

@test
def reads_the_trainers_checkpoint():
    ck = read_checkpoint(checkpoint_of("mix_ln_scaled_embed"))
    c = ck.config
    assert (c.vocab_size, c.max_seq_len, c.n_layer, c.n_head, c.d_model, c.d_ffn) == (256, 32, 3, 2, 48, 80), c
    assert (c.norm_scheme, c.alpha, c.scaled_embed, c.rope_theta, c.norm_eps) == (0, 0.34, True, 10000.0, 1e-6), c
    assert ck.step == 2 and ck.has_moments and ck.version == 3
    tensors = ck.tensors()
    assert [(n, t.shape) for n, t in tensors.items()] == param_shapes(c)
    assert np.all(tensors["norm_f"] != 1.0), "the final norm's weights were not trained"


@test
def the_python_layout_finds_each_tensor_where_the_trainer_put_it():
    # One step that moves nothing (lr 1e-30) leaves the trainer's initialization, whose statistics tell
    # the tensors apart: the paper code's DeepNorm draws Xavier-normal with gain (8L)^(1/4) for v, o
    # and the MLP, 1 for q and k, over fans 2C (attention) and C + F (MLP); the norm weights are 1.
    run("./train_mixln_cpu", *SHAPE, "-n", "deepnorm_paper", "-i", f"{TMP}/random.bin", "-b", "2", "-t", "32",
        "-x", "1", "-l", "1e-30", "-o", f"{TMP}/init")
    ck = read_checkpoint(f"{TMP}/init/ckpt_00000001.bin")  # also checks that the padding is zero
    C, F, L = ck.config.d_model, ck.config.d_ffn, ck.config.n_layer
    gain, attention, mlp = (8 * L) ** 0.25, math.sqrt(2 / (2 * C)), math.sqrt(2 / (C + F))
    expected_std = {"wte": math.sqrt(0.4), "wq": attention, "wk": attention, "wv": gain * attention, "wo": gain * attention,
                    "wgate": gain * mlp, "wup": gain * mlp, "wdown": gain * mlp, "lm_head": 0.02}
    for name, t in ck.tensors().items():
        if name.startswith("norm"):
            assert np.all(t == 1.0), f"{name} is not the trainer's norm weights"
        else:  # >= 6912 samples: the sample std is within 1% of the true one (1 sigma); 5% tells them apart
            assert abs(t.std() / expected_std[name] - 1) < 0.05, (name, t.std(), expected_std[name])


@test
def writes_version_3_with_the_crc_of_the_file_with_slot_27_zero():
    path = f"{TMP}/written.bin"
    config = tiny_config(norm_scheme=1, alpha=0.5, scaled_init=True, rope_theta=500000.0)
    tensors = random_tensors(config)
    write_checkpoint(path, config, tensors)
    data = bytearray(open(path, "rb").read())
    h = np.frombuffer(bytes(data[:HEADER_BYTES]), dtype="<i8")
    assert bytes(data[:8]) == b"MIXLNCKP" and h[1] == 3 and h[14] == num_params(config)
    assert list(h[15:27]) == [0] * 12 and list(h[28:]) == [0] * 36, "train-state slots must be zero"
    crc = int(h[27])
    data[27 * 8:28 * 8] = bytes(8)
    assert crc == zlib.crc32(bytes(data)), (crc, zlib.crc32(bytes(data)))
    ck = read_checkpoint(path)
    assert ck.version == 3 and ck.config == config and ck.step == 0 and not ck.has_moments
    assert all(np.array_equal(ck.tensors()[n], t) for n, t in tensors.items())


def corrupt(name, edit):
    """A copy of a written version-3 checkpoint changed by edit(bytearray)."""
    write_checkpoint(f"{TMP}/good.bin", tiny_config(), random_tensors(tiny_config()))
    data = bytearray(open(f"{TMP}/good.bin", "rb").read())
    edit(data)
    path = f"{TMP}/{name}.bin"
    open(path, "wb").write(bytes(data))
    return path


def set_slot(slot, value):
    def edit(data):
        data[8 * slot:8 * slot + 8] = int(value).to_bytes(8, "little", signed=True)
    return edit


@test
def refuses_bad_checkpoints_naming_the_file():
    def flip_payload_bit(data):
        data[HEADER_BYTES + 5] ^= 1

    def nonzero_padding(data):  # gate's first padded row (6 of 64) in layer 1, with a CRC that matches
        C, layout = 4, param_layout(tiny_config())
        at = HEADER_BYTES + 4 * (layout.layers_begin + layout.layer_stride + 4 * C * C + 6 * C + 1)
        data[at:at + 4] = np.float32(1e-30).tobytes()
        set_slot(27, 0)(data)
        set_slot(27, zlib.crc32(bytes(data)))(data)
    cases = [
        ("missing", "cannot open", None),
        ("short", "truncated header", lambda d: d.__delitem__(slice(100, None))),
        ("magic", "bad magic", lambda d: d.__setitem__(slice(0, 8), b"NOTMIXLN")),
        ("version", "unsupported version 4", set_slot(1, 4)),
        ("version_2", "version 2: the parameter layout changed in version 3", set_slot(1, 2)),
        ("version_1", "scripts/upgrade_checkpoint.py OLD NEW", set_slot(1, 1)),
        ("scheme", "unknown norm scheme 7", set_slot(8, 7)),
        ("count", "parameter count 5 does not match", set_slot(14, 5)),
        ("truncated", "(truncated)", lambda d: d.__delitem__(slice(-4, None))),
        ("trailing", "size mismatch", lambda d: d.extend(b"xxxx")),
        ("crc", "CRC-32 mismatch", flip_payload_bit),
        ("padding", "layer 1's MLP padding (units 6..63 of gate, up and down) is not zero", nonzero_padding),
    ]
    for name, pattern, edit in cases:
        path = f"{TMP}/{name}.bin" if edit is None else corrupt(name, edit)
        refuses(f"checkpoint '{path}': ", "export_hf.py", path, f"{TMP}/refused_hf")
        refuses(pattern, "export_hf.py", path, f"{TMP}/refused_hf")
    nan = random_tensors(tiny_config())
    nan["wup"][1, 2, 3] = np.nan
    write_checkpoint(f"{TMP}/nan.bin", tiny_config(), nan)
    refuses(f"checkpoint '{TMP}/nan.bin': tensor wup of layer 1 holds NaN", "export_hf.py", f"{TMP}/nan.bin", f"{TMP}/refused_hf")
    write_checkpoint(f"{TMP}/heads.bin", tiny_config(n_head=3), random_tensors(tiny_config(n_head=3)))
    refuses("d_model 4 is not a multiple of n_head 3", "export_hf.py", f"{TMP}/heads.bin", f"{TMP}/refused_hf")
    assert not os.path.exists(f"{TMP}/refused_hf/config.json")


# ---- export and import ----

def llama_names(n_layer, post_ln_layers):
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(n_layer):
        norms = ("post_attention_layernorm", "post_feedforward_layernorm") if i < post_ln_layers else \
                ("input_layernorm", "post_attention_layernorm")
        names |= {f"model.layers.{i}.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                           "mlp.down_proj") + norms}
    return names


def read_back(hf_dir):
    """{name: numpy array} of an export, read with the safetensors package."""
    index = f"{hf_dir}/model.safetensors.index.json"
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for file in files:
        with safe_open(f"{hf_dir}/{file}", framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}, f.metadata()
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


@test
def pre_ln_exports_as_plain_llama():
    python("export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/pre_ln_hf")
    hf = json.load(open(f"{TMP}/pre_ln_hf/config.json"))
    want = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 48,
            "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 2,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 32}
    assert {k: hf.get(k) for k in want} == want, hf
    assert hf["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert "auto_map" not in hf and not os.path.exists(f"{TMP}/pre_ln_hf/modeling_mixln.py")
    tensors = read_back(f"{TMP}/pre_ln_hf")
    assert set(tensors) == llama_names(3, 0), sorted(set(tensors) ^ llama_names(3, 0))
    shapes = {"model.embed_tokens.weight": (256, 48), "lm_head.weight": (256, 48), "model.norm.weight": (48,),
              "model.layers.2.self_attn.q_proj.weight": (48, 48), "model.layers.0.mlp.gate_proj.weight": (80, 48),
              "model.layers.1.mlp.down_proj.weight": (48, 80), "model.layers.1.input_layernorm.weight": (48,)}
    assert {n: tensors[n].shape for n in shapes} == shapes
    assert all(t.dtype == np.float32 for t in tensors.values())
    ck = read_checkpoint(checkpoint_of("pre_ln")).tensors()
    assert np.array_equal(tensors["model.layers.1.self_attn.k_proj.weight"], ck["wk"][1])
    assert np.array_equal(tensors["model.layers.2.post_attention_layernorm.weight"], ck["norm_b"][2])
    assert json.load(open(f"{TMP}/pre_ln_hf/generation_config.json"))["eos_token_id"] is None


@test
def mix_ln_and_deepnorm_export_with_their_modeling_code():
    for variant, post, s, e in (("mix_ln_scaled_embed", 1, 1.0, math.sqrt(48)), ("deepnorm", 3, 6 ** 0.25, 1.0)):
        out = f"{TMP}/{variant}_hf"
        python("export_hf.py", checkpoint_of(variant), out)
        hf = json.load(open(f"{out}/config.json"))
        assert hf["model_type"] == "mixln" and hf["architectures"] == ["MixLNForCausalLM"], hf
        assert hf["auto_map"] == {"AutoConfig": "configuration_mixln.MixLNConfig",
                                  "AutoModelForCausalLM": "modeling_mixln.MixLNForCausalLM"}
        assert (hf["num_post_ln_layers"], hf["residual_scale"], hf["embedding_scale"]) == (post, s, e), hf
        assert hf["norm_scheme"] == ("deepnorm" if variant == "deepnorm" else "mixln")
        assert os.path.exists(f"{out}/modeling_mixln.py") and os.path.exists(f"{out}/configuration_mixln.py")
        tensors = read_back(out)
        assert set(tensors) == llama_names(3, post), sorted(set(tensors) ^ llama_names(3, post))
        ck = read_checkpoint(checkpoint_of(variant)).tensors()
        assert np.array_equal(tensors["model.layers.0.post_attention_layernorm.weight"], ck["norm_a"][0])
        assert np.array_equal(tensors["model.layers.0.post_feedforward_layernorm.weight"], ck["norm_b"][0])


@test
def the_paper_codes_deepnorm_exports_with_residual_weight_sqrt_8():
    config = tiny_config(norm_scheme=2)
    write_checkpoint(f"{TMP}/scheme2.bin", config, random_tensors(config))
    python("export_hf.py", f"{TMP}/scheme2.bin", f"{TMP}/scheme2_hf")
    hf = json.load(open(f"{TMP}/scheme2_hf/config.json"))
    assert (hf["norm_scheme"], hf["num_post_ln_layers"], hf["residual_scale"]) == ("deepnorm_paper", 2, math.sqrt(8)), hf
    python("import_hf.py", f"{TMP}/scheme2_hf", f"{TMP}/scheme2_imported.bin")
    assert_same_weights(f"{TMP}/scheme2.bin", f"{TMP}/scheme2_imported.bin")


@test
def upgrade_converts_a_version_2_file_of_the_old_layout_keeping_moments_and_train_state():
    config = tiny_config()  # d_ffn 6, stored 64 wide
    arrays = [random_tensors(config, seed) for seed in (1, 2, 3)]  # params, m, v in the model's shapes
    # the old layout, written independently: each tensor's layers back to back, in ParamTensor order, unpadded
    payload = b"".join(np.concatenate([a[name].ravel() for name, _ in param_shapes(config)]).astype("<f4").tobytes()
                       for a in arrays)
    h = checkpoint_header(config, has_moments=True)
    h[1], h[14] = 2, sum(math.prod(shape) for _, shape in param_shapes(config))
    h[15], h[17:26], h[28] = 7, [1, 2, 3, 99, 2, 8, 16, 1, 5], 4242
    h[27] = zlib.crc32(h.tobytes() + payload)
    old, new = f"{TMP}/old_v2.bin", f"{TMP}/upgraded.bin"
    open(old, "wb").write(h.tobytes() + payload)
    refuses(f"checkpoint '{old}': version 2: the parameter layout changed in version 3", "export_hf.py", old, f"{TMP}/refused_hf")
    python("upgrade_checkpoint.py", old, new)
    ck = read_checkpoint(new)
    assert ck.version == 3 and ck.has_moments and ck.header[14] == num_params(config)
    assert list(ck.header[15:27]) == list(h[15:27]) and ck.header[28] == 4242, "train state or run id changed"
    for array, expected in zip(ck.arrays, arrays):
        assert all(np.array_equal(ck.tensors(array)[name], t) for name, t in expected.items())
        assert np.count_nonzero(array) == num_model_parameters(config), "the padding is not zero"
    # moments in ZeRO-1 optimizer shard files: refused, unless only the weights are wanted
    sharded = bytearray(open(old, "rb").read())
    set_slot(26, 2)(sharded)
    set_slot(16, 0)(sharded)
    set_slot(27, 0)(sharded)
    del sharded[HEADER_BYTES + 4 * int(h[14]):]
    set_slot(27, zlib.crc32(bytes(sharded)))(sharded)
    open(old, "wb").write(bytes(sharded))
    refuses("its Adam moments are in 2 optimizer shard files", "upgrade_checkpoint.py", old, new)
    python("upgrade_checkpoint.py", old, new, "--weights-only")
    ck = read_checkpoint(new)
    assert not ck.has_moments and ck.step == 0 and ck.header[28] == 0
    assert all(np.array_equal(ck.tensors()[name], t) for name, t in arrays[0].items())


def assert_same_weights(a, b):
    pa, pb = read_checkpoint(a), read_checkpoint(b)
    assert pa.config == pb.config, (pa.config, pb.config)
    assert np.array_equal(pa.params.view(np.uint32), pb.params.view(np.uint32)), f"{a} and {b} differ"


@test
def export_then_import_gives_the_same_weights_bit_for_bit():
    for variant in VARIANTS:
        python("export_hf.py", checkpoint_of(variant), f"{TMP}/{variant}_rt")
        python("import_hf.py", f"{TMP}/{variant}_rt", f"{TMP}/{variant}_imported.bin")
        assert_same_weights(checkpoint_of(variant), f"{TMP}/{variant}_imported.bin")
        ck = read_checkpoint(f"{TMP}/{variant}_imported.bin")
        assert ck.version == 3 and ck.step == 0 and not ck.has_moments


@test
def sharded_export_has_an_index_and_round_trips():
    out = f"{TMP}/sharded_hf"
    python("export_hf.py", checkpoint_of("deepnorm"), out, "--max-shard-mb", "0.05")
    index = json.load(open(f"{out}/model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors", files
    assert not os.path.exists(f"{out}/model.safetensors")
    tensors = read_back(out)
    assert set(tensors) == set(index["weight_map"]) == llama_names(3, 3)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    python("import_hf.py", out, f"{TMP}/sharded.bin")
    assert_same_weights(checkpoint_of("deepnorm"), f"{TMP}/sharded.bin")


@test
def bf16_export_rounds_to_nearest_even_and_imports():
    python("export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/bf16_hf", "--dtype", "bf16")
    assert json.load(open(f"{TMP}/bf16_hf/config.json"))["torch_dtype"] == "bfloat16"
    with safe_open(f"{TMP}/bf16_hf/model.safetensors", framework="numpy") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}
    python("import_hf.py", f"{TMP}/bf16_hf", f"{TMP}/bf16.bin")
    exact = read_checkpoint(checkpoint_of("pre_ln")).params.astype(np.float64)
    rounded = read_checkpoint(f"{TMP}/bf16.bin").params
    assert np.all(rounded.view(np.uint32) & 0xFFFF == 0), "imported values are not bfloat16"
    # the MLP's zero padding stays zero; the rest rounds to nearest: within half a bfloat16 ulp (2^-8
    # relative to the power of two below |x|)
    zero = exact == 0
    assert np.all(rounded[zero] == 0)
    exact, rounded = exact[~zero], rounded[~zero]
    half_ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 8)
    assert np.all(np.abs(rounded - exact) <= half_ulp), np.max(np.abs(rounded - exact) / half_ulp)


@test
def tokenizer_of_byte_data_and_of_a_tokenizer_json():
    data = f"{TMP}/text"
    os.makedirs(data, exist_ok=True)
    open(f"{data}/text.txt", "w").write("In the beginning.\n\nNaïve café, 日本語.\n\nThe end.\n\nAgain.\n")
    python("prepro_text.py", "--val-every", "2", "--out", f"{data}/bytes", f"{data}/text.txt")
    python("export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/tok_bytes", "--tokenizer", f"{data}/bytes")
    tok = Tokenizer.from_file(f"{TMP}/tok_bytes/tokenizer.json")
    text = "Naïve café, 日本語 — and God said"
    assert tok.encode(text).ids == list(text.encode()), tok.encode(text).ids
    assert tok.decode(list(text.encode())) == text
    python("prepro_text.py", "--tokenizer", "bpe", "--vocab-size", "280", "--val-every", "2", "--out", f"{data}/bpe",
           f"{data}/text.txt")
    python("export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/tok_bpe", "--tokenizer", f"{data}/bpe/tokenizer.json")
    eot = Tokenizer.from_file(f"{data}/bpe/tokenizer.json").token_to_id("<|endoftext|>")
    assert json.load(open(f"{TMP}/tok_bpe/tokenizer_config.json"))["eos_token"] == "<|endoftext|>"
    assert json.load(open(f"{TMP}/tok_bpe/config.json"))["eos_token_id"] == eot
    assert json.load(open(f"{TMP}/tok_bpe/generation_config.json"))["eos_token_id"] == eot
    refuses("is neither a tokenizer.json nor", "export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/tok_bad",
            "--tokenizer", f"{TMP}/no_such_dir")
    with open(f"{data}/bytes/vocab.bin", "ab") as f:
        f.write(b"x")
    refuses(f"{data}/bytes/vocab.bin: ", "export_hf.py", checkpoint_of("pre_ln"), f"{TMP}/tok_bad",
            "--tokenizer", f"{data}/bytes")


def hf_dir_with(name, config_edit=None, tensors_edit=None):
    """A copy of the plain-LLaMA export with its config.json or its tensors changed."""
    out = f"{TMP}/bad_{name}"
    shutil.copytree(f"{TMP}/pre_ln_hf", out, dirs_exist_ok=True)
    if config_edit:
        hf = json.load(open(f"{out}/config.json"))
        config_edit(hf)
        json.dump(hf, open(f"{out}/config.json", "w"))
    if tensors_edit:
        from safetensors.numpy import save_file
        tensors = read_back(out)
        tensors_edit(tensors)
        save_file(tensors, f"{out}/model.safetensors", metadata={"format": "pt"})
    return out


@test
def import_refuses_what_this_model_does_not_have():
    def drop(name):
        return lambda t: t.pop(name)
    cases = [
        ("gqa", "grouped-query attention (1 key/value heads for 2 heads)", lambda h: h.update(num_key_value_heads=1), None),
        ("tied", "tied embeddings", lambda h: h.update(tie_word_embeddings=True), None),
        ("attention_bias", "biases (attention_bias)", lambda h: h.update(attention_bias=True), None),
        ("mlp_bias", "biases (mlp_bias)", lambda h: h.update(mlp_bias=True), None),
        ("rope", "RoPE scaling 'linear'", lambda h: h.update(rope_parameters={"rope_type": "linear", "factor": 2.0}), None),
        ("rope4", "RoPE scaling 'dynamic'", lambda h: h.update(rope_scaling={"type": "dynamic", "factor": 2.0}), None),
        ("act", "activation 'gelu'", lambda h: h.update(hidden_act="gelu"), None),
        ("arch", "model_type 'gpt2'", lambda h: h.update(model_type="gpt2"), None),
        ("field", "no field 'intermediate_size'", lambda h: h.pop("intermediate_size"), None),
        ("bias_tensor", "biases (model.layers.0.self_attn.q_proj.bias",
         None, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(48, np.float32)})),
        ("missing", "tensors missing: model.norm.weight", None, drop("model.norm.weight")),
        ("shape", "has shape (48, 47), the config implies (48, 48)",
         None, lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": np.zeros((48, 47), np.float32)})),
        ("dtype", "has dtype F64", None, lambda t: t.update({"model.norm.weight": np.ones(48)})),
    ]
    for name, pattern, config_edit, tensors_edit in cases:
        refuses(pattern, "import_hf.py", hf_dir_with(name, config_edit, tensors_edit), f"{TMP}/refused.bin")
    assert not os.path.exists(f"{TMP}/refused.bin")
    empty = f"{TMP}/empty_hf"
    os.makedirs(empty, exist_ok=True)
    refuses("cannot read the config", "import_hf.py", empty, f"{TMP}/refused.bin")
    shutil.copy(f"{TMP}/pre_ln_hf/config.json", empty)
    refuses("has no model.safetensors", "import_hf.py", empty, f"{TMP}/refused.bin")
    data = open(f"{TMP}/pre_ln_hf/model.safetensors", "rb").read()
    for name, bad in (("truncated", data[:-4]), ("garbage", b"\xff" * 64)):
        open(f"{empty}/model.safetensors", "wb").write(bad)
        refuses(f"{empty}/model.safetensors: ", "import_hf.py", empty, f"{TMP}/refused.bin")


# ---- the C++ side ----

@test
def logits_tool_agrees_with_the_trainers_loss():
    """The trainer's step-1 loss on a shard of one sample (T + 1 tokens) is the mean cross-entropy of the
    first T logits that logits_mixln_cpu computes for those tokens."""
    T = 24
    tokens, _ = read_shard(f"{TMP}/random.bin")
    write_shard(f"{TMP}/one_sample.bin", tokens[:T + 1], 256)
    run("./logits_mixln_cpu", checkpoint_of("mix_ln_scaled_embed"), f"{TMP}/one_sample.bin", f"{TMP}/logits.f32")
    logits = np.fromfile(f"{TMP}/logits.f32", dtype="<f4").reshape(T + 1, 256).astype(np.float64)[:T]
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    loss = -log_probs[np.arange(T), tokens[1:T + 1].astype(np.int64)].mean()
    out = run("./train_mixln_cpu", "-f", checkpoint_of("mix_ln_scaled_embed"), "-i", f"{TMP}/one_sample.bin",
              "-b", "1", "-t", str(T), "-d", str(T), "-x", "1", "-o", f"{TMP}/one_step")
    trained = float(re.search(r"step\s+1/1 \| loss ([0-9.]+)", out).group(1))
    assert abs(loss - trained) < 2e-6, (loss, trained)
    run("./logits_mixln_cpu", checkpoint_of("pre_ln"), f"{TMP}/no_such.bin", f"{TMP}/x.f32", ok=False)


def validation_loss(checkpoint):
    """The trainer's evaluate-only run (-f CKPT -x 0 -j VAL): its validation loss line."""
    printed = run("./train_mixln_cpu", "-f", checkpoint, "-x", "0", "-j", f"{TMP}/random.bin", "-b", "2", "-t", "32", "-m", "3")
    return re.search(r"val loss [0-9.]+", printed).group(0)


@test
def the_trainer_starts_from_and_evaluates_an_imported_checkpoint():
    for variant in VARIANTS:
        imported = validation_loss(f"{TMP}/{variant}_imported.bin")
        assert imported == validation_loss(checkpoint_of(variant)), variant
    out = run("./train_mixln_cpu", "-f", f"{TMP}/mix_ln_scaled_embed_imported.bin", "-i", f"{TMP}/random.bin",
              "-b", "2", "-t", "32", "-d", "64", "-x", "2", "-o", f"{TMP}/from_imported")
    assert "step      2/2" in out, out
    resumed = run("./train_mixln_cpu", "-r", f"{TMP}/mix_ln_scaled_embed_imported.bin", "-i", f"{TMP}/random.bin",
                  "-b", "2", "-t", "32", "-d", "64", "-x", "2", "-o", f"{TMP}/resumed_imported", ok=False)
    assert "error" in resumed, resumed


def main():
    passed = failed = 0
    try:
        for fn in [setup] + TESTS:
            name = fn.__name__.replace("_", " ")
            try:
                fn()
                passed += fn is not setup
                print(f"  ok    {name}")
            except Exception:
                failed += 1
                print(f"  FAIL  {name}")
                print("\n".join("        " + line for line in traceback.format_exc().splitlines()[-15:]))
                if fn is setup:
                    break
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"test_hf_bridge: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
