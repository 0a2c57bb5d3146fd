#!/usr/bin/env python3
"""Guards read from the compiled code (issue 23): the sm_90a SASS and resource usage of every kernel in
an object, read with cuobjdump, checked against an expectations file (test/sass_expectations.txt), or
printed as a per-kernel table (docs/sass.md). No GPU needed.

    python3 scripts/sass_guards.py check --expect test/sass_expectations.txt bf16=build/test_gpu_trainer.o
    python3 scripts/sass_guards.py table bf16=build/test_gpu_trainer.o fp32=build/sass/fp32/train_mixln.cubin

An OBJECT is anything cuobjdump reads: a .cubin, or a host object or binary with an sm_90a fatbin in it.
cuobjdump and the nvdisasm it runs come from $CUOBJDUMP and $NVDISASM, the PATH, or PyPI's
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (scripts/requirements.txt).

Every kernel is checked for (the expectations file's header says how a line relaxes or adds to these):
  - no local memory: LOCAL and STACK 0 in `cuobjdump -res-usage` (a spill or a stack frame);
  - registers: at most 255, at most the cap ptxas applied (EIATTR_MAXREG_COUNT: __launch_bounds__,
    min blocks included), and the block's registers (per warp rounded up to 256, the allocation unit
    of sm_90) at most 65536, for the threads of __launch_bounds__ (EIATTR_MAX_THREADS), else threads=N;
  - the features its line requires: at least one instruction of that kind in its SASS.
check ends with "sass_guards: N passed, M failed, K pending" and exits 1 if any check failed, 2 on
a usage error (an unreadable object, a malformed expectations line, no cuobjdump).
"""
import argparse
import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

ARCH = "sm_90a"
REGISTER_FILE = 65536  # 32-bit registers per SM, and the most one block may use (sm_90)
REGISTERS_PER_THREAD = 255
WARP_REGISTER_UNIT = 256  # registers are allocated to a warp in units of 256

# Features a line can require; each counts instructions of one kind in a kernel's SASS.
FEATURES = {
    "hmma": "HMMA (tensor-core matrix multiply-accumulate: mma.sync, wmma)",
    "ldsm": "LDSM (ldmatrix: shared memory to mma fragments)",
    "ldg128": "a 128-bit global load (LDG.E.128)",
    "stg128": "a 128-bit global store (STG.E.128)",
    "ldgsts": "LDGSTS (cp.async: global to shared without registers)",
}
PRECISIONS = ("bf16", "fp32")  # the labels an expectations line may name besides the objects' own
TABLE_COLUMNS = ["ldg128", "stg128", "ldg16", "stg16", "hmma", "ldsm", "ldgsts"]


class UsageError(Exception):
    pass


def find_tool(name, package):
    """$NAME (upper case), else NAME on the PATH, else the binary that PyPI's PACKAGE installs."""
    if os.environ.get(name.upper()):
        return os.environ[name.upper()]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for f in (dist.files or []) if dist else []:
        if f.name == name and f.parent.name == "bin":
            path = str(dist.locate_file(f))
            if os.access(path, os.X_OK):
                return path
    raise UsageError(f"{name} not found (not on the PATH, no PyPI {package}): "
                     "python3 -m pip install -r scripts/requirements.txt")


def find_tools():
    """cuobjdump, nvdisasm, and the environment to run cuobjdump in: its -sass runs nvdisasm from the PATH."""
    cuobjdump = find_tool("cuobjdump", "nvidia-cuda-cuobjdump")
    nvdisasm = find_tool("nvdisasm", "nvidia-cuda-nvdisasm")
    env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(nvdisasm)) + os.pathsep + os.environ.get("PATH", ""))
    return cuobjdump, nvdisasm, env


def cuobjdump(tools, option, path):
    tool, _, env = tools
    result = subprocess.run([tool, option, "-arch", ARCH, path], capture_output=True, text=True, env=env)
    if result.returncode != 0 or ".nv.info." not in result.stdout and "Function" not in result.stdout:
        raise UsageError(f"{tool} {option} {path} found no {ARCH} code: {result.stderr.strip()[:300]}")
    return result.stdout


def parse_res_usage(text):
    """{mangled name: {"REG": n, "STACK": n, "SHARED": n, "LOCAL": n}} from cuobjdump -res-usage."""
    usage, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
        elif name and "REG:" in line:
            usage[name] = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            name = None
    return usage


def parse_kernel_info(text):
    """{mangled kernel name: {"maxreg": n, "max_threads": n or None}} from the .nv.info.NAME sections of
    cuobjdump -elf: only kernels (entry functions) have such a section."""
    info, name, attribute = {}, None, None
    for line in text.splitlines():
        if line.startswith("."):  # a section starts
            name = line[len(".nv.info."):].strip() if line.startswith(".nv.info.") else None
            if name:
                info[name] = {"maxreg": None, "max_threads": None}
            continue
        if not name:
            continue
        m = re.match(r"\s*Attribute:\s*(\w+)", line)
        if m:
            attribute = m.group(1)
            continue
        m = re.match(r"\s*Value:\s*(.*)", line)
        if m and attribute == "EIATTR_MAXREG_COUNT":
            info[name]["maxreg"] = int(m.group(1).split()[0], 16)
        elif m and attribute == "EIATTR_MAX_THREADS":
            x, y, z = (int(v, 16) for v in m.group(1).split()[:3])
            info[name]["max_threads"] = x * y * z
    return info


INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def classify(opcode):
    """The table's and the features' names for one SASS opcode (e.g. LDG.E.128.CONSTANT -> ldg128)."""
    parts = opcode.split(".")
    kinds = []
    if parts[0] in ("LDG", "STG"):
        if "128" in parts:
            kinds.append(parts[0].lower() + "128")
        elif "U16" in parts or "S16" in parts:
            kinds.append(parts[0].lower() + "16")
    elif parts[0] in ("HMMA", "LDSM", "LDGSTS"):
        kinds.append(parts[0].lower())
    return kinds


def parse_sass(text):
    """{mangled name: Counter of classify()'s kinds} from cuobjdump -sass."""
    counts, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            counts[name] = Counter()
            continue
        m = INSTRUCTION.search(line)
        if m and name:
            counts[name].update(classify(m.group(1)))
    return counts


def base_name(demangled):
    """A demangled kernel's name without its return type and parameters:
    'void ns::k<128>(float*, int)' -> 'ns::k<128>'."""
    name = demangled[5:] if demangled.startswith("void ") else demangled
    depth = 0
    for i, c in enumerate(name):
        depth += (c == "<") - (c == ">")
        if c == "(" and depth == 0:
            return name[:i]
    return name


def demangle(names):
    names = list(names)
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise UsageError(f"c++filt (binutils) failed: {e}")
    return {n: base_name(d) for n, d in zip(names, out.stdout.splitlines())}


def read_kernels(path):
    """The kernels of one object: a list of dicts, one per kernel, sorted by name."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file (build it first: see the Makefile's sass-table)")
    tools = find_tools()
    usage = parse_res_usage(cuobjdump(tools, "-res-usage", path))
    info = parse_kernel_info(cuobjdump(tools, "-elf", path))
    sass = parse_sass(cuobjdump(tools, "-sass", path))
    names = demangle(info)
    kernels = []
    for mangled, name in names.items():
        if mangled not in usage or mangled not in sass:
            raise UsageError(f"{path}: kernel {name} has .nv.info but no resource usage or SASS")
        kernels.append({"name": name, "mangled": mangled, **usage[mangled], **info[mangled], "sass": sass[mangled]})
    return sorted(kernels, key=lambda k: k["name"])


def parse_expectations(path):
    """Rules, in file order: {"pattern", "line", "threads", "local_ok", "features": [(name, label, pending item)]},
    label and pending item None where the token has none."""
    rules = []
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            tokens = raw.split("#", 1)[0].split()
            if not tokens:
                continue
            rule = {"pattern": tokens[0], "line": lineno, "threads": None, "local_ok": False, "features": []}
            for token in tokens[1:]:
                m = re.fullmatch(r"(\w+)(?:@(\w+))?(?::pending\(([\w.]+)\))?", token)
                if token.startswith("threads="):
                    if not token[8:].isdigit() or not 1 <= int(token[8:]) <= 1024:
                        raise UsageError(f"{path}:{lineno}: threads= wants a block size 1..1024: {token}")
                    rule["threads"] = int(token[8:])
                elif token == "local-ok":
                    rule["local_ok"] = True
                elif m and m.group(1) in FEATURES:
                    rule["features"].append(m.groups())
                else:
                    raise UsageError(f"{path}:{lineno}: unknown token {token!r} (features: {', '.join(FEATURES)}; "
                                     "FEATURE[@LABEL][:pending(ITEM)], threads=N, local-ok)")
            rules.append(rule)
    return rules


def check_kernel(kernel, rule, path, label):
    """[(status, check name, detail)] for one kernel of the object LABEL under its rule; status PASS, FAIL
    or PENDING."""
    results = []
    local = kernel["LOCAL"] + kernel["STACK"]
    if rule["local_ok"]:
        results.append(("PASS", "local memory", f"LOCAL {kernel['LOCAL']} STACK {kernel['STACK']} (local-ok)"))
    else:
        results.append(("PASS" if local == 0 else "FAIL", "local memory",
                        f"LOCAL {kernel['LOCAL']} STACK {kernel['STACK']} (want 0: a spill or a stack frame)"))

    # The threads of __launch_bounds__ where the kernel has one (a launch with more fails), else threads=.
    regs, cap, bound = kernel["REG"], kernel["maxreg"], kernel["max_threads"]
    threads = bound or rule["threads"]
    problems = []
    if regs > REGISTERS_PER_THREAD:
        problems.append(f"over {REGISTERS_PER_THREAD} per thread")
    if cap is not None and regs > cap:
        problems.append(f"over ptxas's cap {cap}")
    if threads is None:
        problems.append("no __launch_bounds__ and no threads= in " + os.path.basename(path))
    else:
        warps = -(-threads // 32)
        per_warp = -(-regs * 32 // WARP_REGISTER_UNIT) * WARP_REGISTER_UNIT
        if warps * per_warp > REGISTER_FILE:
            problems.append(f"{warps} warps x {per_warp} = {warps * per_warp} registers per block, over {REGISTER_FILE}")
    source = "__launch_bounds__" if bound else "threads="
    if bound and rule["threads"] and rule["threads"] != bound:
        source += f"; the line's threads={rule['threads']} not used"
    detail = f"{regs} per thread x {threads} threads ({source}), cap {cap}"
    results.append(("FAIL" if problems else "PASS", "registers", detail + ("; " + "; ".join(problems) if problems else "")))

    for feature, only, pending in rule["features"]:
        if only not in (None, label):
            continue
        count = kernel["sass"][feature]
        what = f"{count} x {FEATURES[feature]}"
        if pending:
            note = " (already there: drop its :pending)" if count else ""
            results.append(("PENDING", feature, f"{what}; issue item {pending}{note}"))
        else:
            results.append(("PASS" if count else "FAIL", feature, what))
    return results


def run_check(expect, objects):
    rules = parse_expectations(expect)
    labels = {label for label, _ in objects} | set(PRECISIONS)
    for rule in rules:
        for feature, only, _ in rule["features"]:
            if only is not None and only not in labels:
                raise UsageError(f"{expect}:{rule['line']}: {feature}@{only}: no object is labelled {only} "
                                 f"(known labels: {', '.join(sorted(labels))})")
    totals = Counter()
    for label, path in objects:
        kernels = read_kernels(path)
        used = set()
        for kernel in kernels:
            rule = next((r for r in rules if fnmatch.fnmatchcase(kernel["name"], r["pattern"])), None)
            if rule is None:
                results = [("FAIL", "listed", f"matches no line of {expect}: add one")]
            else:
                used.add(rule["line"])
                results = check_kernel(kernel, rule, expect, label)
            for status, check, detail in results:
                totals[status] += 1
                print(f"{status:8s}{label} {kernel['name']}: {check}: {detail}")
        for rule in rules:
            if rule["line"] not in used:
                totals["FAIL"] += 1
                print(f"FAIL    {label} {expect}:{rule['line']}: {rule['pattern']} matches no kernel of {path}")
    print(f"sass_guards: {totals['PASS']} passed, {totals['FAIL']} failed, {totals['PENDING']} pending")
    return 1 if totals["FAIL"] else 0


def short_name(name, width=60):
    """Long template arguments (CUB's) elided for the table: ns::Kernel<...>."""
    if len(name) <= width:
        return name
    head = name.split("<", 1)[0]
    return head.split("::")[0] + "::...::" + head.split("::")[-1] + "<...>"


TABLE_BEGIN = "<!-- sass-table begin: made by `make sass-table`, do not edit by hand -->"
TABLE_END = "<!-- sass-table end -->"


def table_lines(objects):
    lines = []
    for label, path in objects:
        kernels = read_kernels(path)
        lines += ["", f"### {label}: `{path}` ({ARCH}, {len(kernels)} kernels)", ""]
        header = ["kernel", "registers", "launch bounds", "shared", "local"] + TABLE_COLUMNS
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for k in kernels:
            threads = k["max_threads"] if k["max_threads"] is not None else ""
            row = [f"`{short_name(k['name'])}`", k["REG"], threads, k["SHARED"], k["LOCAL"] + k["STACK"]]
            row += [k["sass"][c] for c in TABLE_COLUMNS]
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def run_table(objects, into):
    lines = table_lines(objects)
    if not into:
        print("\n".join(lines))
        return 0
    with open(into) as f:
        text = f.read()
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise UsageError(f"{into}: no {TABLE_BEGIN} ... {TABLE_END} to replace")
    with open(into, "w") as f:
        f.write(text[:begin] + "\n".join([TABLE_BEGIN] + lines + ["", ""]) + text[end:])
    print(f"{into}: the tables of {', '.join(label for label, _ in objects)} rewritten")
    return 0


def labelled(arg):
    label, sep, path = arg.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"want LABEL=OBJECT (e.g. bf16=build/test_gpu_trainer.o), not {arg!r}")
    return label, path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check every kernel against the expectations file")
    check.add_argument("--expect", required=True, help="the expectations file (test/sass_expectations.txt)")
    check.add_argument("objects", nargs="+", type=labelled, metavar="LABEL=OBJECT")
    table = sub.add_parser("table", help="print the per-kernel table (markdown)")
    table.add_argument("objects", nargs="+", type=labelled, metavar="LABEL=OBJECT")
    table.add_argument("--into", metavar="FILE", help=f"replace the part of FILE between {TABLE_BEGIN} and "
                       f"{TABLE_END} (docs/sass.md) instead of printing")
    sub.add_parser("where", help="print the cuobjdump and nvdisasm this script would run")
    args = parser.parse_args()
    try:
        if args.command == "where":
            print(" ".join(find_tools()[:2]))
            return 0
        return run_check(args.expect, args.objects) if args.command == "check" else run_table(args.objects, args.into)
    except (UsageError, OSError) as e:
        print(f"sass_guards: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
