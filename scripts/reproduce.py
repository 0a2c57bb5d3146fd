"""Reproduction runners for the paper's tables: the same model and data, only the normalization
changes, at equal tokens. Runs the trainer once per configuration and seed (resuming any unfinished
run, skipping finished ones), then prints and writes the table as CSV and markdown, with the mean and
spread over seeds.

    python3 scripts/prepro_c4.py --out data/c4_padded --pad-to 256 --hub-train-files 8
    python3 scripts/reproduce.py table1 --out out/table1 -- -e 71m -i 'data/c4_padded/train_*.bin' -j data/c4_padded/val_000.bin
    python3 scripts/reproduce.py table3 --seeds 3 --protocol packed --trainer ./train_mixln_cpu --out out/t3 -- -e tiny -i data/kjv/train.bin -j data/kjv/val.bin

    # the CPU-scale studies (presets below): a BPE corpus with documents kept apart, then one command each
    python3 scripts/prepro_text.py --bpe 4096 --pad-to 128 --out data/kjv_bpe4096_pad128 data/kjv/kjv.txt
    python3 scripts/reproduce.py cpu_table1 --data data/kjv_bpe4096_pad128 --seeds 3 --out out/cpu_table1

Paper tables (the model, data and budget come after "--"; pass -j so there is a validation loss):
table1: Post-LN, DeepNorm, Pre-LN, Mix-LN (paper Table 1)
table3: Mix-LN alpha in {0, 0.125, 0.25, 0.33, 0.417, 0.5, 0.75, 1} (paper Table 3)
table5: Pre-LN and Mix-LN, plain / + scaled init / + scaled init and scaled embed (paper Table 5)

CPU-scale studies (presets: shape, schedule and budget built in; --data DIR names a prepro_text.py
output with --pad-to 128; flags after "--" are appended to every run and override the preset's):
cpu_table1: Post-LN, DeepNorm (the official code's), Pre-LN, Mix-LN 0.25, at 8 and at 24 layers
cpu_table3: Mix-LN alpha in {0, 0.125, 0.25, 0.333, 0.5, 0.75, 1} at 24 layers (0, 3, 6, 8, 12, 18, 24
            Post-LN layers; 0.333 runs as -a 0.3334, since the trainer takes floor(alpha L))
cpu_lr:     Pre-LN and Mix-LN 0.25 at peak learning rates 5e-4, 1e-3 and 5e-3, at 24 layers
Each: d 64, 2 heads, ffn 176 (-e tiny -C 64 -H 2 -F 176), -b 16 -t 128 -d 2048 (2048 positions a
step), 300 steps (614,400 positions: 0.59 of an epoch of the KJV's training split at BPE 4096, so no
text is seen twice), peak lr 1e-3 (but cpu_lr), 10% warmup, cosine to 10%, validation every 100
steps over the whole validation split, a checkpoint every 100 steps (the newest kept), seeds 1, 2, 3
unless --seeds; and after training the analysis of each final checkpoint (analyze_mixln_cpu:
per-layer gradient norms, angular distance, single-layer removal, on --analysis-batches batches of
the validation split). The budget is chosen so that each study takes about an hour on 2 quiet cores
(train_mixln_cpu at about 6,700 positions/s at 8 layers and 4,700 at 24 on the 2-core Intel Xeon;
2-4x slower while other jobs share the cores); -x N after "--" changes it for every run.

--seeds N runs seeds 1..N, --seeds 3,7,11 those seeds (-s S is added to each run; the runs are
OUT/CONFIG/seed_S). Without --seeds a paper table runs each configuration once, as OUT/CONFIG, with
the trainer's default seed or a -s given after "--".

A run is finished when its log.csv has the validation loss at its last step (-x) and it has its
final checkpoint or a DONE file (written when the trainer exits); a run that diverged (the trainer's
exit code 3, a non-finite loss, or 4, -N steps in a row whose update a non-finite gradient norm
skipped) is recorded as such in DONE. Finished runs are not run again; a rerun with other
trainer flags for a finished run stops with an error (OUT/CONFIG/.../reproduce.json holds the flags).
An unfinished run resumes from its newest checkpoint (-r), or starts over (-W 1) if it has none (or
only the final one, written just before the final validation that did not finish).
--reuse DIR (another run of this script's --out; repeatable): a run not started yet whose trainer
flags have the same values as a finished run under DIR is copied from there, with its checkpoint and
analysis, instead of trained again (the CPU trainer is deterministic: the run would write the same
log and weights); runs.csv names its source and results.md leaves its wall time out of this table's. For
example cpu_table3's alpha 0, 0.25 and 1 and cpu_lr's lr 1e-3 are cpu_table1's 24-layer runs.

Output in --out: runs.csv (every seed's final validation loss and perplexity), results.csv and
results.md (per configuration: the seeds' mean and standard deviation (n - 1) of the final
validation loss and perplexity, every seed's value, and the difference to its Pre-LN reference
paired by seed: the mean and standard deviation of loss(config, s) - loss(Pre-LN, s)), the unigram
baseline beside the table when the validation shards' directory has prepro_*.py's stats.json; with
--analyze (the presets' default), each run's DIR/analysis (done once per final checkpoint: a run
trained again is analysed again) and analysis_*.csv (per configuration and layer: mean and standard
deviation over seeds), with a summary table of the layers in results.md; and plots/ (matplotlib):
loss curves, gradient norms, angular distance and pruning, one line per configuration with a band
of one standard deviation over the seeds (one set per depth).

--protocol paper (the default): as the official Mix-LN code ran the paper's experiments. The
validation shards must be padded ones, one document per row (prepro_c4.py --pad-to 256, or
prepro_text.py --pad-to T), the validation loss is over about 10M tokens (-m 10M unless -m is given:
all of a smaller validation split) as the mean of the batches' mean losses, and Table 1's DeepNorm
row is the code's DeepNorm (-n deepnorm_paper). The training shards should be padded too (the code
trains so); packed ones get a warning. For the batches' means to be the code's, give -b as its
scripts' per-GPU batch: 256 for 71m and 130m, 128 for 250m, 32 for 1b.
--protocol packed: this project's own: any shards, -m as given, DeepNet's DeepNorm (-n deepnorm).
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_errors import BadInput, run_script  # noqa: E402
from shard_format import shard_row_tokens  # noqa: E402


class Config:
    """One configuration of a table: its name, trainer flags, the name of the configuration it is
    compared with seed by seed (None: none), and the group it is plotted with."""

    def __init__(self, name, flags, ref=None, group=""):
        self.name, self.flags, self.ref, self.group = name, list(flags), ref, group


TABLES = {
    "table1": [Config(name, flags, "Pre-LN") for name, flags in
               [("Post-LN", ["-a", "1"]), ("DeepNorm", ["-n", "deepnorm"]), ("Pre-LN", ["-a", "0"]),
                ("Mix-LN", ["-a", "0.25"])]],
    "table3": [Config(f"alpha={a}", ["-a", a], "alpha=0") for a in ["0", "0.125", "0.25", "0.33", "0.417", "0.5", "0.75", "1"]],
    "table5": [Config(f"{norm}{extra}", ["-a", alpha] + flags, "Pre-LN")
               for norm, alpha in [("Pre-LN", "0"), ("Mix-LN", "0.25")]
               for extra, flags in [("", []), (" + scaled init", ["-S", "1"]),
                                    (" + scaled init + scaled embed", ["-S", "1", "-E", "1"])]],
}

# The CPU-scale studies (issue 25). Tokens/s of train_mixln_cpu at these shapes (BPE 4096, -b 16 -t
# 128, 2 threads, OMP_WAIT_POLICY=passive, nice) on the 2-core Intel Xeon machine: see the report.
CPU_ROW = 128                       # -t, and prepro_text.py --pad-to
CPU_SHAPE = ["-e", "tiny", "-C", "64", "-H", "2", "-F", "176"]
CPU_SCHEDULE = ["-b", "16", "-t", str(CPU_ROW), "-d", "2048", "-x", "300", "-l", "1e-3", "-u", "0.1", "-q", "0.1",
                "-v", "100", "-m", "10M", "-c", "100", "-k", "1"]
NORMS = [("Post-LN", ["-a", "1"]), ("DeepNorm", ["-n", "deepnorm_paper"]), ("Pre-LN", ["-a", "0"]),
         ("Mix-LN", ["-a", "0.25"])]
STUDIES = {
    "cpu_table1": [Config(f"L{L} {name}", ["-L", str(L)] + flags, f"L{L} Pre-LN", f"L{L}")
                   for L in (8, 24) for name, flags in NORMS],
    # 0, 3, 6, 8, 12, 18 and 24 of the 24 layers Post-LN (the trainer takes floor(alpha L + 1e-9) of them,
    # so a third is passed as 0.3334: 0.333 would give 7)
    "cpu_table3": [Config(f"alpha={a}", ["-L", "24", "-a", "0.3334" if a == "0.333" else a], "alpha=0", "L24")
                   for a in ["0", "0.125", "0.25", "0.333", "0.5", "0.75", "1"]],
    "cpu_lr": [Config(f"{name} lr={lr}", ["-L", "24", "-a", alpha, "-l", lr], f"Pre-LN lr={lr}", "L24")
               for lr in ["5e-4", "1e-3", "5e-3"] for name, alpha in [("Pre-LN", "0"), ("Mix-LN", "0.25")]],
}
DEFAULT_SEEDS = [1, 2, 3]


def flag_value(flags, flag):
    """The value after the last occurrence of flag in a trainer command line, or None."""
    values = [flags[i + 1] for i in range(len(flags) - 1) if flags[i] == flag]
    return values[-1] if values else None


def shard_files(patterns):
    """The files of a trainer's comma-separated list of files and globs."""
    return [f for p in patterns.split(",") if p for f in sorted(glob.glob(p))]


def paper_protocol(configs, common):
    """The configurations and the common flags, in the official code's protocol."""
    val = flag_value(common, "-j")
    if val is None:
        raise BadInput("the paper's protocol validates: give -j with padded validation shards")
    for path in shard_files(val):
        if shard_row_tokens(path) == 0:
            raise BadInput(f"the paper's protocol validates on padded shards, one document per row "
                           f"(prepro_c4.py --pad-to 256), but {path} is packed; or use --protocol packed")
    train = flag_value(common, "-i")
    if train and any(shard_row_tokens(p) == 0 for p in shard_files(train)):
        print("warning: packed training shards; the official code trains on padded documents too", flush=True)
    configs = [Config(c.name, ["-n", "deepnorm_paper"] if c.flags == ["-n", "deepnorm"] else c.flags, c.ref, c.group)
               for c in configs]
    return configs, common if "-m" in common else common + ["-m", "10M"]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_present():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


def default_trainer():
    """The trainer make built: train_mixln where it exists and a GPU is present, else train_mixln_cpu
    (the choice scripts/demo.sh makes)."""
    gpu, cpu = os.path.join(REPO, "train_mixln"), os.path.join(REPO, "train_mixln_cpu")
    if os.access(gpu, os.X_OK) and gpu_present():
        return gpu
    if os.access(cpu, os.X_OK):
        return cpu
    raise BadInput(f"no trainer built in {REPO}: run `make train_mixln_cpu` (or `make train_mixln` on a GPU "
                   "machine), or pass --trainer")


def run_dir(out, name):
    return os.path.join(out, name.replace(" ", "_").replace("+", "plus").replace("=", "_"))


def read_log(log_path):
    """(the last train step, {step: val loss}) of a trainer's log.csv; (None, {}) if there is none."""
    if not os.path.exists(log_path):
        return None, {}
    last, val = None, {}
    with open(log_path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                step, loss = int(r["step"]), float(r["loss"])
            except (KeyError, TypeError, ValueError):
                raise BadInput(f"{log_path}: not a trainer's log.csv (step,split,loss,... rows)") from None
            if r["split"] == "val":
                val[step] = loss
            else:
                last = step if last is None else max(last, step)
    return last, val


def final_val_loss(log_path, steps=None):
    """The validation loss at the end of a run (at step `steps` when known, else at its last train
    step), or None if the log has none there."""
    last, val = read_log(log_path)
    end = steps if steps is not None else last
    if end is None:
        return val[max(val)] if val and steps is None else None
    return val.get(end)


def parse_steps(flags):
    """-x as an integer (the trainer takes 1e3 too), or None when the preset's default applies."""
    x = flag_value(flags, "-x")
    try:
        return int(float(x)) if x is not None else None
    except ValueError:
        return None


def done_status(directory):
    path = os.path.join(directory, "DONE")
    return open(path).read().strip() if os.path.exists(path) else None


def finished_status(directory, flags):
    """'ok' or 'diverged' for a finished run, None for one still to run (see the module's help)."""
    status = done_status(directory)
    if status == "diverged":
        return status
    steps = parse_steps(flags)
    if final_val_loss(os.path.join(directory, "log.csv"), steps) is None:
        return None
    final_ckpt = steps is not None and os.path.exists(os.path.join(directory, f"ckpt_{steps:08d}.bin"))
    return "ok" if status == "ok" or final_ckpt else None


def check_flags(directory, flags):
    """Refuses a run directory that reproduce.py ran with other trainer flags."""
    path = os.path.join(directory, "reproduce.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            recorded = json.load(f)["flags"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{path}: corrupted (not reproduce.py's JSON); delete it") from None
    if recorded != flags:
        raise BadInput(f"{directory} was run with other trainer flags ({' '.join(recorded)}), not ({' '.join(flags)}): "
                       "use another --out, or delete that directory to run it again")


def run_record(directory):
    """reproduce.json of a run: {} if there is none or it is unreadable."""
    try:
        with open(os.path.join(directory, "reproduce.json")) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def run_seconds(directory):
    """The trainer's wall time of a run so far, as reproduce.json records it (0 if unknown)."""
    try:
        return float(run_record(directory).get("seconds", 0))
    except (ValueError, TypeError):
        return 0.0


def effective_flags(flags):
    """A trainer command line as {flag: value}: every trainer flag takes one value, and the last wins."""
    return dict(zip(flags[::2], flags[1::2]))


def find_reusable(reuse_dirs, flags):
    """A finished run under one of reuse_dirs (another study's --out) that ran these very flags, or None."""
    want = effective_flags(flags)
    for root in reuse_dirs:
        for path in sorted(glob.glob(os.path.join(root, "**", "reproduce.json"), recursive=True)):
            directory = os.path.dirname(path)
            try:
                with open(path) as f:
                    recorded = json.load(f)["flags"]
            except (ValueError, KeyError, TypeError, OSError):
                continue
            if effective_flags(recorded) == want and done_status(directory) == "ok" \
                    and finished_status(directory, recorded) == "ok":
                return directory
    return None


def reuse_run(source, directory, flags):
    """Copies a finished run of the same flags from another study (the trainer is deterministic: its
    rerun would be bitwise the same) and records where it came from and its original wall time."""
    shutil.copytree(source, directory)
    with open(os.path.join(source, "reproduce.json")) as f:
        seconds = json.load(f).get("seconds", 0)
    with open(os.path.join(directory, "reproduce.json"), "w") as f:
        json.dump({"flags": flags, "seconds": seconds, "copied_from": os.path.abspath(source)}, f)
    print(f"copied {source} -> {directory} (same trainer flags)", flush=True)


def run_one(trainer, directory, flags, dry_run=False, reuse_dirs=()):
    """Runs (or resumes) one run unless it is finished; returns ('ok' | 'diverged' | 'pending', ran)."""
    check_flags(directory, flags)
    status = finished_status(directory, flags)
    if status:
        if done_status(directory) != status:  # finished, but killed before DONE was written
            with open(os.path.join(directory, "DONE"), "w") as f:
                f.write(status + "\n")
        return status, False
    source = find_reusable(reuse_dirs, flags) if not os.path.exists(directory) else None
    if source:
        if not dry_run:
            reuse_run(source, directory, flags)
            return "ok", False
        print(f"+ copy {source} -> {directory}", flush=True)
        return "pending", False
    cmd = [trainer] + flags + ["-o", directory]
    steps = parse_steps(flags)
    if steps is not None and os.path.exists(os.path.join(directory, f"ckpt_{steps:08d}.bin")):
        cmd += ["-W", "1"]  # killed in the final validation, after the last checkpoint: nothing left to resume
    elif glob.glob(os.path.join(directory, "ckpt_*.bin")):
        cmd += ["-r", directory]  # the trainer refuses it if the flags differ from the run's (its run.txt)
    elif os.path.exists(directory) and [n for n in os.listdir(directory) if n != "reproduce.json"]:
        cmd += ["-W", "1"]  # died before its first checkpoint: nothing to resume, so start it over
    print("+ " + " ".join(cmd), flush=True)
    if dry_run:
        return "pending", False
    if os.path.exists(os.path.join(directory, "DONE")):
        os.remove(os.path.join(directory, "DONE"))
    os.makedirs(directory, exist_ok=True)
    seconds = run_seconds(directory)
    with open(os.path.join(directory, "reproduce.json"), "w") as f:
        json.dump({"flags": flags, "seconds": seconds}, f)
    stale = os.path.join(directory, "analysis", "DONE")
    if os.path.exists(stale):  # of an earlier final checkpoint: analyse the new one
        os.remove(stale)
    start = time.time()
    rc = subprocess.call(cmd)
    with open(os.path.join(directory, "reproduce.json"), "w") as f:  # the wall time, over every resume
        json.dump({"flags": flags, "seconds": round(seconds + time.time() - start, 1)}, f)
    if rc == 0:
        status = "ok"
    elif rc in (3, 4):
        # the trainer stops on a non-finite loss with exit code 3, and with 4 when -N steps in a row
        # had a non-finite gradient norm and skipped their update (the 'skipped updates' stop)
        status = "diverged"
    else:
        raise BadInput(f"{' '.join(cmd)} failed with exit code {rc}; rerun this script to resume")
    with open(os.path.join(directory, "DONE"), "w") as f:
        f.write(status + "\n")
    return status, True


def analyze_one(analyzer, directory, val, batches, dry_run=False):
    """analyze_mixln_cpu on a finished run's final checkpoint, into DIR/analysis (skipped when done
    with these settings); returns whether it ran."""
    out = os.path.join(directory, "analysis")
    settings = {"val": val, "batches": batches}
    marker = os.path.join(out, "DONE")
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                if json.load(f) == settings:
                    return False
        except ValueError:
            pass
    cmd = [analyzer, "-f", directory, "-A", "grad,angle,prune", "-i", val, "-j", val, "-m", str(batches), "-o", out]
    print("+ " + " ".join(cmd), flush=True)
    if dry_run:
        return False
    if subprocess.call(cmd) != 0:
        raise BadInput(f"{' '.join(cmd)} failed; rerun this script to redo it")
    with open(marker, "w") as f:
        json.dump(settings, f)
    return True


def mean_std(values):
    """(mean, standard deviation with n - 1, or nan for one value); (nan, nan) for none."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(configs, runs):
    """Per configuration: the seeds' losses, mean and spread, and the paired difference to its ref.
    runs: {(config name, seed): (status, loss or None)}."""
    seeds = sorted({s for _, s in runs}, key=lambda s: (s is None, s))
    rows = []
    for c in configs:
        mine = {s: runs[(c.name, s)] for s in seeds if (c.name, s) in runs}
        ok = {s: loss for s, (status, loss) in mine.items() if status == "ok" and loss is not None}
        losses = [ok[s] for s in sorted(ok, key=lambda s: (s is None, s))]
        row = {"config": c.name, "ref": c.ref or "", "seeds": len(mine), "ok": len(ok),
               "diverged": sum(1 for status, _ in mine.values() if status == "diverged"),
               "pending": sum(1 for status, _ in mine.values() if status == "pending"),
               "per_seed": {s: (status, loss) for s, (status, loss) in mine.items()}}
        row["loss_mean"], row["loss_std"] = mean_std(losses)
        row["ppl_mean"], row["ppl_std"] = mean_std([math.exp(l) for l in losses])
        pairs = []
        if c.ref and c.ref != c.name:
            for s, loss in ok.items():
                status, ref_loss = runs.get((c.ref, s), (None, None))
                if status == "ok" and ref_loss is not None:
                    pairs.append((loss - ref_loss, math.exp(loss) - math.exp(ref_loss)))
        row["pairs"] = len(pairs)
        row["dloss_mean"], row["dloss_std"] = mean_std([d for d, _ in pairs])
        row["dppl_mean"], row["dppl_std"] = mean_std([d for _, d in pairs])
        rows.append(row)
    return rows


def fmt(value, digits):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def pm(mean, std, digits, sign=False):
    if math.isnan(mean):
        return "-"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")


def seed_cell(status, loss):
    return "diverged" if status == "diverged" else "pending" if status == "pending" else fmt(loss, 4) or "-"


def unigram_baseline(common):
    """(loss, stats.json path) of the unigram baseline that prepro_*.py wrote beside the first
    validation shard, or None."""
    val = flag_value(common, "-j")
    files = shard_files(val) if val else []
    if not files:
        return None
    path = os.path.join(os.path.dirname(files[0]), "stats.json")
    try:
        with open(path) as f:
            return float(json.load(f)["unigram_val_loss"]), path
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_tables(out, name, protocol, common, seeds, configs, runs, dirs):
    """runs.csv, results.csv and results.md; returns the markdown table and the unigram baseline."""
    rows = summarize(configs, runs)
    total, copied = 0.0, {}  # copied: the wall time of the runs copied from other studies, by source study
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "seed", "status", "val_loss", "val_ppl", "wall_s", "dir", "copied_from"])
        for c in configs:
            for s in seeds:
                status, loss = runs[(c.name, s)]
                seconds = run_seconds(dirs[(c.name, s)])
                source = run_record(dirs[(c.name, s)]).get("copied_from", "")
                if source:
                    study = os.path.basename(os.path.dirname(os.path.dirname(source)) if s is not None
                                             else os.path.dirname(source))
                    copied[study] = copied.get(study, 0.0) + seconds
                else:
                    total += seconds
                w.writerow([c.name, "" if s is None else s, status, fmt(loss, 6),
                            fmt(math.exp(loss), 4) if loss is not None else "", fmt(seconds, 1), dirs[(c.name, s)],
                            source])
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "seeds", "ok", "diverged", "val_loss_mean", "val_loss_std", "val_ppl_mean", "val_ppl_std",
                    "ref", "pairs", "delta_loss_mean", "delta_loss_std", "delta_ppl_mean", "delta_ppl_std",
                    "seed_list", "val_losses"])
        for r in rows:
            w.writerow([r["config"], r["seeds"], r["ok"], r["diverged"], fmt(r["loss_mean"], 6), fmt(r["loss_std"], 6),
                        fmt(r["ppl_mean"], 4), fmt(r["ppl_std"], 4), r["ref"], r["pairs"], fmt(r["dloss_mean"], 6),
                        fmt(r["dloss_std"], 6), fmt(r["dppl_mean"], 4), fmt(r["dppl_std"], 4),
                        ";".join("" if s is None else str(s) for s in r["per_seed"]),
                        ";".join(seed_cell(*v) for v in r["per_seed"].values())])
    baseline = unigram_baseline(common)
    if seeds == [None]:  # one run per configuration, no --seeds: the table as before
        lines = ["| normalization | val loss | val perplexity |", "|---|---|---|"]
        for r in rows:
            status, loss = r["per_seed"][None]
            cell = f"{loss:.4f} | {math.exp(loss):.2f}" if status == "ok" and loss is not None else \
                "pending | pending" if status == "pending" else "diverged | diverged"
            lines.append(f"| {r['config']} | {cell} |")
        if baseline:
            lines.append(f"| unigram baseline | {baseline[0]:.4f} | {math.exp(baseline[0]):.2f} |")
    else:
        refs = {r["ref"] for r in rows if r["ref"]}
        ref_name = refs.pop() if len(refs) == 1 else "its Pre-LN"
        lines = [f"| configuration | seeds | val loss | val perplexity | Δ loss vs {ref_name} (paired) | Δ ppl vs {ref_name} | "
                 f"val loss per seed ({', '.join(map(str, seeds))}) |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            n = f"{r['ok']}/{r['seeds']}" + (f", {r['diverged']} diverged" if r["diverged"] else "") + \
                (f", {r['pending']} pending" if r["pending"] else "")
            if r["ref"] == r["config"]:
                dloss = dppl = "(reference)"
            elif not r["ref"]:
                dloss = dppl = "-"
            else:
                dloss = pm(r["dloss_mean"], r["dloss_std"], 4, True) + (f" (n={r['pairs']})" if r["pairs"] else "")
                dppl = pm(r["dppl_mean"], r["dppl_std"], 2, True)
            per_seed = ", ".join(seed_cell(*r["per_seed"][s]) if s in r["per_seed"] else "-" for s in seeds)
            lines.append(f"| {r['config']} | {n} | {pm(r['loss_mean'], r['loss_std'], 4)} | "
                         f"{pm(r['ppl_mean'], r['ppl_std'], 2)} | {dloss} | {dppl} | {per_seed} |")
        if baseline:
            lines.append(f"| unigram baseline | | {baseline[0]:.4f} | {math.exp(baseline[0]):.2f} | | | |")
    table = "\n".join(lines)
    notes = []
    if seeds != [None]:
        notes.append(f"seeds {', '.join(map(str, seeds))}; mean ± standard deviation (n - 1) over the seeds that "
                     "finished; Δ: the mean ± standard deviation over seeds of loss(config, seed) - loss(reference, "
                     "same seed)")
    if total:
        notes.append(f"the trainer's wall time over these runs: {total / 60:.1f} min (runs.csv has each run's)")
    for study, seconds in sorted(copied.items()):
        notes.append(f"runs with the same trainer flags copied from {study} (--reuse; {seconds / 60:.1f} min of "
                     "trainer wall time there, not counted above): runs.csv names them")
    if baseline:
        notes.append(f"unigram baseline: the cross-entropy on val of train's token frequencies ({baseline[1]})")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"{name}, {protocol} protocol, trainer flags: {' '.join(common)}\n\n{table}\n")
        if notes:
            f.write("\n" + "\n".join(notes) + "\n")
    return table, baseline


def read_csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def aggregate_analysis(out, configs, seeds, dirs):
    """analysis_grad_norms.csv, analysis_angular_distance.csv, analysis_pruning.csv: per
    configuration and layer, the mean and standard deviation over the seeds analysed; returns
    {config: [analysis directories]}."""
    found = {c.name: [os.path.join(dirs[(c.name, s)], "analysis") for s in seeds
                      if os.path.exists(os.path.join(dirs[(c.name, s)], "analysis", "DONE"))] for c in configs}
    specs = [("grad_norms.csv", ["layer"], ["post_ln"], ["attention", "mlp", "total"]),
             ("angular_distance.csv", ["layer", "n"], [], ["distance"]),
             ("pruning.csv", ["layer"], [], ["loss", "delta_loss", "delta_ppl"])]
    for name, keys, carried, values in specs:
        with open(os.path.join(out, f"analysis_{name}"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["config"] + keys + carried + ["seeds"] + [f"{v}_{s}" for v in values for s in ("mean", "std")])
            for c in configs:
                tables = [read_csv_rows(os.path.join(d, name)) for d in found[c.name]]
                if not tables:
                    continue
                for i, row in enumerate(tables[0]):
                    cells = [c.name] + [row[k] for k in keys] + [row[k] for k in carried] + [len(tables)]
                    for v in values:
                        m, s = mean_std([float(t[i][v]) for t in tables if i < len(t)])
                        cells += [fmt(m, 6), fmt(s, 6)]
                    w.writerow(cells)
    return found


def layer_summary(configs, analysed):
    """A markdown table of per-seed summaries of the analysis, mean ± standard deviation over seeds:
    the gradient norm of the last layer over the first's, and, over the deeper half of the layers
    (l >= L/2), the mean angular distance to the next layer and the mean increase in loss when one
    of them is removed (the paper's claims: deep Pre-LN layers change little and matter little)."""
    lines = ["| configuration | seeds analysed | grad norm last / first layer | angular distance to the next "
             "layer, deeper half | Δ loss removing one layer, deeper half | Δ loss removing one layer, shallower half |",
             "|---|---|---|---|---|---|"]
    for c in configs:
        dirs = analysed.get(c.name) or []
        if not dirs:
            continue
        ratio, angle, deep, shallow = [], [], [], []
        for d in dirs:
            g = sorted(read_csv_rows(os.path.join(d, "grad_norms.csv")), key=lambda r: int(r["layer"]))
            L = len(g)
            ratio.append(float(g[-1]["total"]) / float(g[0]["total"]) if float(g[0]["total"]) else math.nan)
            a = [float(r["distance"]) for r in read_csv_rows(os.path.join(d, "angular_distance.csv"))
                 if r["n"] == "1" and int(r["layer"]) >= L // 2]
            angle.append(statistics.fmean(a))
            p = [r for r in read_csv_rows(os.path.join(d, "pruning.csv")) if r["layer"] != "none"]
            deep.append(statistics.fmean(float(r["delta_loss"]) for r in p if int(r["layer"]) >= L // 2))
            shallow.append(statistics.fmean(float(r["delta_loss"]) for r in p if int(r["layer"]) < L // 2) if L > 1 else math.nan)
        lines.append(f"| {c.name} | {len(dirs)} | {pm(*mean_std(ratio), 3)} | {pm(*mean_std(angle), 3)} | "
                     f"{pm(*mean_std(deep), 4, True)} | {pm(*mean_std(shallow), 4, True)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot_all(out, configs, seeds, dirs, analysed, baseline):
    """plots/: final.png, every configuration's final validation loss (seeds and their mean ± sd,
    the unigram baseline); per group of configurations (a depth), the loss curves and, for analysed
    runs, the gradient norms, angular distance and pruning, each configuration the mean over its seeds
    with a band of one standard deviation. Skipped (with a note) without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("note: no matplotlib, so no plots (pip install -r scripts/requirements.txt)")
        return
    import contextlib
    import importlib
    import io
    plots = os.path.join(out, "plots")
    groups = {}
    for c in configs:
        groups.setdefault(c.group, []).append(c)

    def plot(script, name, items, *extra):
        """Runs a plot script's main in this process (matplotlib is imported once)."""
        if not items:
            return
        argv = ["-o", os.path.join(plots, name + ".png"), *extra, *items]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                importlib.import_module(script[:-len(".py")]).main(argv)
        except (Exception, SystemExit) as e:  # a plot that fails leaves the table and the other plots
            print(f"warning: {script} {' '.join(argv)} failed: {e}", flush=True)

    plot("plot_final.py", "final", [os.path.join(out, "runs.csv")],
         *(["--baseline", str(baseline[0])] if baseline else []))
    for group, members in groups.items():
        prefix = f"{group}_" if group else ""
        logs = []
        for c in members:
            paths = [os.path.join(dirs[(c.name, s)], "log.csv") for s in seeds]
            paths = [p for p in paths if os.path.exists(p)]
            if paths:
                logs.append(f"{c.name}={','.join(paths)}")
        plot("plot_loss.py", prefix + "loss", logs, "--title", group or "loss")
        plot("plot_loss.py", prefix + "val_loss", logs, "--val-only", "--title", group or "validation loss")
        items = {name: [f"{c.name}={','.join(os.path.join(d, name) for d in analysed[c.name])}"
                        for c in members if analysed.get(c.name)]
                 for name in ("grad_norms.csv", "angular_distance.csv", "pruning.csv")}
        plot("plot_grad_norms.py", prefix + "grad_norms", items["grad_norms.csv"], "--title", group or "gradient norms")
        plot("plot_angular_distance.py", prefix + "angular_distance", items["angular_distance.csv"])
        plot("plot_angular_distance.py", prefix + "angular_distance_rows", items["angular_distance.csv"], "--row-normalize")
        plot("plot_angular_distance.py", prefix + "angular_distance_next", items["angular_distance.csv"],
             "--neighbour", "1", "--title", group or "angular distance")
        plot("plot_pruning.py", prefix + "pruning", items["pruning.csv"], "--title", group or "pruning")
    if os.path.isdir(plots):
        print(f"plots in {plots}")


def parse_seeds(text):
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(1, int(text) + 1))
    except ValueError:
        raise BadInput(f"--seeds {text}: give a count N (seeds 1..N) or a comma-separated list") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BadInput(f"--seeds {text}: give at least one seed, none twice, none negative")
    return seeds


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=sorted(TABLES) + sorted(STUDIES))
    ap.add_argument("--out", help="one subdirectory per configuration (and seed), plus results.csv / results.md "
                    "(required for the paper tables; default out/NAME for the CPU studies)")
    ap.add_argument("--seeds", help="N (seeds 1..N) or a list 1,2,3: every configuration for each seed "
                    "(default: the CPU studies 1,2,3; the paper tables one run with the trainer's seed)")
    ap.add_argument("--data", help="CPU studies: a prepro_text.py --pad-to 128 output directory (train*.bin, val*.bin)")
    ap.add_argument("--trainer", help="trainer binary (default: train_mixln if built and a GPU is present, "
                    "else train_mixln_cpu, from the repository root)")
    ap.add_argument("--analyzer", help="analyze_mixln_cpu binary (default: the repository root's)")
    ap.add_argument("--analyze", action=argparse.BooleanOptionalAction, default=None,
                    help="analyse each finished run's final checkpoint (default: on for the CPU studies)")
    ap.add_argument("--analysis-batches", type=int, default=5, help="validation batches per analysis (default 5)")
    ap.add_argument("--configs", help="only the configurations whose name matches this regular expression")
    ap.add_argument("--protocol", choices=["paper", "packed"], default="paper",
                    help="paper: the official code's data, validation and DeepNorm (default); packed: this project's")
    ap.add_argument("--reuse", action="append", default=[], metavar="DIR",
                    help="another run's --out (repeatable): a run not started here whose trainer flags match a "
                    "finished run there (same values, any order) is copied instead of run again")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the runs still to do, run nothing")
    ap.add_argument("--no-plots", action="store_true", help="no plots")
    args = ap.parse_args(argv[:split])
    common = argv[split + 1:]
    study = args.table in STUDIES
    if not study and split == len(argv):
        raise BadInput("put the trainer flags after '--' (see -h)")
    if "-o" in common or "-r" in common:
        raise BadInput("-o and -r are set per run by this script")
    if args.analysis_batches < 1:
        raise BadInput("--analysis-batches must be at least 1")
    seeds = parse_seeds(args.seeds) if args.seeds else (DEFAULT_SEEDS if study else [None])
    if seeds != [None] and "-s" in common:
        raise BadInput("-s is set per run by --seeds; leave it out of the trainer flags")
    if args.out is None:
        if not study:
            raise BadInput("--out is required for the paper tables")
        args.out = os.path.join("out", args.table)
    if args.trainer is None:
        args.trainer = default_trainer()
    analyze = args.analyze if args.analyze is not None else study
    if analyze and args.analyzer is None:
        args.analyzer = os.path.join(REPO, "analyze_mixln_cpu")
        if not os.access(args.analyzer, os.X_OK):
            raise BadInput(f"no {args.analyzer}: run `make analyze_mixln_cpu`, pass --analyzer, or --no-analyze")

    if study:
        if args.data is None:
            raise BadInput(f"{args.table} trains on --data DIR: a prepro_text.py output with --pad-to {CPU_ROW}, e.g. "
                           f"python3 scripts/prepro_text.py --bpe 4096 --pad-to {CPU_ROW} --out data/kjv_bpe4096_pad{CPU_ROW} "
                           "data/kjv/kjv.txt")
        train, val = os.path.join(args.data, "train*.bin"), os.path.join(args.data, "val*.bin")
        for pattern in (train, val):
            files = shard_files(pattern)
            if not files:
                raise BadInput(f"{pattern}: no shards (prepare --data with prepro_text.py --pad-to {CPU_ROW})")
            rows = {shard_row_tokens(p) for p in files}
            want = int(flag_value(common, "-t") or CPU_ROW)
            if rows != {want}:
                raise BadInput(f"{files[0]}: {'packed' if rows == {0} else f'rows of {sorted(rows)}'}, but {args.table} "
                               f"takes padded rows of -t {want} (prepro_text.py --pad-to {want})")
        configs = STUDIES[args.table]
        common = CPU_SHAPE + CPU_SCHEDULE + ["-i", train, "-j", val] + common
        protocol = "paper (padded documents)"
    else:
        configs = TABLES[args.table]
        protocol = args.protocol
        if args.protocol == "paper":
            configs, common = paper_protocol(configs, common)
    if args.configs:
        pattern = re.compile(args.configs)
        chosen = [c for c in configs if pattern.search(c.name)]
        if not chosen:
            raise BadInput(f"--configs {args.configs}: matches none of {', '.join(c.name for c in configs)}")
        # a chosen configuration's reference is run too, for the paired differences
        names = {c.name for c in chosen} | {c.ref for c in chosen if c.ref}
        configs = [c for c in configs if c.name in names]

    os.makedirs(args.out, exist_ok=True)
    total = len(configs) * len(seeds)
    print(f"{args.table}: {len(configs)} configurations x {len(seeds)} seed(s) = {total} runs in {args.out}"
          + (f" (seeds {', '.join(map(str, seeds))})" if seeds != [None] else ""), flush=True)
    runs, dirs, ran = {}, {}, 0
    for seed in seeds:
        for c in configs:
            directory = run_dir(args.out, c.name)
            flags = common + c.flags
            if seed is not None:
                directory = os.path.join(directory, f"seed_{seed}")
                flags = flags + ["-s", str(seed)]
            status, did = run_one(args.trainer, directory, flags, args.dry_run, args.reuse)
            ran += did
            loss = final_val_loss(os.path.join(directory, "log.csv"), parse_steps(flags)) if status == "ok" else None
            runs[(c.name, seed)], dirs[(c.name, seed)] = (status, loss), directory
            if analyze and status == "ok":
                if glob.glob(os.path.join(directory, "ckpt_*.bin")):
                    ran += analyze_one(args.analyzer, directory, flag_value(common, "-j"), args.analysis_batches,
                                       args.dry_run)
                else:
                    print(f"note: {directory} has no checkpoint left to analyse", flush=True)
    table, baseline = write_tables(args.out, args.table, protocol, common, seeds, configs, runs, dirs)
    analysed = aggregate_analysis(args.out, configs, seeds, dirs) if analyze else {}
    summary = layer_summary(configs, analysed)
    if summary:
        with open(os.path.join(args.out, "results.md"), "a") as f:
            f.write(f"\nThe final checkpoints' layers (analyze_mixln_cpu, {args.analysis_batches} validation batches; "
                    f"per-layer means in analysis_*.csv, plots in plots/):\n\n{summary}\n")
    if not args.no_plots and not args.dry_run:
        plot_all(args.out, configs, seeds, dirs, analysed, baseline)
    print(table)
    if summary:
        print(summary)
    if baseline:
        print(f"unigram baseline on val: {baseline[0]:.4f} nats/token (perplexity {math.exp(baseline[0]):.2f})")
    print(f"{ran} runs or analyses done now; results in {os.path.join(args.out, 'results.md')}")


if __name__ == "__main__":
    run_script(main)
