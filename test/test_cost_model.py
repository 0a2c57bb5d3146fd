#!/usr/bin/env python3
"""Checks of dev/cost_model.py (make test): its kernel list against the code's own totals, its options.

The GEMMs it lists for one micro-batch, counted with the model's ffn, must add up to the trainer's MFU
formula (core/config.h's flops_per_token) less the norm weights' share: 6*(N - V*d) - 6*(2*L*d + d)
FLOPs per token (N - V*d holds the LM head's V*d, which the head's three GEMMs count); its causal
attention to 7*L*T*d (the formula's 6*L*T*d with the backward at 2.5x the forward, as FlashAttention
counts); its N to the parameter counts test/test_presets.cpp checks against num_model_parameters and
docs/model.md prints. A planted wrong count (a q|k|v GEMM of 2d instead of 3d) must fail these checks.
"""
import json
import os
import re
import subprocess
import sys
import traceback

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "dev"))
import cost_model as cm  # noqa: E402

FACTS = cm.code_facts()
PAPER = ["71m", "130m", "250m", "350m", "1b"]


def model(name):
    return cm.Model(name, ffn_align=FACTS["ffn_align"], **FACTS["presets"][name])


def count_problems(m, T=256, B=2, swiglu_epilogue=False):
    """Where the kernel list disagrees with the code's totals: a list of messages (empty: agrees)."""
    ks = cm.micro_batch_kernels(m, B, T, F=m.F, swiglu_epilogue=swiglu_epilogue)
    tokens = B * T
    gemm = sum(k.flops for k in ks if k.kind == "gemm") / tokens
    attention = sum(k.flops for k in ks if k.kind == "attention") / tokens
    N, V, C, L = m.params(), m.V, m.C, m.L
    problems = []
    want_gemm = 6.0 * (N - V * C) - 6.0 * (2 * L * C + C)
    if gemm != want_gemm:
        problems.append("%s: GEMM FLOPs/token %.0f, the MFU formula's less the norms' %.0f" % (m.name, gemm, want_gemm))
    if abs(attention - 7.0 * L * T * C) > 1e-6 * attention:
        problems.append("%s: attention FLOPs/token %.0f, 7*L*T*d %.0f" % (m.name, attention, 7.0 * L * T * C))
    if abs(gemm + 6.0 * (2 * L * C + C) + attention * 6 / 7 - m.mfu_flops_per_token(T)) > 1e-9 * gemm:
        problems.append("%s: the parts do not add up to the MFU formula" % m.name)
    return problems


def test_presets_parsed_from_the_code():
    assert set(PAPER) <= set(FACTS["presets"]), FACTS["presets"]
    assert FACTS["defaults"] == dict(micro_batch=32, seq_len=256, total_batch=131072), FACTS["defaults"]
    assert FACTS["peak"] == 989.4e12, FACTS["peak"]


def test_parameter_counts_match_the_codes_checked_literals():
    text = open(os.path.join(ROOT, "test/test_presets.cpp")).read()
    literals = {m[0]: int(m[1]) for m in re.findall(r'\{"(\w+)", \d+, \d+, \d+, \d+, (\d+)\}', text)}
    docs = open(os.path.join(ROOT, "docs/model.md")).read()
    printed = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"\| `(\w+)` \|[^\n]*\| ([0-9,]+)", docs)}
    assert set(PAPER) <= set(literals), literals
    for name in PAPER:
        assert model(name).params() == literals[name] == printed[name], (name, model(name).params(), literals, printed)


def test_mfu_formula_is_the_trainers():
    config = open(os.path.join(ROOT, "core/config.h")).read()
    assert "6.0 * (double)(num_model_parameters(cfg) - (long)cfg.vocab_size * cfg.d_model) + " \
           "6.0 * cfg.n_layer * (double)T * cfg.d_model" in config
    m = model("130m")
    assert m.mfu_flops_per_token(256) == 6.0 * (134105856 - 32000 * 768) + 6.0 * 12 * 256 * 768


def test_kernel_counts_agree_with_the_code_for_every_preset():
    for name in PAPER + ["tiny"]:
        problems = count_problems(model(name))
        assert not problems, problems


def test_swiglu_epilogue_what_if():
    # the same GEMM FLOPs, without the swiglu kernels; faster at cuBLASLt's rate, slower at a low one
    for name in PAPER:
        assert not count_problems(model(name), swiglu_epilogue=True), name
    names = lambda ks: {k.name for k in ks}
    m = model("130m")
    assert {"swiglu", "swiglu backward"} <= names(cm.micro_batch_kernels(m, 2, 256))
    assert not {"swiglu", "swiglu backward"} & names(cm.micro_batch_kernels(m, 2, 256, swiglu_epilogue=True))
    base = json.loads(run("--json", "--preset", "130m", "--gpus", "").stdout)
    fast = json.loads(run("--json", "--preset", "130m", "--gpus", "", "--swiglu-epilogue-tflops", "800").stdout)
    slow = json.loads(run("--json", "--preset", "130m", "--gpus", "", "--swiglu-epilogue-tflops", "100").stdout)
    assert base["inputs"]["swiglu_epilogue_tflops"] is None and fast["inputs"]["swiglu_epilogue_tflops"] == 800
    b, f, s = (x["presets"][0]["step_ms"] for x in (base, fast, slow))
    assert f < b < s, (f, b, s)
    assert "WHAT-IF" in run("--preset", "130m", "--gpus", "", "--swiglu-epilogue-tflops", "650").stdout


def test_matmul_backward_products_together():
    # One GEMM through the tile schedule takes what wave_efficiency gives it; matmul_backward's two at
    # once take no less than the longer alone or all their FLOPs at the full rate, and no more than
    # both in turn; at 130m the gate|up pair's dW (4096 x 768: 192 tiles, 1.45 waves) fills the idle SMs.
    c = cm.Ceilings(3000, 800, 150, 75, 0.85, 1.0)
    m = model("130m")
    pairs = [k for k in cm.micro_batch_kernels(m, 32, 256) if k.parts]
    assert [k.name for k in pairs[:4]] == ["LM head dW beside dinp", "down dW beside dinp", "gate|up dW beside dinp",
                                           "o dW beside dinp"], [k.name for k in pairs[:4]]
    for k in pairs:
        dW, dinp = k.parts
        assert dW.name.endswith(" dW") and dinp.name.endswith(" dinp") and k.launches == 2
        for p in k.parts:
            assert abs(cm.together_seconds((p,), c) - cm.kernel_seconds(p, c)) <= 1e-12, p.name
        alone = [cm.kernel_seconds(p, c) for p in k.parts]
        together = cm.kernel_seconds(k, c)
        assert max(alone) <= together <= sum(alone) + 1e-12, (k.name, alone, together)
        assert together >= k.flops / c.gemm - 1e-12, k.name
    gate_up = pairs[2]
    alone = sum(cm.kernel_seconds(p, c) for p in gate_up.parts)
    assert cm.wave_efficiency(*gate_up.parts[0].shape) < 0.75
    assert cm.kernel_seconds(gate_up, c) < 0.9 * alone, (cm.kernel_seconds(gate_up, c), alone)


def test_against_dev_log():
    # dev/run_all.log's lines: each product against the wave efficiency of its own (m, n, k); only the
    # trainer's attention (version 4) at T 256 against the assumed rates
    log = "\n".join([
        "ceiling gemm: 790.0 TFLOP/s (cuBLASLt bf16 8192^3, fp32 accumulation)",
        "matmul_forward 130m:qkv:16384x2304x768 v1: 600.0 TFLOP/s (75.9% of gemm) 96.6 us kernel alone, 97.0 us",
        "matmul_dW 130m:gate_up:16384x4096x768 v2: 450.0 TFLOP/s (57.0% of gemm) 229.1 us kernel alone, 230.0 us",
        "matmul_dinp 1b:down:16384x2048x5504 v1: 640.0 TFLOP/s (81.0% of gemm) 1.0 us kernel alone, 1.0 us",
        "attention_forward 130m:B64,T256,NH12,hd64 v4: 120.5 TFLOP/s (15.3% of gemm) 10.0 us kernel alone, 11.0 us",
        "attention_backward 130m:B64,T256,NH12,hd64 v2: 60.0 TFLOP/s (7.6% of gemm) 10.0 us kernel alone, 11.0 us",
        "attention_backward 130m:B64,T256,NH12,hd64 v4: 70.0 TFLOP/s (8.9% of gemm) 10.0 us kernel alone, 11.0 us",
        "attention_forward 130m:B16,T1024,NH12,hd64 v4: 220.0 TFLOP/s (27.8% of gemm) 10.0 us kernel alone, 11.0 us",
        "rmsnorm_forward 130m:16384x768 v1: 2712.3 GB/s (90.4% of copy) 18.5 us with write-back, 16.0 us alone",
        "swiglu_gemm_forward 130m:16384x768x2048 v2: 480.0 TFLOP/s (60.8% of gemm) 10.0 us kernel alone, 11.0 us",
        "swiglu_gemm_backward 130m:16384x768x2048 v2: 450.0 TFLOP/s (57.0% of gemm) 10.0 us kernel alone, 11.0 us",
        "swiglu_gemm_backward 1b:16384x2048x5504 v2: 100.0 TFLOP/s (12.7% of gemm) 10.0 us kernel alone, 11.0 us"])
    c = cm.Ceilings(3000, 800, 150, 75, 0.85, 1.0)
    rows = cm.against_dev(log, c)
    assert [(r[0], r[2]) for r in rows] == [("matmul_forward", 1), ("matmul_dW", 2), ("matmul_dinp", 1),
                                           ("attention_forward", 4), ("attention_backward", 4)], rows
    assert rows[0][3:5] == (0.759, cm.wave_efficiency(16384, 2304, 768))
    assert rows[1][3:5] == (0.57, cm.wave_efficiency(4096, 768, 16384))  # dW (OC, C) with k = tokens
    assert cm.wave_efficiency(4096, 768, 16384) != cm.wave_efficiency(16384, 4096, 768)
    assert rows[2][4] == cm.wave_efficiency(16384, 5504, 2048)  # dinp (tokens, C) with k = OC
    assert rows[3][3:5] == (120.5, 150) and rows[4][3:5] == (70.0, 75)
    path = os.path.join(ROOT, "build", "test_cost_model_dev.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(log)
    text = run("--against-dev", path).stdout
    assert "| matmul_dW | 130m:gate_up:16384x4096x768 | 2 | 57% of the 8192^3 rate | 73% of the 8192^3 rate | 0.78 |" in text, text
    # dev/swiglu_gemm version 2 at 130m: the lower of forward and backward (57%), the what-if at 57% of 800
    assert cm.swiglu_gemm_fraction(log) == 0.57 and cm.swiglu_gemm_fraction(log.replace("backward 130m", "x")) is None
    want = cm.predict(model("130m"), 256, 32, 131072, cm.Ceilings(3000, 800, 150, 75, 0.85, 1.0, 0.57 * 800),
                      FACTS["peak"])["tokens_per_s"]
    assert "(--swiglu-epilogue-tflops 456) predicts 130m at %.0fK tokens/s" % (want / 1e3) in text, text
    with open(path, "w") as f:
        f.write(log.splitlines()[-1])
    assert "no dev/matmul" in run("--against-dev", path).stdout
    os.remove(path)


def test_a_planted_wrong_count_fails():
    real = cm.gemm

    def planted(name, m, n, k, *args, **kw):  # the q|k|v product as if it were 2d wide
        if name == "q|k|v":
            n = 2 * n // 3
        return real(name, m, n, k, *args, **kw)
    cm.gemm = planted
    try:
        problems = count_problems(model("130m"))
    finally:
        cm.gemm = real
    assert problems and "GEMM FLOPs/token" in problems[0], problems


def test_padding_only_adds_executed_flops():
    m = model("1b")
    assert m.Fs == 5504 and m.F == 5461
    ks_model = cm.micro_batch_kernels(m, 1, 256, F=m.F)
    ks_run = cm.micro_batch_kernels(m, 1, 256)
    assert sum(k.flops for k in ks_run) > sum(k.flops for k in ks_model)


def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "dev/cost_model.py"), *args], capture_output=True,
                          text=True)


def test_json_output_and_measured_ceilings():
    a = json.loads(run("--json", "--preset", "130m").stdout)
    b = json.loads(run("--json", "--preset", "130m", "--copy-gbs", "6000", "--gemm-tflops", "1600",
                      "--attn-fwd-tflops", "300", "--attn-bwd-tflops", "150").stdout)
    assert a["predicted"] is True and a["inputs"]["copy_gbs"] == 3000 and b["inputs"]["gemm_tflops"] == 1600
    pa, pb = a["presets"][0], b["presets"][0]
    # everything but the launches is twice as fast
    launches = pa["shares"]["launches"] * pa["step_ms"]
    assert abs(pb["step_ms"] - (pa["step_ms"] - launches) / 2 - launches) < 1e-6 * pa["step_ms"], (pa, pb)
    assert abs(sum(pa["shares"].values()) - 1) < 1e-9
    mfu = model("130m").mfu_flops_per_token(256) * pa["tokens_per_s"] / 989.4e12
    assert abs(pa["mfu"] - mfu) < 1e-12
    gpus = [r["gpus"] for r in a["data_parallel"]]
    assert gpus == [8, 16, 32, 64, 128, 256, 512], gpus
    for r in a["data_parallel"]:
        assert r["overlap"]["step_ms"] <= r["no_overlap"]["step_ms"]
        assert r["micro_batch"] * r["accumulation"] * r["gpus"] == 512


def test_csv_and_text_and_errors():
    lines = run("--csv").stdout.splitlines()
    assert lines[0].startswith("preset,parameters,") and [l.split(",")[0] for l in lines[1:]] == PAPER, lines
    text = run("--preset", "1b", "--no-graphs").stdout
    assert "PREDICTED" in text and "| 1b |" in text and "4 us per launch" in text, text
    bad = run("--preset", "2b")
    assert bad.returncode != 0 and "unknown preset 2b" in bad.stderr


def main():
    tests = [v for k, v in globals().items() if k.startswith("test_")]
    passed = failed = 0
    for fn in tests:
        try:
            fn()
            passed += 1
            print("  ok    " + fn.__name__)
        except Exception:
            failed += 1
            print("  FAIL  " + fn.__name__)
            print("\n".join("        " + line for line in traceback.format_exc().splitlines()[-12:]))
    print("test_cost_model: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
