"""The final validation loss of each configuration of a seeded table: every seed's value as a dot,
the mean with an error bar of one standard deviation, in the table's order (reproduce.py's runs.csv).

    python3 scripts/plot_final.py -o final.png --baseline 6.0455 out/cpu_table3/runs.csv

Diverged or unfinished runs (no loss) are left out; a configuration without a finished seed is left
out with a note on the axis.
"""
import argparse

from plot_common import plt, read_rows, save
from script_errors import BadInput, run_script


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="reproduce.py's runs.csv")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--baseline", type=float, help="the unigram baseline, drawn as a dashed line")
    ap.add_argument("--title", help="the figure's title")
    args = ap.parse_args(argv)
    losses = {}  # configuration -> the finished seeds' losses, in the file's order
    for r in read_rows(args.runs, ("config", "status", "val_loss")):
        losses.setdefault(r["config"], [])
        if r["status"] == "ok" and r["val_loss"]:
            losses[r["config"]].append(float(r["val_loss"]))
    if not any(losses.values()):
        raise BadInput(f"{args.runs}: no finished run")
    names = list(losses)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    for x, name in enumerate(names):
        values = losses[name]
        if not values:
            ax.annotate("none finished", (x, 0), xycoords=("data", "axes fraction"), ha="center", fontsize="small")
            continue
        ax.plot([x] * len(values), values, "o", color="gray", alpha=0.6, markersize=4)
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        ax.errorbar([x], [mean], yerr=[std], fmt="s", color="C0", capsize=4, markersize=6)
    if args.baseline is not None:
        ax.axhline(args.baseline, color="black", linestyle="--", linewidth=0.8, label="unigram baseline")
        ax.legend(fontsize="small")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("final val loss (nats/token)")
    ax.set_title(args.title or "final validation loss: seeds (dots), mean ± sd")
    ax.grid(axis="y", alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
