"""Reproduction runners for the paper's tables: the same model and data, only the normalization
changes, at equal tokens. Runs the trainer once per variant (resuming any unfinished run, skipping
finished ones), then prints and writes the table as CSV and markdown.

    python3 scripts/reproduce.py table1 --out out/table1 -- -e 71m -i 'c4/train_*.bin' -j c4/val_000.bin -x 10000
    python3 scripts/reproduce.py table3 --trainer ./train_mixln_cpu --out out/t3 -- -e tiny -i data/kjv/train.bin -j data/kjv/val.bin

table1: Post-LN, DeepNorm, Pre-LN, Mix-LN (paper Table 1)
table3: Mix-LN alpha in {0, 0.125, 0.25, 0.33, 0.417, 0.5, 0.75, 1} (paper Table 3)
table5: Pre-LN and Mix-LN, plain / + scaled init / + scaled init and scaled embed (paper Table 5)
Everything after "--" goes to every run (data, preset, steps, batch, ...); pass -j so there is a
validation loss to compare.
"""
import argparse
import csv
import glob
import math
import os
import subprocess
import sys

TABLES = {
    "table1": [("Post-LN", ["-a", "1"]), ("DeepNorm", ["-n", "deepnorm"]), ("Pre-LN", ["-a", "0"]),
               ("Mix-LN", ["-a", "0.25"])],
    "table3": [(f"alpha={a}", ["-a", a]) for a in ["0", "0.125", "0.25", "0.33", "0.417", "0.5", "0.75", "1"]],
    "table5": [(f"{norm}{extra}", ["-a", alpha] + flags)
               for norm, alpha in [("Pre-LN", "0"), ("Mix-LN", "0.25")]
               for extra, flags in [("", []), (" + scaled init", ["-S", "1"]),
                                    (" + scaled init + scaled embed", ["-S", "1", "-E", "1"])]],
}


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
        cmd += ["-r", directory]
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
    ap.add_argument("--trainer", default="./train_mixln", help="trainer binary (default ./train_mixln)")
    args = ap.parse_args(sys.argv[1:split])
    common = sys.argv[split + 1:]
    if "-o" in common or "-r" in common:
        sys.exit("error: -o and -r are set per run by this script")
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name, flags in TABLES[args.table]:
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
        f.write(f"{args.table}, trainer flags: {' '.join(common)}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
