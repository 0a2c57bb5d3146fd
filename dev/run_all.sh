#!/usr/bin/env bash
# Builds and runs every kernel microbenchmark (dev/<kernel>.cu) at every one of its versions, then
# prints one markdown table (kernel, shape, version, time, GB/s or TFLOP/s, % of the measured ceiling)
# for docs/gpu.md ("Kernel benchmarks"), and the ceilings measured in the same runs. Needs a GPU.
#
#   dev/run_all.sh [KERNEL ...]       default: all, those that decide what enters the trainer next first
#                                     (matmul attention swiglu_gemm residual), then rmsnorm swiglu rope
#                                     classifier adamw embedding: a run cut short (make gpu-check's 120 s)
#                                     loses the last
#   PRECISION=FP32 dev/run_all.sh     the fp32 builds (build/fp32/dev) instead of bf16 (build/dev)
#   DEV_REPEATS=N dev/run_all.sh      timed runs per measurement (median; default 50)
#   DEV_BIN_DIR=DIR dev/run_all.sh    run the benchmarks already built in DIR (as make gpu-check-build
#                                     leaves them), without make
#   dev/run_all.sh --table LOG        run nothing: the table and ceilings of the results in LOG (a
#                                     run_all.log, also one cut short: make gpu-check's report uses it
#                                     when its dev step ran out of time)
#
# Progress and every benchmark's full output go to stderr and to <build dir>/run_all.log; the table goes
# to stdout, so `dev/run_all.sh > table.md` keeps just the table. Exits non-zero if any run failed.
set -u
cd "$(dirname "$0")/.."
PRECISION=${PRECISION:-BF16}
if [ "$PRECISION" = FP32 ]; then dir=build/fp32/dev; else dir=build/dev; fi
dir=${DEV_BIN_DIR:-$dir}
all=(matmul attention swiglu_gemm residual rmsnorm swiglu rope classifier adamw embedding)
if [ $# -gt 0 ]; then kernels=("$@"); else kernels=("${all[@]}"); fi

# print_table LOG: the markdown table of LOG's result lines, then the ceilings its runs measured.
print_table() {
    # Result lines look like
    #   rmsnorm_forward 130m:16384x768 v2: 2712.3 GB/s (90.4% of copy) 18.5 us with write-back, 16.0 us kernel alone
    # Rows are grouped by (kernel, shape) in the order first seen, versions in order within a group.
    echo "| kernel | shape | version | time (us) | throughput | % of measured ceiling |"
    echo "|---|---|---|---|---|---|"
    awk '
    $3 ~ /^v[0-9]+:$/ && ($5 == "GB/s" || $5 == "TFLOP/s") && $7 == "of" {
        key = $1 SUBSEP $2
        if (!(key in seen)) { seen[key] = 1; order[++n] = key }
        v = substr($3, 2, length($3) - 2) + 0
        if (v > maxv) maxv = v
        pct = substr($6, 2); ceiling = substr($8, 1, length($8) - 1)
        row[key, v] = sprintf("| %s | %s | %d | %s | %s %s | %s of %s |", $1, $2, v, $9, $4, $5, pct, ceiling)
    }
    END {
        for (i = 1; i <= n; i++)
            for (v = 1; v <= maxv; v++)
                if ((order[i], v) in row) print row[order[i], v]
    }' "$1"

    echo
    awk '
    $1 == "device:" { sub(/^device: /, ""); sub(/;.*/, ""); device = $0 }
    $1 == "ceiling" && $2 == "copy:" { c = $3 + 0; if (!nc++ || c < cmin) cmin = c; if (c > cmax) cmax = c }
    $1 == "ceiling" && $2 == "gemm:" { g = $3 + 0; if (!ng++ || g < gmin) gmin = g; if (g > gmax) gmax = g }
    END {
        if (!nc) { print "No ceilings measured (no run got that far)."; exit }
        printf "Measured ceilings on %s, over %d runs (each row is a percentage of its own run'"'"'s): ", device, nc
        printf "device-to-device copy %.0f-%.0f GB/s (bytes read + written, 1 GiB buffer); ", cmin, cmax
        printf "cuBLASLt bf16 GEMM 8192^3 %.0f-%.0f TFLOP/s. ", gmin, gmax
        printf "Times: medians from a cold L2; GB/s rows include writing back what the kernel left dirty in L2, "
        printf "TFLOP/s rows are the kernel alone (dev/common.cuh).\n"
    }' "$1"
}

if [ "${1:-}" = --table ]; then
    [ $# -eq 2 ] && [ -f "$2" ] || { echo "usage: dev/run_all.sh --table LOG (an existing run_all.log)" >&2; exit 2; }
    print_table "$2"
    exit 0
fi

[ -n "${DEV_BIN_DIR:-}" ] || make -j"$(nproc)" PRECISION="$PRECISION" dev >&2 || { echo "run_all: make dev failed" >&2; exit 1; }
mkdir -p "$dir"
log=$dir/run_all.log
: >"$log"
notes=()
for k in "${kernels[@]}"; do
    if ! n=$("$dir/$k" --num-versions 2>>"$log"); then
        notes+=("- $k: no such benchmark"); continue
    fi
    for v in $(seq 1 "$n"); do
        echo "=== $k $v" | tee -a "$log" >&2
        "$dir/$k" "$v" 2>&1 | tee -a "$log" >&2
        rc=${PIPESTATUS[0]}
        if [ "$rc" -eq 3 ]; then notes+=("- $k v$v: skipped (needs bf16)")
        elif [ "$rc" -ne 0 ]; then notes+=("- $k v$v: FAILED (exit $rc; validation or CUDA error, see $log)"); fi
    done
done

print_table "$log"
status=0
if [ ${#notes[@]} -gt 0 ]; then
    echo
    printf '%s\n' "${notes[@]}"
    for note in "${notes[@]}"; do case $note in *FAILED*|*"no such"*) status=1 ;; esac; done
fi
exit $status
