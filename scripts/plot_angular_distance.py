"""Angular-distance heatmaps side by side (paper eq. 6; Fig. 3a/b, and Fig. 5 with --row-normalize).

    python3 scripts/plot_angular_distance.py -o angles.png Post-LN=a/angular_distance.csv Pre-LN=b/angular_distance.csv
    python3 scripts/plot_angular_distance.py --neighbour 1 -o next.png 'Pre-LN=out/t1/Pre-LN/seed_*/analysis/angular_distance.csv' ...

Each column is a starting layer l (x axis), each row a distance n in layers (y axis); yellow is small
distance (similar representations), purple large, as in the paper. --row-normalize rescales each
row n to [0, 1] so the depth trend shows at every n. A label with several files (seeds:
LABEL=a.csv,b.csv or a glob) shows their mean. --neighbour N draws instead, for every label on one
axis, the distance between layer l and layer l + N against l, the mean over the label's files with
a band of one standard deviation.
"""
import argparse
import math

from plot_common import labeled_path_groups, mean_std, plt, read_rows, save
from script_errors import BadInput, run_script


def distance_matrix(rows, row_normalize):
    L = max(int(r["layer"]) + int(r["n"]) for r in rows)
    m = [[math.nan] * L for _ in range(L)]  # m[n-1][l]
    for r in rows:
        m[int(r["n"]) - 1][int(r["layer"])] = float(r["distance"])
    if row_normalize:
        normalize_rows(m)
    return m


def normalize_rows(m):
    for row in m:
        vals = [v for v in row if not math.isnan(v)]
        lo, hi = min(vals), max(vals)
        for i, v in enumerate(row):
            if not math.isnan(v):
                row[i] = (v - lo) / (hi - lo) if hi > lo else 0.0


def mean_matrix(paths, row_normalize):
    """The mean over the files of their distance matrices (normalized after averaging)."""
    mats = [distance_matrix(read_rows(p, ("layer", "n", "distance")), False) for p in paths]
    if any(len(m) != len(mats[0]) for m in mats):
        raise BadInput(f"the files have different numbers of layers ({', '.join(paths)})")
    m = [[sum(ms[n][l] for ms in mats) / len(mats) for l in range(len(mats[0]))] for n in range(len(mats[0]))]
    if row_normalize:
        normalize_rows(m)
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=angular_distance.csv (or several, comma-separated, or a glob: seeds)")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--row-normalize", action="store_true")
    ap.add_argument("--neighbour", type=int, metavar="N", help="lines of the distance from layer l to l + N instead of heatmaps")
    ap.add_argument("--title", help="the figure's title")
    args = ap.parse_args(argv)
    groups = labeled_path_groups(args.inputs)
    if args.neighbour:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, paths in groups:
            mats = [distance_matrix(read_rows(p, ("layer", "n", "distance")), False) for p in paths]
            if args.neighbour > len(mats[0]) or any(len(m) != len(mats[0]) for m in mats):
                raise BadInput(f"{label}: --neighbour {args.neighbour} needs files of as many layers, at least that many")
            layers = list(range(len(mats[0]) - args.neighbour + 1))
            mean, std = mean_std([[m[args.neighbour - 1][l] for l in layers] for m in mats])
            line, = ax.plot(layers, mean, marker="o", label=label + (f" (mean of {len(mats)})" if len(mats) > 1 else ""))
            if len(mats) > 1:
                ax.fill_between(layers, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("layer l")
        ax.set_ylabel(f"angular distance to layer l + {args.neighbour}")
        if args.title:
            ax.set_title(args.title)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        save(fig, args.out)
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, (label, paths) in zip(axes[0], groups):
        m = mean_matrix(paths, args.row_normalize)
        im = ax.imshow(m, origin="lower", cmap="viridis_r", aspect="auto",
                       vmin=0, vmax=1 if args.row_normalize else None,
                       extent=(-0.5, len(m) - 0.5, 0.5, len(m) + 0.5))
        ax.set_title(label + (f" (mean of {len(paths)})" if len(paths) > 1 else ""))
        ax.set_xlabel("layer l")
        ax.set_ylabel("n (compared with layer l + n)")
        fig.colorbar(im, ax=ax, label="row-normalized distance" if args.row_normalize else "angular distance")
    if args.title:
        fig.suptitle(args.title)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
