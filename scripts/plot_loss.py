"""Training and validation loss of several runs on one axis, from the trainers' log.csv files.

    python3 scripts/plot_loss.py -o loss.png Pre-LN=out/pre/log.csv Mix-LN=out/mix/log.csv
"""
import argparse

from plot_common import labeled_paths, plt, read_rows, save
from script_errors import run_script


def smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=log.csv")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--smooth", type=int, default=20, help="moving-average window for the train loss (default 20)")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, path in labeled_paths(args.inputs):
        rows = read_rows(path, ("step", "split", "loss"))
        train = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"]
        val = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "val"]
        line, = ax.plot([s for s, _ in train], smooth([l for _, l in train], args.smooth), label=f"{label} train", alpha=0.8)
        if val:
            ax.plot([s for s, _ in val], [l for _, l in val], "o--", color=line.get_color(), label=f"{label} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
