"""Reproduction runners for the paper's tables: the same model and data, only the normalization
changes, at equal tokens. Runs the trainer once per variant (resuming any unfinished run, skipping
finished ones), then prints and writes the table as CSV and markdown.

    python3 scripts/prepro_c4.py --out data/c4_padded --pad-to 256 --hub-train-files 8
    python3 scripts/reproduce.py table1 --out out/table1 -- -e 71m -i 'data/c4_padded/train_*.bin' -j data/c4_padded/val_000.bin
    python3 scripts/reproduce.py table3 --protocol packed --trainer ./train_mixln_cpu --out out/t3 -- -e tiny -i data/kjv/train.bin -j data/kjv/val.bin

table1: Post-LN, DeepNorm, Pre-LN, Mix-LN (paper Table 1)
table3: Mix-LN alpha in {0, 0.125, 0.25, 0.33, 0.417, 0.5, 0.75, 1} (paper Table 3)
table5: Pre-LN and Mix-LN, plain / + scaled init / + scaled init and scaled embed (paper Table 5)
Everything after "--" goes to every run (data, preset, steps, batch, ...); pass -j so there is a
validation loss to compare.

--protocol paper (the default): as the official Mix-LN code ran the paper's experiments. The
validation shards must be padded ones, one document per row (prepro_c4.py --pad-to 256), the
validation loss is over about 10M tokens (-m 10M unless -m is given) as the mean of the batches'
mean losses, and Table 1's DeepNorm row is the code's DeepNorm (-n deepnorm_paper). The training
shards should be padded too (the code trains so); packed ones get a warning. For the batches' means
to be the code's, give -b as its scripts' per-GPU batch: 256 for 71m and 130m, 128 for 250m, 32 for 1b.
--protocol packed: this project's own: any shards, -m as given, DeepNet's DeepNorm (-n deepnorm).
"""
import argparse
import csv
import glob
import math
import os
import subprocess
import sys

from script_errors import run_script
from shard_format import shard_row_tokens

TABLES = {
    "table1": [("Post-LN", ["-a", "1"]), ("DeepNorm", ["-n", "deepnorm"]), ("Pre-LN", ["-a", "0"]),
               ("Mix-LN", ["-a", "0.25"])],
    "table3": [(f"alpha={a}", ["-a", a]) for a in ["0", "0.125", "0.25", "0.33", "0.417", "0.5", "0.75", "1"]],
    "table5": [(f"{norm}{extra}", ["-a", alpha] + flags)
               for norm, alpha in [("Pre-LN", "0"), ("Mix-LN", "0.25")]
               for extra, flags in [("", []), (" + scaled init", ["-S", "1"]),
                                    (" + scaled init + scaled embed", ["-S", "1", "-E", "1"])]],
}


def flag_value(flags, flag):
    """The value after the last occurrence of flag in a trainer command line, or None."""
    values = [flags[i + 1] for i in range(len(flags) - 1) if flags[i] == flag]
    return values[-1] if values else None


def shard_files(patterns):
    """The files of a trainer's comma-separated list of files and globs."""
    return [f for p in patterns.split(",") if p for f in sorted(glob.glob(p))]


def paper_protocol(table, common):
    """The per-variant flags of a table and the common flags, in the official code's protocol."""
    val = flag_value(common, "-j")
    if val is None:
        sys.exit("error: the paper's protocol validates: give -j with padded validation shards")
    for path in shard_files(val):
        if shard_row_tokens(path) == 0:
            sys.exit(f"error: the paper's protocol validates on padded shards, one document per row "
                     f"(prepro_c4.py --pad-to 256), but {path} is packed; or use --protocol packed")
    train = flag_value(common, "-i")
    if train and any(shard_row_tokens(p) == 0 for p in shard_files(train)):
        print("warning: packed training shards; the official code trains on padded documents too", flush=True)
    variants = [(name, ["-n", "deepnorm_paper"] if flags == ["-n", "deepnorm"] else flags) for name, flags in TABLES[table]]
    return variants, common if "-m" in common else common + ["-m", "10M"]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_present():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


def default_trainer():
    """The trainer make built: train_mixln where it exists and a GPU is present, else train_mixln_cpu
    (the choice scripts/demo.sh makes)."""
    gpu, cpu = os.path.join(REPO, "train_mixln"), os.path.join(REPO, "train_mixln_cpu")
    if os.access(gpu, os.X_OK) and gpu_present():
        return gpu
    if os.access(cpu, os.X_OK):
        return cpu
    sys.exit(f"error: no trainer built in {REPO}: run `make train_mixln_cpu` (or `make train_mixln` on a GPU "
             "machine), or pass --trainer")


def run_dir(out, name):
    return os.path.join(out, name.replace(" ", "_").replace("+", "plus").replace("=", "_"))


def final_val_loss(log_path):
    """The last validation loss in a trainer's log.csv, or None."""
    if not os.path.exists(log_path):
        return None
    with open(log_path, newline="") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    return float(val[-1]["loss"]) if val else None


def finished(directory):
    return os.path.exists(os.path.join(directory, "DONE"))


def run_variant(trainer, directory, flags, common):
    """Runs (or resumes) one variant; returns 'ok' or 'diverged'."""
    if finished(directory):
        return open(os.path.join(directory, "DONE")).read().strip()
    cmd = [trainer] + common + flags + ["-o", directory]
    if glob.glob(os.path.join(directory, "ckpt_*.bin")):
        cmd += ["-r", directory]  # the trainer refuses it if the flags differ from the run's (its run.txt)
    elif os.path.exists(directory) and os.listdir(directory):
        cmd += ["-W", "1"]  # died before its first checkpoint: nothing to resume, so start it over
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        status = "ok"
    elif rc == 3:
        status = "diverged"  # the trainer stops on a non-finite loss with exit code 3
    else:
        sys.exit(f"error: {' '.join(cmd)} failed with exit code {rc}; rerun this script to resume")
    with open(os.path.join(directory, "DONE"), "w") as f:
        f.write(status + "\n")
    return status


def main():
    if "--" not in sys.argv:
        sys.exit("error: put the trainer flags after '--' (see -h)")
    split = sys.argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--out", required=True, help="one subdirectory per variant, plus results.csv / results.md")
    ap.add_argument("--trainer", help="trainer binary (default: train_mixln if built and a GPU is present, "
                    "else train_mixln_cpu, from the repository root)")
    ap.add_argument("--protocol", choices=["paper", "packed"], default="paper",
                    help="paper: the official code's data, validation and DeepNorm (default); packed: this project's")
    args = ap.parse_args(sys.argv[1:split])
    if args.trainer is None:
        args.trainer = default_trainer()
    common = sys.argv[split + 1:]
    if "-o" in common or "-r" in common:
        sys.exit("error: -o and -r are set per run by this script")
    variants = TABLES[args.table]
    if args.protocol == "paper":
        try:
            variants, common = paper_protocol(args.table, common)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name, flags in variants:
        directory = run_dir(args.out, name)
        status = run_variant(args.trainer, directory, flags, common)
        loss = final_val_loss(os.path.join(directory, "log.csv"))
        results.append((name, status, loss))
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["normalization", "status", "val_loss", "val_ppl"])
        for name, status, loss in results:
            w.writerow([name, status, loss if loss is not None else "", math.exp(loss) if loss is not None else ""])
    lines = ["| normalization | val loss | val perplexity |", "|---|---|---|"]
    for name, status, loss in results:
        cell = f"{loss:.4f} | {math.exp(loss):.2f}" if status == "ok" and loss is not None else "diverged | diverged"
        lines.append(f"| {name} | {cell} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"{args.table}, {args.protocol} protocol, trainer flags: {' '.join(common)}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    run_script(main)
