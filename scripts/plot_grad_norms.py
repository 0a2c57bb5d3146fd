"""Gradient norm per layer for several models on one axis (paper Fig. 3e and 6).

    python3 scripts/plot_grad_norms.py -o norms.png Pre-LN=out/pre/grad_norms.csv Mix-LN=out/mix/grad_norms.csv
    python3 scripts/plot_grad_norms.py -o norms.png 'Pre-LN=out/t1/Pre-LN/seed_*/analysis/grad_norms.csv' ...

Reads analyze_mixln_cpu's grad_norms.csv (layer,post_ln,attention,mlp,total) or a trainer's -y log
(step,layer,...; --step picks the step, default the last one logged). A label with several files
(seeds: LABEL=a.csv,b.csv or a glob) is drawn as their mean per layer with a band of one standard
deviation.
"""
import argparse

from plot_common import labeled_path_groups, mean_std, plt, read_rows, save
from script_errors import BadInput, run_script


def norms_by_layer(rows, column, step):
    if rows and "step" in rows[0]:
        steps = sorted({int(r["step"]) for r in rows})
        want = step if step is not None else steps[-1]
        rows = [r for r in rows if int(r["step"]) == want]
        if not rows:
            raise SystemExit(f"error: no rows for step {want} (logged: {steps[0]}..{steps[-1]})")
    rows = sorted(rows, key=lambda r: int(r["layer"]))
    return [int(r["layer"]) for r in rows], [float(r[column]) for r in rows], [r["post_ln"] == "1" for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="LABEL=grad_norms.csv (or several, comma-separated, or a glob: seeds)")
    ap.add_argument("-o", "--out", required=True, help="output PNG")
    ap.add_argument("--which", default="total", choices=["total", "attention", "mlp"])
    ap.add_argument("--step", type=int, help="for trainer logs: the step to plot (default: the last)")
    ap.add_argument("--linear", action="store_true", help="linear y axis (default log)")
    ap.add_argument("--title", help="the figure's title")
    args = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, paths in labeled_path_groups(args.inputs):
        runs = [norms_by_layer(read_rows(p, ("layer", "post_ln", args.which)), args.which, args.step) for p in paths]
        layers, _, post = runs[0]
        if any(r[0] != layers for r in runs):
            raise BadInput(f"{label}: the files have different layers ({', '.join(paths)})")
        mean, std = mean_std([r[1] for r in runs])
        line, = ax.plot(layers, mean, marker="o", label=label + (f" (mean of {len(runs)})" if len(runs) > 1 else ""))
        if len(runs) > 1:
            ax.fill_between(layers, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        post_layers = [l for l, p in zip(layers, post) if p]
        if post_layers and len(post_layers) < len(layers):  # mark where Mix-LN switches to Pre-LN
            ax.axvline(post_layers[-1] + 0.5, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"gradient norm ({args.which})")
    if not args.linear:
        ax.set_yscale("log")
    if args.title:
        ax.set_title(args.title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    save(fig, args.out)


if __name__ == "__main__":
    run_script(main)
