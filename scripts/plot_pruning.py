"""Performance drop from removing one layer at a time (paper eq. 7, Fig. 3c/d), grouped bars.

    python3 scripts/plot_pruning.py -o pruning.png Pre-LN=a/pruning.csv Mix-LN=b/pruning.csv
"""
import argparse

from plot_common import labeled_paths, plt, read_rows, save
from script_errors import run_script


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=pruning.csv")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--metric", default="delta_loss", choices=["delta_loss", "delta_ppl"])
    args = ap.parse_args()
    pairs = labeled_paths(args.inputs)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(pairs)
    for i, (label, path) in enumerate(pairs):
        rows = [r for r in read_rows(path, ("layer", args.metric)) if r["layer"] != "none"]
        layers = [int(r["layer"]) for r in rows]
        ax.bar([l + (i - (len(pairs) - 1) / 2) * width for l in layers], [float(r[args.metric]) for r in rows],
               width=width, label=label)
    ax.set_xlabel("layer removed")
    ax.set_ylabel("increase in val loss" if args.metric == "delta_loss" else "increase in val perplexity")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
