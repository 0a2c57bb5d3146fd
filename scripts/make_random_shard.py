"""Writes a token shard of uniformly random ids, for measuring the trainers' speed (dev/bench_trainer.sh)
where the data does not matter.

    python3 scripts/make_random_shard.py --out build/bench/random.bin --tokens 1000000 --vocab-size 32000
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_errors import run_script  # noqa: E402
from shard_format import write_shard  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the shard to write")
    parser.add_argument("--tokens", type=int, required=True, help="how many ids")
    parser.add_argument("--vocab-size", type=int, default=32000, help="ids are drawn from [0, VOCAB_SIZE) (default 32000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tokens < 2 or args.vocab_size < 1:
        parser.error("need --tokens >= 2 and --vocab-size >= 1")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tokens = np.random.default_rng(args.seed).integers(0, args.vocab_size, size=args.tokens)
    write_shard(args.out, tokens, args.vocab_size)
    print(f"{args.out}: {args.tokens} random ids in [0, {args.vocab_size})")


if __name__ == "__main__":
    run_script(main)
