"""Shared by the plot_*.py scripts: LABEL=PATH arguments, CSV reading, saving a figure."""
import csv
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def labeled_paths(items):
    """['Pre-LN=out/a/x.csv', 'b.csv'] -> [('Pre-LN', 'out/a/x.csv'), ('b', 'b.csv')]."""
    pairs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = os.path.splitext(os.path.basename(item))[0], item
        if not os.path.exists(path):
            raise SystemExit(f"error: {path}: no such file")
        pairs.append((label, path))
    return pairs


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
