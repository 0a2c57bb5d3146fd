"""Training and validation loss of several runs on one axis, from the trainers' log.csv files.

    python3 scripts/plot_loss.py -o loss.png Pre-LN=out/pre/log.csv Mix-LN=out/mix/log.csv
    python3 scripts/plot_loss.py -o loss.png 'Pre-LN=out/t1/Pre-LN/seed_*/log.csv' 'Mix-LN=out/t1/Mix-LN/seed_*/log.csv'

A label with several logs (seeds: LABEL=a.csv,b.csv or a glob) is drawn as the mean over them at
each step, with a band of one standard deviation.
"""
import argparse

from plot_common import labeled_path_groups, mean_std, plt, read_rows, save
from script_errors import run_script


def smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def curves(paths, split, window):
    """(steps, mean, std) of one split's loss over the logs, at the steps every log has; the train
    loss smoothed over window steps first."""
    runs = []
    for path in paths:
        rows = read_rows(path, ("step", "split", "loss"))
        points = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
        losses = smooth([l for _, l in points], window) if split == "train" else [l for _, l in points]
        runs.append(dict(zip((s for s, _ in points), losses)))
    steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    if not steps:
        return [], [], []
    mean, std = mean_std([[r[s] for s in steps] for r in runs])
    return steps, mean, std


def band(ax, x, mean, std, color):
    if len(x) and std.any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=log.csv (or LABEL=a.csv,b.csv,... / a glob: the seeds of one configuration)")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--smooth", type=int, default=20, help="moving-average window for the train loss (default 20)")
    ap.add_argument("--val-only", action="store_true", help="only the validation loss")
    ap.add_argument("--title", help="the figure's title")
    args = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, paths in labeled_path_groups(args.inputs):
        seeds = f" (mean of {len(paths)})" if len(paths) > 1 else ""
        color = None
        if not args.val_only:
            steps, mean, std = curves(paths, "train", args.smooth)
            line, = ax.plot(steps, mean, label=f"{label} train{seeds}", alpha=0.8)
            color = line.get_color()
            band(ax, steps, mean, std, color)
        steps, mean, std = curves(paths, "val", 1)
        if len(steps):
            line, = ax.plot(steps, mean, "o--", color=color, label=f"{label} val{seeds}")
            band(ax, steps, mean, std, line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    if args.title:
        ax.set_title(args.title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
