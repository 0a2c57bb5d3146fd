#!/usr/bin/env python3
"""A cost model of train_mixln's training step: PREDICTED step times, not measurements.

For each preset it lists every kernel and GEMM of one step as train_mixln.cu launches them (forward,
cross-entropy, backward per micro-batch; zeroing, gradient norm and AdamW once per step; recompute
off, bf16 with fp32 master weights, gradients and moments), counts their FLOPs and bytes from the
code's shapes (core/config.h's presets, core/cli.h's defaults, ffn stored padded to a multiple of 64),
and turns them into a step time with measured ceilings and stated efficiencies:

  GEMM        FLOPs / (measured bf16 GEMM rate x wave efficiency), at least bytes / copy bandwidth;
              wave efficiency = output tiles of 128x128 / (waves x 132 SMs), outputs of fewer tiles
              than SMs split along k (an assumption about cuBLASLt's choices, not a measurement);
              matmul_backward's two GEMMs run at once (dW on a second stream): their tiles are
              scheduled together on the SMs, dW's first, each SM taking the next tile when it is free
  attention   causal FlashAttention FLOPs (forward 4*T*T*hd/2 per head and sequence, backward 2.5x)
              at an assumed rate (docs/gpu.md predicts 200-300 / 100-170 TFLOP/s at T >= 1024, hd 128;
              at T = 256 this model assumes 150 / 75), at least bytes / copy bandwidth
  memory      bytes read + written / (85% of the measured copy bandwidth), the new kernels' target
  optimizer   the same rate for zeroing the gradients, the gradient norm and AdamW (30 bytes/param)
  launches    a gap per kernel: 1 us with CUDA graphs (-D 1, the default), 4 us without (host launch)

What-if (--swiglu-epilogue-tflops R, not the trainer's code): the gate|up product and the down
product's input gradient as GEMMs of their own at R TFLOP/s x wave efficiency, computing SwiGLU (eq. of
kernels/swiglu.cuh) and its derivative in their epilogues: the two swiglu kernels and their round trips
through memory go; their extra reads and writes count only where they outlast the GEMM's FLOPs.
The rate at which such a GEMM reaches a floor is the question it answers (docs/gpu.md).

MFU uses the trainer's formula: 6*(N - V*d) + 6*L*T*d FLOPs per token over 989.4 TFLOP/s (H100 SXM).

Data parallelism (ZeRO-1, data_parallel.cuh): the paper's global batch (512 x 256) split over G GPUs,
micro-batch min(32, 512/G) sequences; each bucket's (LM head + final norm, each layer, embedding) fp32
reduce-scatter starts when the last micro-batch's backward has finished it, on a second stream (the
overlap); AdamW on 1/G of the parameters; then one bf16 all-gather of the weights, not overlapped.
Collective time = bytes * (G-1)/G / bus bandwidth + (G-1) * hop latency. ASSUMED figures (not measured
here): NVLink 4 within a node of 8, 370 GB/s bus bandwidth, 1 us per hop; across nodes InfiniBand
NDR 400 Gb/s, 45 GB/s per GPU, 3 us per hop (a flat ring; NCCL's trees/NVLS may do better).

  dev/cost_model.py [--preset NAME ...] [--json | --csv] [--copy-gbs X] [--gemm-tflops Y] [--no-graphs]
                    [--kernels] [--tokens-per-step N] [--gpus 8,16,...] [--swiglu-epilogue-tflops R]
                    (--help: all options)
"""
import argparse
import copy
import functools
import heapq
import itertools
import json
import math
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# ---------------------------------------------------------------------------------------------------
# The code's shapes

VOCAB = 32000  # T5's tokenizer, the paper's (docs/model.md's presets table counts at vocab 32000)
FFN_ALIGN_RE = re.compile(r"constexpr long FFN_ALIGN = (\d+);")
PRESET_RE = re.compile(r'\{"(\w+)", (\d+), (\d+), (\d+), (\d+)\}')
DEFAULT_RE = {"micro_batch": r"int micro_batch = (\d+);", "seq_len": r"int seq_len = (\d+);",
              "total_batch": r"long total_batch = (\d+);"}
NORM_BLOCKS_RE = re.compile(r"constexpr int RMSNORM_BACKWARD_BLOCKS = (\d+);")
PER_BUCKET_RE = re.compile(r"constexpr int PER_BUCKET_ALL_GATHER_MAX_RANKS = (\d+);")
PEAK_RE = re.compile(r'has\("H100"\) && \(has\("SXM"\).*return ([0-9.e]+);')  # the H100 SXM's


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def code_facts():
    """Presets (core/config.h), defaults (core/cli.h), the H100's peak (train_mixln.cu)."""
    config = read("core/config.h")
    body = config[config.index("presets[] = {"):]
    body = body[:body.index("};")]
    presets = {m[0]: dict(d=int(m[1]), ffn=int(m[2]), heads=int(m[3]), layers=int(m[4]))
               for m in PRESET_RE.findall(body)}
    cli = read("core/cli.h")
    defaults = {k: int(re.search(r, cli).group(1)) for k, r in DEFAULT_RE.items()}
    return dict(presets=presets, ffn_align=int(FFN_ALIGN_RE.search(config).group(1)), defaults=defaults,
                peak=float(PEAK_RE.search(read("train_mixln.cu")).group(1)))


class Model:
    def __init__(self, name, d, ffn, heads, layers, ffn_align, vocab=VOCAB, alpha=0.25):
        self.name, self.C, self.F, self.NH, self.L, self.V = name, d, ffn, heads, layers, vocab
        self.Fs = (ffn + ffn_align - 1) // ffn_align * ffn_align  # stored (padded) width: what the GEMMs run
        self.hd = d // heads
        self.post = math.floor(alpha * layers + 1e-9)  # Mix-LN: the first floor(alpha*L) layers are Post-LN

    def layer_params(self, F):
        return 4 * self.C * self.C + 3 * F * self.C + 2 * self.C

    def params(self, F=None):
        """N as core/config.h's parameter_count: V*C + L*(4C^2 + 3FC + 2C) + C + V*C."""
        return 2 * self.V * self.C + self.L * self.layer_params(F or self.F) + self.C

    def mfu_flops_per_token(self, T):
        return 6.0 * (self.params() - self.V * self.C) + 6.0 * self.L * T * self.C


# ---------------------------------------------------------------------------------------------------
# The kernels of one step

BF16, FP32 = 2, 4
# the rmsnorm backward's partial sums of the weight gradient, one row of C per block (kernels/rmsnorm.cuh)
NORM_BLOCKS = int(NORM_BLOCKS_RE.search(read("kernels/rmsnorm.cuh")).group(1))
# up to this many ranks the weights' all-gather goes bucket by bucket, overlapping the next forward;
# above, in one group (data_parallel.cuh)
PER_BUCKET_ALL_GATHER_MAX_RANKS = int(PER_BUCKET_RE.search(read("data_parallel.cuh")).group(1))


class Kernel:
    """One launch: its class, FLOPs and bytes moved (read + written); epilogue: a GEMM of the what-if;
    bucket: in the forward, the gradient bucket whose weights it is the first to need (set by
    micro_batch_kernels; the forward waits for that bucket's all-gather before it)."""
    def __init__(self, name, kind, flops=0.0, bytes_=0.0, shape=None, epilogue=False, parts=()):
        self.name, self.kind, self.flops, self.bytes, self.shape = name, kind, flops, bytes_, shape
        self.epilogue = epilogue
        self.bucket = None
        self.parts = tuple(parts)  # GEMMs launched together on two streams (matmul_backward)
        self.launches = max(1, len(self.parts))


def gemm(name, m, n, k, out_bytes=BF16, accumulate=False, residual=False, epilogue_bytes=None):
    """D (m, n) = A (m, k) B (k, n), bf16 inputs; accumulate: D is read too (beta = 1, fp32 dW); residual:
    a C of D's shape is read and added in the epilogue (kernels/matmul.cuh's residual products).
    epilogue_bytes: the what-if's GEMM, whose epilogue reads and writes these bytes instead of D."""
    d_bytes = m * n * out_bytes * (2 if accumulate or residual else 1)
    b = (m * k + k * n) * BF16 + (d_bytes if epilogue_bytes is None else epilogue_bytes)
    return Kernel(name, "gemm", 2.0 * m * n * k, b, (m, n, k), epilogue=epilogue_bytes is not None)


def gemm_backward(name, N, inp, out, residual=False, dinp_epilogue_bytes=None):
    """matmul_backward: dW (out, inp) += dout^T inp in fp32 beside d inp (N, inp) = dout W, at once;
    residual: a gradient added to d inp in its epilogue (Post-LN's d h and d x).
    dinp_epilogue_bytes: the what-if's d inp GEMM (gemm's epilogue_bytes)."""
    parts = (gemm(name + " dW", out, inp, N, FP32, accumulate=True),
             gemm(name + " dinp", N, inp, out, residual=residual, epilogue_bytes=dinp_epilogue_bytes))
    return [Kernel(name + " dW beside dinp", "gemm", sum(p.flops for p in parts), sum(p.bytes for p in parts),
                   parts=parts)]


def mem(name, bytes_):
    return Kernel(name, "memory", 0.0, bytes_)


def micro_batch_kernels(m, B, T, F=None, swiglu_epilogue=False):
    """Every launch of one micro-batch (forward, classifier, backward) in train_mixln.cu's order.
    F: the MLP width the GEMMs run (default the stored Fs; the model's F for counting model FLOPs).
    swiglu_epilogue: the what-if (module docstring) instead of the trainer's two swiglu kernels."""
    N, C, V, NH, hd = B * T, m.C, m.V, m.NH, m.hd
    F = F or m.Fs
    act = N * C * BF16  # one (N, C) bf16 activation
    rstd = N * FP32
    # causal FlashAttention: QK^T and PV over half the T x T scores, per head and sequence
    attn_fwd_flops = 4.0 * T * T * hd / 2 * NH * B
    ks = []
    ks.append(mem("embedding forward", 2 * act + N * 4))
    ks[-1].bucket = 0  # core/distributed.h's buckets: 0 the embedding, 1 + l layer l, L + 1 the head

    # Each residual add is made by the sublayer's output product (o, down), reading the residual in its
    # epilogue; the norms read the stored sum.
    def attention_forward():
        # RoPE is turned inside the attention kernels (no kernel of its own): the turn, one pass over
        # each tile in shared memory, is not charged (dev/attention.cu's version 4 against 2 measures it)
        return [gemm("q|k|v", N, 3 * C, C),
                Kernel("attention forward", "attention", attn_fwd_flops, (3 * act + act + N * NH * FP32)),
                gemm("o + residual", N, C, C, residual=True)]

    def mlp_forward():
        down = gemm("down + residual", N, C, F, residual=True)
        if swiglu_epilogue:  # writes gate|up (the backward's input) and swiglu
            return [gemm("gate|up + swiglu", N, 2 * F, C, epilogue_bytes=3 * N * F * BF16), down]
        return [gemm("gate|up", N, 2 * F, C), mem("swiglu", 3 * N * F * BF16), down]

    norm = 2 * act + rstd  # rmsnorm: read the sum, write out and rstd
    for l in range(m.L):
        first = len(ks)
        if l < m.post:  # eq. 1: the norms after each sublayer
            ks += attention_forward() + [mem("rmsnorm", norm)] + mlp_forward() + [mem("rmsnorm", norm)]
        else:  # eq. 2: the norms before
            ks += [mem("rmsnorm", norm)] + attention_forward() + [mem("rmsnorm", norm)] + mlp_forward()
        ks[first].bucket = 1 + l
    ks.append(mem("final rmsnorm", norm))
    ks[-1].bucket = m.L + 1
    ks.append(gemm("LM head", N, V, C))
    logits = N * V * BF16
    ks += [mem("loss scalars", N * 4), mem("cross-entropy", 2 * logits + N * (4 + 4)), mem("mean loss", N * 4)]
    # backward
    ks += gemm_backward("LM head", N, C, V)

    def norm_backward(name, accumulate):  # the row kernel, then the weight gradient over its partial sums
        reads = 3 if accumulate else 2  # d out, the norm's input, and d x where it adds to it
        return [mem(name + " backward", reads * act + act + rstd), mem(name + " dweight", NORM_BLOCKS * C * FP32)]

    ks += norm_backward("final rmsnorm", False)

    # The backward is counted as FlashAttention and dev/attention.cu count it, 2.5x the forward (the
    # assumed rates are in those units), split 40/60 between the dq and dk dv kernels only to name them.
    # The dq kernel makes the row terms delta (reading O, writing delta) for itself and the dk dv kernel.
    def attention_backward(residual):
        return (gemm_backward("o", N, C, C) +
                [Kernel("attention backward dq + delta", "attention", 2.5 * attn_fwd_flops * 0.4,
                        5 * act + act + N * NH * FP32),
                 Kernel("attention backward dk dv", "attention", 2.5 * attn_fwd_flops * 0.6,
                        5 * act + 2 * act + N * NH * FP32)] +
                gemm_backward("q|k|v", N, C, 3 * C, residual=residual))

    def mlp_backward(residual):
        if swiglu_epilogue:  # d swiglu in registers: reads gate|up, writes d gate|up
            return (gemm_backward("down", N, F, C, dinp_epilogue_bytes=4 * N * F * BF16) +
                    gemm_backward("gate|up", N, C, 2 * F, residual=residual))
        return (gemm_backward("down", N, F, C) + [mem("swiglu backward", 5 * N * F * BF16)] +
                gemm_backward("gate|up", N, C, 2 * F, residual=residual))

    for l in reversed(range(m.L)):
        if l < m.post:  # d h and d x: the input products add s * dsum in their epilogues
            ks += (norm_backward("rmsnorm", False) + mlp_backward(True) + norm_backward("rmsnorm", False) +
                   attention_backward(True))
        else:  # the norm backward adds into d h and d x
            ks += (mlp_backward(False) + norm_backward("rmsnorm", True) + attention_backward(False) +
                   norm_backward("rmsnorm", True))
    # embedding backward: positions, radix sort of the token ids (about 4 launches of CUB's onesweep
    # for 15-bit keys), per-chunk sums, then their combination into the fp32 rows of dwte
    ks.append(mem("embedding positions", N * 4))
    ks += [mem("embedding sort", 2 * N * (4 + 4)) for _ in range(4)]  # each pass: keys and values in and out
    ks += [mem("embedding chunks", act + N * C * FP32), mem("embedding combine", N * C * FP32 * 3)]
    return ks


def optimizer_kernels(m, owned):
    """Once per step: zero the gradients (all of them), norm over the owned ones, clip, AdamW."""
    P = m.params(m.Fs)
    return [Kernel("zero gradients", "optimizer", 0, P * FP32),
            Kernel("gradient norm partials", "optimizer", 0, owned * FP32),
            Kernel("gradient norm final", "optimizer", 0, 0), Kernel("clip", "optimizer", 0, 0),
            # AdamW: read grad, master, m, v (fp32), write master, m, v and the bf16 weight
            Kernel("adamw", "optimizer", 0, owned * (4 * FP32 + 3 * FP32 + BF16))]


# ---------------------------------------------------------------------------------------------------
# Times

SMS = 132


class Ceilings:
    def __init__(self, copy_gbs, gemm_tflops, attn_fwd, attn_bwd, mem_eff, launch_us, epilogue_gemm_tflops=None):
        self.copy = copy_gbs * 1e9
        self.gemm = gemm_tflops * 1e12
        self.attn_fwd, self.attn_bwd = attn_fwd * 1e12, attn_bwd * 1e12
        self.mem_eff, self.launch = mem_eff, launch_us * 1e-6
        # the what-if's GEMM rate (None: the trainer as it is)
        self.epilogue_gemm = epilogue_gemm_tflops * 1e12 if epilogue_gemm_tflops else None


def gemm_tiles(mm, nn, kk):
    """128x128 output tiles; an output of fewer tiles than SMs is assumed split along k (split-K with an
    fp32 reduction, which kernels/matmul.cuh allows) into parts of at least 1024, each part a tile."""
    tiles = math.ceil(mm / 128) * math.ceil(nn / 128)
    return tiles * max(1, min(SMS // tiles, kk // 1024))


def wave_efficiency(mm, nn, kk):
    """Busy SMs over the waves of tiles."""
    tiles = gemm_tiles(mm, nn, kk)
    return tiles / (math.ceil(tiles / SMS) * SMS)


def gemm_rate(k, c):
    return c.epilogue_gemm if k.epilogue else c.gemm


@functools.lru_cache(maxsize=None)
def together_seconds(parts, c):
    """GEMMs launched at once on two streams, in this order: their tiles list-scheduled on the SMs,
    each SM taking the next tile when it is free, a tile lasting its GEMM's FLOPs per tile at its rate
    per SM (so that one GEMM alone takes FLOPs / (rate x wave efficiency)); at least all their bytes
    at the copy bandwidth."""
    free = [0.0] * SMS
    for p in parts:
        tiles = gemm_tiles(*p.shape)
        tile_seconds = p.flops / tiles / (gemm_rate(p, c) / SMS)
        for _ in range(tiles):
            heapq.heappush(free, heapq.heappop(free) + tile_seconds)
    return max(max(free), sum(p.bytes for p in parts) / (c.copy * c.mem_eff))


def kernel_seconds(k, c):
    bw = c.copy * c.mem_eff
    if k.parts:
        return together_seconds(k.parts, c)
    if k.kind == "gemm":
        return max(k.flops / (gemm_rate(k, c) * wave_efficiency(*k.shape)), k.bytes / bw)
    if k.kind == "attention":
        rate = c.attn_fwd if "forward" in k.name else c.attn_bwd
        return max(k.flops / rate, k.bytes / bw)
    return k.bytes / bw


def step_parts(kernels, c):
    """Seconds per class, plus launches: one gap per kernel (per GEMM of the ones launched together)."""
    parts = dict(gemm=0.0, attention=0.0, memory=0.0, optimizer=0.0, launches=0.0)
    for k in kernels:
        parts[k.kind] += kernel_seconds(k, c)
        parts["launches"] += c.launch * k.launches
    return parts


def predict(m, T, B, total_batch, c, peak, gpus=1):
    sequences = total_batch // T
    per_gpu = sequences // gpus
    b = min(B, per_gpu)
    accum = per_gpu // b
    micro = micro_batch_kernels(m, b, T, swiglu_epilogue=c.epilogue_gemm is not None)
    owned = math.ceil(m.params(m.Fs) / gpus)
    kernels = micro * accum + optimizer_kernels(m, owned)
    parts = step_parts(kernels, c)
    seconds = sum(parts.values())
    tokens = total_batch / seconds
    return dict(preset=m.name, gpus=gpus, micro_batch=b, accumulation=accum, kernels=len(kernels),
                step_ms=seconds * 1e3, tokens_per_s=tokens,
                mfu=m.mfu_flops_per_token(T) * tokens / gpus / peak,
                shares={k: v / seconds for k, v in parts.items()}, micro_kernels=micro)


def kernel_breakdown(kernels, c):
    """{name: [class, launches, ms]} over one micro-batch, slowest first."""
    out = {}
    for k in kernels:
        e = out.setdefault(k.name, [k.kind, 0, 0.0])
        e[1] += k.launches
        e[2] += kernel_seconds(k, c) * 1e3
    return dict(sorted(out.items(), key=lambda kv: -kv[1][2]))


# ---------------------------------------------------------------------------------------------------
# Data parallelism on paper

NODE = 8
LINKS = dict(nvlink=dict(gbs=370.0, hop_us=1.0), infiniband=dict(gbs=45.0, hop_us=3.0))


def collective_seconds(bytes_, gpus):
    if gpus == 1:
        return 0.0
    link = LINKS["nvlink" if gpus <= NODE else "infiniband"]
    return bytes_ * (gpus - 1) / gpus / (link["gbs"] * 1e9) + (gpus - 1) * link["hop_us"] * 1e-6


def buckets_in_backward_order(m):
    """(name, parameters) in the order the backward completes them (core/distributed.h's buckets)."""
    return ([("head", m.V * m.C + m.C)] + [("layer %d" % l, m.layer_params(m.Fs)) for l in reversed(range(m.L))] +
            [("embedding", m.V * m.C)])


def data_parallel(m, T, B, total_batch, c, peak, gpus):
    p = predict(m, T, B, total_batch, c, peak, gpus)
    # when each bucket is done in the last micro-batch's backward (seconds from the backward's start)
    ks = p["micro_kernels"]
    start = next(i for i, k in enumerate(ks) if k.name == "LM head dW beside dinp")
    head_end = next(i for i, k in enumerate(ks) if k.name == "final rmsnorm dweight") + 1
    seconds = lambda k: kernel_seconds(k, c) + c.launch * k.launches
    t, done = 0.0, []
    # the head: LM head backward and the final norm backward
    for k in ks[start:head_end]:
        t += seconds(k)
    done.append(t)
    rest = ks[head_end:]
    emb = [k for k in rest if k.name.startswith("embedding")]
    layers = rest[:len(rest) - len(emb)]
    per = len(layers) // m.L  # Pre-LN and Post-LN layers alike; layer 0 (the last) may have a residual more
    for l in range(m.L):
        chunk = layers[l * per:(l + 1) * per] if l < m.L - 1 else layers[l * per:]
        for k in chunk:
            t += seconds(k)
        done.append(t)
    for k in emb:
        t += seconds(k)
    done.append(t)
    backward_end = t
    comm = 0.0
    rs_total = 0.0
    for (_, n), ready in zip(buckets_in_backward_order(m), done):
        rs = collective_seconds(n * FP32, gpus)
        rs_total += rs
        comm = max(comm, ready) + rs
    exposed_overlap = max(0.0, comm - backward_end)
    # The updated weights' all-gather on the second stream: bucket by bucket in the forward's order, the
    # next step's first forward waiting for each bucket before the first kernel that needs it; or, on
    # more ranks, one group (one latency), which the forward waits for whole.
    sizes = [n for _, n in reversed(buckets_in_backward_order(m))]
    if gpus <= PER_BUCKET_ALL_GATHER_MAX_RANKS:
        gathers = [collective_seconds(n * BF16, gpus) for n in sizes]
    else:
        gathers = [collective_seconds(sum(sizes) * BF16, gpus)] + [0.0] * (len(sizes) - 1)
    ag = sum(gathers)
    gathered = list(itertools.accumulate(gathers))  # when each bucket's weights are in
    t, alone = 0.0, 0.0
    for k in ks[:start]:
        if k.bucket is not None:
            t = max(t, gathered[k.bucket])
        t += seconds(k)
        alone += seconds(k)
    ag_exposed = t - alone
    compute = p["step_ms"] / 1e3
    out = {}
    for mode, rs_exposed, ag_paid in (("overlap", exposed_overlap, ag_exposed), ("no_overlap", rs_total, ag)):
        s = compute + rs_exposed + ag_paid
        out[mode] = dict(step_ms=s * 1e3, tokens_per_s=total_batch / s, per_gpu=total_batch / s / gpus,
                         mfu=m.mfu_flops_per_token(T) * total_batch / s / gpus / peak)
    return dict(preset=m.name, gpus=gpus, micro_batch=p["micro_batch"], accumulation=p["accumulation"],
                compute_ms=compute * 1e3, reduce_scatter_ms=rs_total * 1e3,
                reduce_scatter_exposed_ms=exposed_overlap * 1e3, all_gather_ms=ag * 1e3,
                all_gather_exposed_ms=ag_exposed * 1e3, **out)


# ---------------------------------------------------------------------------------------------------
# The model's assumptions beside what dev/ measured (make gpu-check's report)

DEV_RESULT_RE = re.compile(r"^(matmul_forward|matmul_dW|matmul_dinp|attention_forward|attention_backward) (\S+) "
                           r"v(\d+): ([0-9.]+) TFLOP/s \(([0-9.]+)% of gemm\)")
TRAINER_ATTENTION_VERSION = 4  # dev/attention.cu's version of the trainer's call (RoPE turned inside)


def against_dev(log_text, c):
    """Rows (kernel, shape, version, measured, assumed, measured / assumed) from dev/run_all.log's result
    lines: each of dev/matmul.cu's products as a fraction of the 8192^3 rate measured in its run,
    against the wave efficiency the model assumes for its shape; the trainer's attention at T 256
    against the assumed rates (TFLOP/s, both counted as FlashAttention counts them)."""
    rows = []
    for line in log_text.splitlines():
        m = DEV_RESULT_RE.match(line)
        if not m:
            continue
        kernel, shape, version, tflops, pct = m.group(1), m.group(2), int(m.group(3)), float(m.group(4)), float(m.group(5))
        if kernel.startswith("matmul"):  # shape MODEL:PRODUCT:NxOCxC
            N, OC, C = (int(x) for x in shape.split(":")[2].split("x"))
            mnk = {"matmul_forward": (N, OC, C), "matmul_dW": (OC, C, N), "matmul_dinp": (N, C, OC)}[kernel]
            rows.append((kernel, shape, version, pct / 100, wave_efficiency(*mnk), "of the 8192^3 rate"))
        elif version == TRAINER_ATTENTION_VERSION and ",T256," in shape:
            assumed = c.attn_fwd if kernel == "attention_forward" else c.attn_bwd
            rows.append((kernel, shape, version, tflops, assumed / 1e12, "TFLOP/s"))
    return rows


SWIGLU_GEMM_RE = re.compile(r"^swiglu_gemm_(forward|backward) 130m:\S+ v2: [0-9.]+ TFLOP/s \(([0-9.]+)% of gemm\)")


def swiglu_gemm_fraction(log_text):
    """dev/swiglu_gemm.cu version 2's rate at 130m, the lower of its forward and backward, as a fraction
    of the 8192^3 rate measured in the same run; None without both."""
    found = {}
    for line in log_text.splitlines():
        m = SWIGLU_GEMM_RE.match(line)
        if m:
            found[m.group(1)] = float(m.group(2)) / 100
    return min(found.values()) if len(found) == 2 else None


def print_against_dev(path, c):
    with open(path) as f:
        text = f.read()
    rows = against_dev(text, c)
    fraction = swiglu_gemm_fraction(text)
    if fraction:
        # the what-if at the measured kernel's rate: what the trainer would gain with it
        facts = code_facts()
        m = Model("130m", ffn_align=facts["ffn_align"], **facts["presets"]["130m"])
        d = facts["defaults"]
        with_it = copy.copy(c)
        with_it.epilogue_gemm = fraction * c.gemm
        now, then = (predict(m, d["seq_len"], d["micro_batch"], d["total_batch"], x, facts["peak"])["tokens_per_s"]
                     for x in (c, with_it))
        print("dev/swiglu_gemm.cu version 2 at 130m: %.0f%% of the 8192^3 rate (the lower of forward and backward); "
              "the what-if at that rate (--swiglu-epilogue-tflops %.0f) predicts 130m at %.0fK tokens/s against "
              "%.0fK with the trainer's cuBLASLt and SwiGLU kernels" % (100 * fraction, fraction * c.gemm / 1e12,
                                                                        then / 1e3, now / 1e3))
        print()
    if not rows:
        print("no dev/matmul or T-256 dev/attention version %d results in %s" % (TRAINER_ATTENTION_VERSION, path))
        return
    print("| kernel | shape | version | measured | the model's assumption | measured / assumed |")
    print("|---|---|---|---|---|---|")
    for kernel, shape, version, measured, assumed, unit in rows:
        fmt = (lambda x: "%.0f%% %s" % (100 * x, unit)) if unit.startswith("of") else (lambda x: "%.0f %s" % (x, unit))
        print("| %s | %s | %d | %s | %s | %.2f |" % (kernel, shape, version, fmt(measured), fmt(assumed), measured / assumed))


# ---------------------------------------------------------------------------------------------------
# The measured baselines (an H100, 2026-11-23: a PyTorch version of the same model, bf16 autocast, SDPA
# flash attention, fused AdamW, T = 256): tokens/s eager, torch.compile

TORCH_H100 = {"71m": (267e3, 566e3), "130m": (211e3, 507e3), "1b": (15e3, 44e3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", help="a preset (repeatable; default all but tiny)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV (the per-preset table only)")
    ap.add_argument("--copy-gbs", type=float, default=3000.0,
                    help="device copy bandwidth, read + written (default 3000: an H100's, measured with PyTorch)")
    ap.add_argument("--gemm-tflops", type=float, default=800.0,
                    help="bf16 GEMM 8192^3 rate (default 800: an H100's, measured with PyTorch)")
    ap.add_argument("--attn-fwd-tflops", type=float, default=150.0, help="assumed at T 256 (default 150)")
    ap.add_argument("--attn-bwd-tflops", type=float, default=75.0, help="assumed at T 256 (default 75)")
    ap.add_argument("--memory-efficiency", type=float, default=0.85, help="of the copy bandwidth (default 0.85)")
    ap.add_argument("--no-graphs", action="store_true", help="-D 0: 4 us per launch instead of 1 us")
    ap.add_argument("--kernels", action="store_true", help="also each kernel's time in one micro-batch")
    ap.add_argument("--tokens-per-step", type=int, help="the batch (default core/cli.h's -d, the paper's)")
    ap.add_argument("--gpus", default="8,16,32,64,128,256,512", help="data-parallel GPU counts ('' for none)")
    ap.add_argument("--against-dev", metavar="LOG",
                    help="only the model's GEMM and attention assumptions beside dev/run_all.sh's log (make gpu-check)")
    ap.add_argument("--swiglu-epilogue-tflops", type=float, metavar="R",
                    help="WHAT-IF, not the trainer: SwiGLU and its derivative in the epilogues of GEMMs at R TFLOP/s")
    a = ap.parse_args(argv)

    c = Ceilings(a.copy_gbs, a.gemm_tflops, a.attn_fwd_tflops, a.attn_bwd_tflops, a.memory_efficiency,
                 4.0 if a.no_graphs else 1.0, a.swiglu_epilogue_tflops)
    if a.against_dev:
        print_against_dev(a.against_dev, c)
        return
    facts = code_facts()
    names = a.preset or [n for n in facts["presets"] if n != "tiny"]
    for n in names:
        if n not in facts["presets"]:
            ap.error("unknown preset %s (core/config.h has %s)" % (n, ", ".join(facts["presets"])))
    d = facts["defaults"]
    T, B, total = d["seq_len"], d["micro_batch"], a.tokens_per_step or d["total_batch"]
    if total % T:
        ap.error("--tokens-per-step %d is not a multiple of T = %d" % (total, T))
    rows, dp = [], []
    for n in names:
        m = Model(n, ffn_align=facts["ffn_align"], **facts["presets"][n])
        p = predict(m, T, B, total, c, facts["peak"])
        micro = p.pop("micro_kernels")
        if a.kernels:
            p["kernel_ms"] = kernel_breakdown(micro, c)
        eager, compiled = TORCH_H100.get(n, (None, None))
        p.update(parameters=m.params(), torch_eager=eager, torch_compile=compiled,
                 vs_compile=p["tokens_per_s"] / compiled if compiled else None)
        rows.append(p)
        for g in [int(x) for x in a.gpus.split(",") if x]:
            if total // T % g == 0:
                dp.append(data_parallel(m, T, B, total, c, facts["peak"], g))
    inputs = dict(copy_gbs=a.copy_gbs, gemm_tflops=a.gemm_tflops, attn_fwd_tflops=a.attn_fwd_tflops,
                  attn_bwd_tflops=a.attn_bwd_tflops, memory_efficiency=a.memory_efficiency,
                  launch_us=c.launch * 1e6, swiglu_epilogue_tflops=a.swiglu_epilogue_tflops, T=T, micro_batch=B,
                  tokens_per_step=total, peak_tflops=facts["peak"] / 1e12, links=LINKS)
    if a.json:
        json.dump(dict(predicted=True, inputs=inputs, presets=rows, data_parallel=dp), sys.stdout, indent=1)
        print()
        return
    if a.csv:
        keys = ["preset", "parameters", "micro_batch", "accumulation", "kernels", "step_ms", "tokens_per_s", "mfu",
                "gemm", "attention", "memory", "optimizer", "launches", "torch_eager", "torch_compile", "vs_compile"]
        print(",".join(keys))
        for r in rows:
            v = dict(r, **r["shares"])
            print(",".join("" if v[k] is None else (("%.4g" % v[k]) if isinstance(v[k], float) else str(v[k]))
                           for k in keys))
        return
    print("PREDICTED by dev/cost_model.py (not measured): one step of %d tokens, T %d, micro-batch %d, bf16, "
          "CUDA graphs %s" % (total, T, B, "off" if a.no_graphs else "on"))
    print("inputs: copy %.0f GB/s (memory-bound at %.0f%%), bf16 GEMM %.0f TFLOP/s x wave efficiency, attention "
          "fwd %.0f / bwd %.0f TFLOP/s, %.0f us per launch; MFU against %.1f TFLOP/s"
          % (a.copy_gbs, 100 * a.memory_efficiency, a.gemm_tflops, a.attn_fwd_tflops, a.attn_bwd_tflops,
             c.launch * 1e6, facts["peak"] / 1e12))
    if a.swiglu_epilogue_tflops:
        print("WHAT-IF, not the trainer's code: SwiGLU and its derivative in the epilogues of the gate|up and down "
              "input-gradient GEMMs, at %.0f TFLOP/s x wave efficiency; no swiglu kernels" % a.swiglu_epilogue_tflops)
    print()
    print("| preset | params | step ms | tokens/s | MFU | GEMM | attention | memory | optimizer | launches "
          "| torch eager (H100) | torch.compile (H100) | x compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    k = lambda x: "%.0fK" % (x / 1e3) if x else "-"
    for r in rows:
        s = r["shares"]
        print("| %s | %.1fM | %.1f | %s | %.1f%% | %.0f%% | %.0f%% | %.0f%% | %.0f%% | %.0f%% | %s | %s | %s |"
              % (r["preset"], r["parameters"] / 1e6, r["step_ms"], k(r["tokens_per_s"]), 100 * r["mfu"],
                 100 * s["gemm"], 100 * s["attention"], 100 * s["memory"], 100 * s["optimizer"],
                 100 * s["launches"], k(r["torch_eager"]), k(r["torch_compile"]),
                 "%.2fx" % r["vs_compile"] if r["vs_compile"] else "-"))
    for r in rows if a.kernels else []:
        print()
        print("%s, one micro-batch of %d x %d tokens, each kernel (summed over its launches):" % (r["preset"], r["micro_batch"], T))
        print()
        print("| kernel | class | launches | ms |")
        print("|---|---|---|---|")
        for name, (kind, n, ms) in r["kernel_ms"].items():
            print("| %s | %s | %d | %.3f |" % (name.replace("|", "\\|"), kind, n, ms))
    if not dp:
        return
    print()
    print("Data parallelism, ZeRO-1 (PREDICTED; ASSUMED links: NVLink %(nv).0f GB/s bus within a node of 8, "
          "InfiniBand %(ib).0f GB/s per GPU across nodes):" % dict(nv=LINKS["nvlink"]["gbs"], ib=LINKS["infiniband"]["gbs"]))
    print()
    print("| preset | GPUs | b x accum | compute ms | reduce-scatter ms (exposed) | all-gather ms (exposed) "
          "| tokens/s overlap | MFU | tokens/s no overlap | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in dp:
        o, n = r["overlap"], r["no_overlap"]
        print("| %s | %d | %d x %d | %.1f | %.1f (%.1f) | %.1f (%.1f) | %s | %.0f%% | %s | %.0f%% |"
              % (r["preset"], r["gpus"], r["micro_batch"], r["accumulation"], r["compute_ms"], r["reduce_scatter_ms"],
                 r["reduce_scatter_exposed_ms"], r["all_gather_ms"], r["all_gather_exposed_ms"], k(o["tokens_per_s"]),
                 100 * o["mfu"],
                 k(n["tokens_per_s"]), 100 * n["mfu"]))


if __name__ == "__main__":
    main()
