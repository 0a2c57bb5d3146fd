"""Converts a checkpoint of format version 1 or 2 to version 3, which the trainers read.

    python3 scripts/upgrade_checkpoint.py out/run/ckpt_00001000.bin out/run_v3/ckpt_00001000.bin

Version 3 changed where the parameters are (core/config.h): layer-major instead of tensor-major,
and the MLP stored ffn_stored(d_ffn) wide with zero padding. The weights and Adam's moments are
rearranged (the padding zero: a zero weight with zero moments stays zero in training); the model
config, the train state and the run id are kept, so `-r` resumes from the new file as it would have
from the old one. A version 1 file has no checksum to verify. --weights-only writes the weights alone,
step 0 and no train state, for `-f`: the one way to convert a checkpoint whose moments are in ZeRO-1
optimizer shard files (ckpt_STEP.rankR.bin, slices of the old layout), which is refused otherwise.
OLD and NEW may be the same path (NEW is written to NEW.tmp, then renamed).
"""
import argparse
import itertools
import sys

from checkpoint_format import VERSION, checkpoint_header, num_params, read_checkpoint, stored_arrays, write_arrays
from script_errors import run_script


def upgrade(old_path, new_path, weights_only=False):
    old = read_checkpoint(old_path, old_layout=True)
    if weights_only:
        h, arrays = checkpoint_header(old.config), old.arrays[:1]
    elif old.header[26] != 0:
        sys.exit(f"error: checkpoint '{old_path}': its Adam moments are in {old.header[26]} optimizer shard "
                 "files of the old layout, which this script does not convert (--weights-only converts the "
                 "weights, for -f)")
    else:
        h, arrays = old.header.copy(), old.arrays
        h[1], h[14] = VERSION, num_params(old.config)
    write_arrays(new_path, h, itertools.chain.from_iterable(
        stored_arrays(old.config, old.tensors(array)) for array in arrays))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="a version 1 or 2 checkpoint")
    ap.add_argument("new", help="the version 3 checkpoint to write")
    ap.add_argument("--weights-only", action="store_true", help="write the weights alone (step 0, for -f)")
    args = ap.parse_args()
    upgrade(args.old, args.new, args.weights_only)
    print(f"{args.old} -> {args.new}: version 3")


if __name__ == "__main__":
    run_script(main)
