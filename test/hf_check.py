"""`make hf-check`: the exported models in transformers (torch, fp32, CPU) compute this project's model.

For each variant, a model is trained for a few steps on the King James Bible (byte tokens), exported
with scripts/export_hf.py, loaded with AutoModelForCausalLM.from_pretrained, and its logits on 128
real validation tokens are compared with the CPU reference model's (logits_mixln_cpu): the largest
difference, relative to the largest logit, must be at most 1e-5. Pre-LN must load as a plain
LlamaForCausalLM without trust_remote_code. Then a bf16 export must hold exactly torch's bfloat16
rounding of the fp32 weights, and a demo-style model (tiny, alpha 0.25, 300 steps), exported with its
tokenizer, must generate() from a prompt the same greedy text as the trainer's own sampler.
Run by `make hf-check` inside its virtual environment (build/hf-venv), from the repository root.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

sys.path.insert(0, "scripts")
from shard_format import read_shard, write_shard  # noqa: E402

OUT = "build/hf_check"
DATA = "data/kjv"
TOLERANCE = 1e-5
TINY = ["-e", "tiny", "-L", "4", "-C", "64", "-H", "2", "-F", "160"]
# name -> the trainer's model flags
VARIANTS = {
    "Pre-LN (alpha 0)": TINY + ["-a", "0"],
    "Mix-LN alpha 0.25": TINY + ["-a", "0.25"],
    "Mix-LN alpha 0.5": TINY + ["-a", "0.5"],
    "Post-LN (alpha 1)": TINY + ["-a", "1"],
    "DeepNorm": TINY + ["-n", "deepnorm"],
    "DeepNorm of the paper's code": TINY + ["-n", "deepnorm_paper"],
    "scaled embedding, alpha 0.25": TINY + ["-a", "0.25", "-E", "1"],
    "5 layers, d 96, 3 heads, F 200, alpha 0.4": ["-e", "tiny", "-L", "5", "-C", "96", "-H", "3", "-F", "200", "-a", "0.4"],
}


def run(*cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"hf_check: {' '.join(map(str, cmd))} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


def train(name, flags, steps, batch=("-b", "8", "-t", "64", "-d", "512", "-l", "3e-3")):
    out = f"{OUT}/{re.sub(r'[^A-Za-z0-9]+', '_', name)}"
    shutil.rmtree(out, ignore_errors=True)  # the trainer refuses an -o holding an earlier run's files
    run("./train_mixln_cpu", *flags, "-i", f"{DATA}/train.bin", *batch, "-x", steps, "-o", out)
    return out


def load(hf_dir, plain):
    if plain:
        return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, trust_remote_code=True)


def compare_logits(name, flags, tokens):
    run_dir = train(name, flags, 20)
    hf_dir = f"{run_dir}_hf"
    run(sys.executable, "scripts/export_hf.py", run_dir, hf_dir)
    plain = json.load(open(f"{hf_dir}/config.json"))["model_type"] == "llama"
    model = load(hf_dir, plain)
    assert (type(model) is LlamaForCausalLM) == plain, type(model)
    with torch.no_grad():
        hf = model(torch.tensor(tokens.astype(np.int64))[None]).logits[0].numpy()
    run("./logits_mixln_cpu", f"{run_dir}/ckpt_00000020.bin", f"{OUT}/tokens.bin", f"{OUT}/logits.f32")
    ours = np.fromfile(f"{OUT}/logits.f32", dtype="<f4").reshape(hf.shape)
    diff = np.abs(hf - ours).max()
    rel = diff / np.abs(ours).max()
    ok = rel <= TOLERANCE
    print(f"| {name} | {type(model).__name__} | {np.abs(ours).max():.3f} | {diff:.2e} | {rel:.2e} | {'ok' if ok else 'FAIL'} |")
    return ok, model, hf_dir


def check_bf16(model_fp32, run_dir):
    run(sys.executable, "scripts/export_hf.py", run_dir, f"{OUT}/bf16_hf", "--dtype", "bf16")
    bf16 = AutoModelForCausalLM.from_pretrained(f"{OUT}/bf16_hf", dtype=torch.bfloat16)
    ref = model_fp32.state_dict()
    same = all(torch.equal(t, ref[k].to(torch.bfloat16)) for k, t in bf16.state_dict().items())
    print(f"bf16 export: every weight is torch's bfloat16 rounding of the fp32 one: {'ok' if same else 'FAIL'}")
    return same


def check_generate():
    run_dir = train("demo", ["-e", "tiny", "-a", "0.25"], 300, batch=("-b", "16", "-t", "128", "-d", "2048"))
    hf_dir = f"{run_dir}_hf"
    run(sys.executable, "scripts/export_hf.py", run_dir, hf_dir, "--tokenizer", DATA)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=True)  # it reads config.json too
    model = load(hf_dir, plain=False)
    prompt, n = "And God said", 80
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    greedy = model.generate(ids, max_new_tokens=n, do_sample=False)
    hf_text = tokenizer.decode(greedy[0], skip_special_tokens=True)
    sample = run("./train_mixln_cpu", "-f", run_dir, "-x", "0", "-G", n, "-P", prompt, "-T", "0")  # vocab.bin: beside the run's -i
    ours = sample.split("sample (temperature 0):\n", 1)[1].rstrip("\n")
    torch.manual_seed(0)
    sampled = model.generate(ids, max_new_tokens=n, do_sample=True, temperature=0.8, top_k=0)
    print(f"generate(), greedy, from the exported demo-style model:\n  {hf_text!r}")
    print(f"train_mixln_cpu's greedy sample (-x 0 -G {n} -T 0):\n  {ours!r}")
    print(f"generate(), sampled at temperature 0.8:\n  {tokenizer.decode(sampled[0], skip_special_tokens=True)!r}")
    same = hf_text == ours
    print(f"greedy texts identical: {'ok' if same else 'FAIL'}")
    return same


def main():
    hf_logging.disable_progress_bar()
    os.makedirs(OUT, exist_ok=True)
    val, _ = read_shard(f"{DATA}/val.bin")
    tokens = val[1000:1128]
    write_shard(f"{OUT}/tokens.bin", tokens, 256)
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}; "
          f"logits on {tokens.size} validation tokens of {DATA}, fp32 on the CPU")
    print("| model | loaded as | max abs logit | max abs diff | relative | |\n|---|---|---|---|---|---|")
    results = [compare_logits(name, flags, tokens) for name, flags in VARIANTS.items()]
    ok = all(r[0] for r in results)
    pre_ln_model, pre_ln_hf = results[0][1], results[0][2]
    ok &= check_bf16(pre_ln_model, pre_ln_hf.removesuffix("_hf"))
    ok &= check_generate()
    print(f"hf_check: {'all checks passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
