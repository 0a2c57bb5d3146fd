"""Shared by the plot_*.py scripts: LABEL=PATH arguments, CSV reading, saving a figure.

A label may stand for several runs (seeds): LABEL=PATH,PATH,... or LABEL=GLOB; the scripts then draw
the mean over them with a band of one standard deviation (or error bars)."""
import csv
import glob
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


def _expand(paths):
    """A comma-separated list of paths and globs -> the files (a glob in name order), or None if one is missing."""
    found = []
    for part in paths.split(","):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else ([part] if os.path.exists(part) else [])
        if not matches:
            return None
        found += matches
    return found


def labeled_path_groups(items):
    """['Pre-LN=a/x.csv,b/x.csv', 'alpha=0.25=c/*/x.csv', 'd.csv'] -> [('Pre-LN', ['a/x.csv', 'b/x.csv']),
    ('alpha=0.25', [...]), ('d', ['d.csv'])]: the label ends at the first '=' after which every path
    exists (so labels may hold '='); without one, the label is the file's name."""
    groups = []
    for item in items:
        cuts = [i for i, c in enumerate(item) if c == "="]
        for cut in cuts:
            paths = _expand(item[cut + 1:])
            if paths:
                groups.append((item[:cut], paths))
                break
        else:
            paths = _expand(item)
            if not paths:
                first = item[cuts[0] + 1:] if cuts else item
                missing = next((p for p in first.split(",") if _expand(p) is None), first)
                raise BadInput(f"{missing}: no such file")
            groups.append((os.path.splitext(os.path.basename(paths[0]))[0], paths))
    return groups


def mean_std(series):
    """Element-wise mean and standard deviation (n - 1; 0 for one series) of equal-length lists."""
    import numpy as np
    a = np.array(series, dtype=np.float64)
    return a.mean(axis=0), (a.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(a.shape[1:]))


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
