"""Shared by the plot_*.py scripts: LABEL=PATH arguments, CSV reading, saving a figure."""
import csv
import os

from script_errors import BadInput

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
            raise BadInput(f"{path}: no such file")
        pairs.append((label, path))
    return pairs


def read_rows(path, columns):
    """The rows of a CSV file as dicts; raises BadInput if it has none or lacks one of columns."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise BadInput(f"{path}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise BadInput(f"{path}: no column '{missing[0]}' (columns: {', '.join(rows[0])})")
    return rows


def save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
