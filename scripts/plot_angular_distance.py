"""Angular-distance heatmaps side by side (paper eq. 6; Fig. 3a/b, and Fig. 5 with --row-normalize).

    python3 scripts/plot_angular_distance.py -o angles.png Post-LN=a/angular_distance.csv Pre-LN=b/angular_distance.csv

Each column is a starting layer l (x axis), each row a distance n in layers (y axis); yellow is small
distance (similar representations), purple large, as in the paper. --row-normalize rescales each
row n to [0, 1] so the depth trend shows at every n.
"""
import argparse
import math

from plot_common import labeled_paths, plt, read_rows, save
from script_errors import run_script


def distance_matrix(rows, row_normalize):
    L = max(int(r["layer"]) + int(r["n"]) for r in rows)
    m = [[math.nan] * L for _ in range(L)]  # m[n-1][l]
    for r in rows:
        m[int(r["n"]) - 1][int(r["layer"])] = float(r["distance"])
    if row_normalize:
        for row in m:
            vals = [v for v in row if not math.isnan(v)]
            lo, hi = min(vals), max(vals)
            for i, v in enumerate(row):
                if not math.isnan(v):
                    row[i] = (v - lo) / (hi - lo) if hi > lo else 0.0
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=angular_distance.csv")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--row-normalize", action="store_true")
    args = ap.parse_args()
    pairs = labeled_paths(args.inputs)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    for ax, (label, path) in zip(axes[0], pairs):
        m = distance_matrix(read_rows(path, ("layer", "n", "distance")), args.row_normalize)
        im = ax.imshow(m, origin="lower", cmap="viridis_r", aspect="auto",
                       vmin=0, vmax=1 if args.row_normalize else None,
                       extent=(-0.5, len(m) - 0.5, 0.5, len(m) + 0.5))
        ax.set_title(label)
        ax.set_xlabel("layer l")
        ax.set_ylabel("n (compared with layer l + n)")
        fig.colorbar(im, ax=ax, label="row-normalized distance" if args.row_normalize else "angular distance")
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
