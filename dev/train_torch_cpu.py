"""The model of core/model_cpu.h in plain PyTorch (eager, fp32, on the CPU), trained the way
train_mixln_cpu trains it (AdamW, one micro-batch per step), for dev/bench_cpu.sh's side-by-side
speed comparison. Not part of the project's training path.

    python dev/train_torch_cpu.py --shard build/bench/random.bin -L 4 -C 128 -H 4 -F 344 -a 0.25 \
        -b 16 -t 128 --steps 12 --threads 2

Prints one line per step and, at the end, "torch tokens/s: X" over the steps after the first two
(warm-up), timed as train_mixln_cpu times its steps: forward, backward and the optimizer update.
"""
import argparse
import math
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_shard(path):
    """Token ids of a MIXLNTOK shard (docs/data-and-formats.md, Token shard), as an int64 tensor."""
    with open(path, "rb") as f:
        header = f.read(32)
        magic, version, width, count, vocab = struct.unpack("<8sIIQI", header[:28])
        if magic != b"MIXLNTOK" or version != 1 or width not in (2, 4):
            sys.exit(f"error: {path} is not a version-1 token shard")
        data = f.read(count * width)
    dtype = torch.uint16 if width == 2 else torch.int32
    return torch.frombuffer(bytearray(data), dtype=dtype).to(torch.int64), vocab


def rotate_half(x, cos, sin):
    """RoPE in Hugging Face's rotate-half convention (kernels/cpu/rope.h)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Layer(nn.Module):
    def __init__(self, d, ffn, heads, post_ln):
        super().__init__()
        self.heads, self.post_ln = heads, post_ln
        self.norm_a, self.norm_b = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def attention(self, x, cos, sin):
        B, T, C = x.shape
        split = lambda y: y.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        y = F.scaled_dot_product_attention(rotate_half(q, cos, sin), rotate_half(k, cos, sin), v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))

    def mlp(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))

    def forward(self, x, cos, sin):
        if self.post_ln:  # eq. 1
            h = self.norm_a(x + self.attention(x, cos, sin))
            return self.norm_b(h + self.mlp(h))
        h = x + self.attention(self.norm_a(x), cos, sin)  # eq. 2
        return h + self.mlp(self.norm_b(h))


class Model(nn.Module):
    def __init__(self, vocab, d, ffn, heads, layers, alpha):
        super().__init__()
        post = math.floor(alpha * layers + 1e-9)
        self.wte = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, ffn, heads, l < post) for l in range(layers))
        self.norm_f = nn.RMSNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.head_dim = d // heads

    def forward(self, tokens, targets):
        T = tokens.shape[1]
        inv_freq = 10000.0 ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos, sin = angle.cos().float(), angle.sin().float()
        x = self.wte(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard", required=True)
    ap.add_argument("-L", type=int, default=4, help="layers")
    ap.add_argument("-C", type=int, default=128, help="hidden size")
    ap.add_argument("-H", type=int, default=4, help="heads")
    ap.add_argument("-F", type=int, default=344, help="MLP size")
    ap.add_argument("-a", type=float, default=0.25, help="Mix-LN alpha")
    ap.add_argument("-b", type=int, default=16)
    ap.add_argument("-t", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 3:
        sys.exit("error: --steps must be at least 3 (the first two are warm-up)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    tokens, vocab = read_shard(args.shard)
    model = Model(vocab, args.C, args.F, args.H, args.L, args.a)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    B, T = args.b, args.t
    timed = []
    for step in range(args.steps):
        start = (step * B * T) % (len(tokens) - B * T - 1)
        chunk = tokens[start:start + B * T + 1]
        x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        opt.step()
        ms = 1e3 * (time.perf_counter() - t0)
        print(f"step {step + 1}/{args.steps} | loss {loss.item():.6f} | {ms:.1f} ms", flush=True)
        if step >= 2:
            timed.append(ms)
    print(f"torch tokens/s: {B * T * len(timed) / (sum(timed) / 1e3):.0f}")


if __name__ == "__main__":
    main()
