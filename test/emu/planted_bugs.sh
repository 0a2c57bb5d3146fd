#!/usr/bin/env bash
# Planted bugs: copies of real kernels with one change each, made at test time from the rewritten
# sources (emu/plant_bug.py: the line must be found exactly once), built against the emulation and
# run. Each must be caught, by the message named here: the emulation's error, a failed comparison with
# the CPU reference, or the race checker's report. Ends with "planted_bugs_emu: N passed, M failed".
# Needs the rewritten sources and the libraries: `make test-emu` builds them first.
set -u
emu=${EMU:-build/emu}
cxx=${CXX:-g++}
cuda_include=${CUDA_INCLUDE:-/usr/local/cuda/include}
flags="-Iemu/include -std=c++17 -g1 -O1 -fno-strict-aliasing -w -I$cuda_include -include emu/emu.h"
catch_libs=$(test -e /usr/include/catch2/catch_all.hpp && echo -lCatch2)
passed=0; failed=0

# build NAME SOURCE [race]: compiles SOURCE (a path in the rewritten tree) of the planted copy NAME
# into $emu/planted/NAME/bin, with the Catch2 runner unless it is a dev/ benchmark.
build() {
    local dir=$emu/planted/$1 src=$2 race=${3:-}
    local extra="" lib=("$emu"/lib/*.o) main=$emu/main.o
    if [ -n "$race" ]; then extra="-fsanitize=thread"; lib=("$emu"/race/lib/*.o); main=$emu/race/main.o; fi
    case $src in dev/*) main="";; esac
    $cxx $flags $extra -x c++ -c "$dir/src/$src" -o "$dir/test.o" &&
        $cxx $extra "$dir/test.o" $main "${lib[@]}" -o "$dir/bin" -lrt -lpthread $catch_libs
}

# plant NAME FILE OLD NEW: a copy of the rewritten tree with one change.
plant() {
    local dir=$emu/planted/$1
    rm -rf "$dir" && mkdir -p "$dir" && cp -r "$emu/src" "$dir/src" && python3 emu/plant_bug.py "$dir/src/$2" "$3" "$4"
}

# expect NAME PATTERN COMMAND...: the command must fail, printing PATTERN (an extended regex).
expect() {
    local name=$1 pattern=$2; shift 2
    local out status
    out=$("$@" 2>&1); status=$?
    if [ $status -ne 0 ] && grep -qE "$pattern" <<<"$out"; then
        local what
        what=$(grep -m1 -oE "$pattern" <<<"$out" | head -c 160)
        # a race report names the two accesses: their first frames
        grep -q "ThreadSanitizer" <<<"$out" && what="data race between $(grep -A80 -m1 'WARNING: ThreadSanitizer' <<<"$out" |
            grep -E '^ +#0 ' | sed -E 's/.* ([^ ]+:[0-9]+) .*/\1/' | head -2 | tr '\n' ' ')"
        echo "ok    $name: caught ($what)"
        passed=$((passed + 1))
    else
        echo "FAIL  $name: not caught (exit $status); expected /$pattern/ in:"; tail -n 8 <<<"$out" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}

bug() {  # bug NAME FILE OLD NEW SOURCE RACE PATTERN COMMAND...
    local name=$1 file=$2 old=$3 new=$4 src=$5 race=$6 pattern=$7; shift 7
    if plant "$name" "$file" "$old" "$new" && build "$name" "$src" "$race"; then
        expect "$name" "$pattern" "$@"
    else
        echo "FAIL  $name: could not be planted or built"; failed=$((failed + 1))
    fi
}
P=$emu/planted

# 1. A barrier removed: block_reduce reads the warps' partial results without waiting for their writes.
#    The race checker names both lines (the write and the read of warp_results).
bug race_block_reduce kernels/common.cuh \
    "    if (lane == 0) warp_results[warp] = v;
    __syncthreads();" \
    "    if (lane == 0) warp_results[warp] = v;" \
    dev/rmsnorm.cu race "#0 .*kernels/common.cuh:[0-9]+" \
    env DEV_SMALL_ONLY=1 TSAN_OPTIONS=exitcode=66 $P/race_block_reduce/bin 2
# 1b. Version 1 of the attention forward (dev/attention_v1.cuh) without its __syncwarp: lane 0
#     overwrites the row's running maximum that the other lanes read; the fibers' fixed order hides it,
#     the race checker does not.
bug race_attention_syncwarp dev/attention_v1.cuh \
    "            __syncwarp();  // every lane has read row_max[r] (m_old) before lane 0 overwrites it" "" \
    dev/attention.cu race "#0 .*dev/attention_v1.cuh:[0-9]+" \
    env DEV_SMALL_ONLY=1 TSAN_OPTIONS=exitcode=66 $P/race_attention_syncwarp/bin 1
# 1c. The attention forward without the barrier that ends a key block: the next iteration's cp.async
#     refills a K, V buffer that other warps still read by ldmatrix, and the epilogue's stores into the
#     warp's Q rows follow the other lanes' ldmatrix reads unordered. The race checker reports the
#     accesses; a frame below the emulated instruction names kernels/attention.cuh.
bug race_attention_barrier kernels/attention.cuh \
    "        __syncthreads();  // every warp is done with this K, V buffer before the next iteration refills it" "" \
    dev/attention.cu race "#[0-9]+ .*kernels/attention.cuh:[0-9]+" \
    env DEV_SMALL_ONLY=1 TSAN_OPTIONS=exitcode=66 $P/race_attention_barrier/bin 2
# 2. The causal mask off by one at a tile edge: the second-to-last query of each 128-query block of the
#    forward sees one key ahead.
bug causal_mask_tile_edge kernels/attention.cuh \
    "if (k0 + 8 * nb + 2 * t + (e & 1) > qw + g + 8 * (e >> 1)) s[nb][e] = -INFINITY;" \
    "if (k0 + 8 * nb + 2 * t + (e & 1) > qw + g + 8 * (e >> 1) + ((qw + g + 8 * (e >> 1)) % FWD_BM == FWD_BM - 2)) s[nb][e] = -INFINITY;" \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/causal_mask_tile_edge/bin "flash attention forward*"
# 3. ldmatrix without .trans where V's fragments need it (O = P V, and the backward's dO, Q, K columns).
bug ldmatrix_trans kernels/attention.cuh \
    "    ldmatrix_x4_trans(b.x," "    ldmatrix_x4(b.x," \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/ldmatrix_trans/bin "flash attention forward*"
# 4. A cp.async destination read before its wait: the forward waits for all but the two newest groups.
bug cp_async_before_wait kernels/attention.cuh \
    "FWD_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN, T);
            cp_async_commit();
            cp_async_wait<1>();" \
    "FWD_THREADS>(Vs + ((kb + 1) & 1) * TILE_KV, v + head, stride, (kb + 1) * BN, T);
            cp_async_commit();
            cp_async_wait<2>();" \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/cp_async_before_wait/bin "flash attention forward*"
# 5. Lanes that exit before a full-mask shuffle: lanes without a column of a narrow row leave early.
bug lanes_exit_before_shuffle kernels/rmsnorm.cuh \
    "    if (n >= N) return;  // the whole warp leaves together" "    if (n >= N || lane >= C) return;" \
    test/test_gpu_kernels.cu "" "emu: kernel rmsnorm_forward_kernel.*(exited while lanes 0x[0-9a-f]+ of its warp wait|names lane [0-9]+, which has exited)" \
    $P/lanes_exit_before_shuffle/bin "rmsnorm forward normalizes each row"
# 6. A shared-memory write one past the end of rmsnorm's dynamic dweight row.
bug shared_one_past_end kernels/rmsnorm.cuh \
    "c < C; c += blockDim.x) dw_row[c] = 0.0f;" "c <= C; c += blockDim.x) dw_row[c] = 0.0f;" \
    test/test_gpu_kernels.cu "" "wrote past the end of __shared__ \(extern, dynamic\)" \
    $P/shared_one_past_end/bin "rmsnorm backward*"
# 7. Dynamic shared memory above 48 KB without cudaFuncSetAttribute (the attention forward at head size
#    128 needs 102 KB; allow_smem, kernels/common.cuh): the launch fails as on a GPU, and the
#    launcher's check says where.
bug smem_without_attribute kernels/common.cuh \
    "(cudaCheck(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes)), true);" "true;" \
    test/test_gpu_attention.cu "" "CUDA error at kernels/attention.cuh:[0-9]+: invalid argument" \
    $P/smem_without_attribute/bin "flash attention forward*"
# 8. RoPE fused into attention without the barrier after the turn: warps read the K tile by ldmatrix
#    while others still turn it in shared memory.
bug race_rope_barrier kernels/attention.cuh \
    "            rope_tile<BN, HD, FWD_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN, T);
            __syncthreads();" \
    "            rope_tile<BN, HD, FWD_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN, T);" \
    test/test_gpu_attention.cu race "#[0-9]+ .*kernels/attention.cuh:[0-9]+" \
    env TSAN_OPTIONS=exitcode=66 $P/race_rope_barrier/bin "flash attention with RoPE fused*"
# 9. The forward's K blocks after the first turned one position late.
bug rope_key_positions kernels/attention.cuh \
    "rope_tile<BN, HD, FWD_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN, T);" \
    "rope_tile<BN, HD, FWD_THREADS>(Ks + (kb & 1) * TILE_KV, rope, kb * BN + (kb > 0), T);" \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/rope_key_positions/bin "flash attention with RoPE fused*"
# 10. dK stored without turning it back (the gradient with respect to the turned k).
bug rope_dk_not_turned_back kernels/attention.cuh \
    "    if (rope) rope_turn_back<HD>(dk_acc, rope, kw, T);" "" \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/rope_dk_not_turned_back/bin "flash attention with RoPE fused*"
# 11. matmul_backward without its join: the caller's stream does not wait for dW on the weight
#     stream, so what it reads next (here the test's download) finds dW as it was.
bug matmul_backward_join kernels/matmul.cuh \
    "    cudaCheck(cudaStreamWaitEvent(stream, matmul_join, 0));" "" \
    test/test_gpu_kernels.cu "" "FAILED" \
    $P/matmul_backward_join/bin "matmul backward writes dinp*"
# 11b. The weight stream's products given the main stream's cuBLASLt workspace: on a GPU the two
#     products running at once would overwrite each other's; the emulated cuBLASLt refuses it.
bug matmul_shared_workspace kernels/matmul.cuh \
    "    return stream == matmul_weight_stream ? matmul_weight_workspace : cublaslt_workspace;" \
    "    return cublaslt_workspace;" \
    test/test_gpu_kernels.cu "" "workspace at 0x[0-9a-f]+ was given to a product on stream .* that has not run yet, and now to" \
    $P/matmul_shared_workspace/bin "matmul backward writes dinp*"
# 12. dev/swiglu_gemm.cu version 2 without the barrier before a stage is refilled: warps still reading
#     tile kt - 1 by ldmatrix while others' cp.async overwrite it. The race checker reports the pair.
bug race_swiglu_gemm_refill dev/swiglu_gemm.cu \
    "        __syncthreads();                 // everyone's, and everyone is done with tile kt - 1's buffer" "" \
    dev/swiglu_gemm.cu race "#[0-9]+ .*dev/swiglu_gemm.cu:[0-9]+" \
    env DEV_SMALL_ONLY=1 TSAN_OPTIONS=exitcode=66 $P/race_swiglu_gemm_refill/bin 2
# 13. The backward's Wdown fragments loaded without .trans: B's k and n swapped within each 8 x 8.
bug swiglu_gemm_b_not_transposed dev/swiglu_gemm.cu \
    "        else ldmatrix_x4_trans(b, Bs + (k + (lane & 7)) * B::LD + n);" \
    "        else ldmatrix_x4(b, Bs + (k + (lane & 7)) * B::LD + n);" \
    dev/swiglu_gemm.cu "" "VALIDATION FAILED: d gate" \
    env DEV_SMALL_ONLY=1 $P/swiglu_gemm_b_not_transposed/bin 2
# 14. The dQ kernel's delta made before its Q and dO tiles land: it waits for no cp.async group.
bug delta_before_wait kernels/attention.cuh \
    "    cp_async_wait<1>();  // Q and dO (the first K and V may still be landing)" \
    "    cp_async_wait<2>();  // Q and dO (the first K and V may still be landing)" \
    test/test_gpu_attention.cu "" "FAILED" \
    $P/delta_before_wait/bin "flash attention backward*"
# 15. The residual product adding x unscaled (DeepNorm's s dropped): the epilogue's beta is 1.
bug residual_scale_dropped kernels/matmul.cuh \
    "    cublaslt_matmul(out, x, W, inp, OC, N, C, true, false, s, stream);" \
    "    cublaslt_matmul(out, x, W, inp, OC, N, C, true, false, 1.0f, stream);" \
    test/test_gpu_kernels.cu "" "FAILED" \
    $P/residual_scale_dropped/bin "matmul with the residual*"

echo "planted_bugs_emu: $passed passed, $failed failed"
[ $failed -eq 0 ]
