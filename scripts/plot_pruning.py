"""Performance drop from removing one layer at a time (paper eq. 7, Fig. 3c/d), grouped bars.

    python3 scripts/plot_pruning.py -o pruning.png Pre-LN=a/pruning.csv Mix-LN=b/pruning.csv
    python3 scripts/plot_pruning.py -o pruning.png 'Pre-LN=out/t1/Pre-LN/seed_*/analysis/pruning.csv' ...

A label with several files (seeds: LABEL=a.csv,b.csv or a glob) is drawn as their mean per layer
with error bars of one standard deviation.
"""
import argparse

from plot_common import labeled_path_groups, mean_std, plt, read_rows, save
from script_errors import BadInput, run_script


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=pruning.csv (or several, comma-separated, or a glob: seeds)")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--metric", default="delta_loss", choices=["delta_loss", "delta_ppl"])
    ap.add_argument("--title", help="the figure's title")
    args = ap.parse_args(argv)
    groups = labeled_path_groups(args.inputs)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for i, (label, paths) in enumerate(groups):
        runs = []
        for path in paths:
            rows = [r for r in read_rows(path, ("layer", args.metric)) if r["layer"] != "none"]
            runs.append(([int(r["layer"]) for r in rows], [float(r[args.metric]) for r in rows]))
        layers = runs[0][0]
        if any(r[0] != layers for r in runs):
            raise BadInput(f"{label}: the files have different layers ({', '.join(paths)})")
        mean, std = mean_std([r[1] for r in runs])
        ax.bar([l + (i - (len(groups) - 1) / 2) * width for l in layers], mean, width=width,
               yerr=std if len(runs) > 1 else None, capsize=2 if len(runs) > 1 else 0,
               label=label + (f" (mean of {len(runs)})" if len(runs) > 1 else ""))
    ax.set_xlabel("layer removed")
    ax.set_ylabel("increase in val loss" if args.metric == "delta_loss" else "increase in val perplexity")
    ax.axhline(0, color="black", linewidth=0.8)
    if args.title:
        ax.set_title(args.title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
