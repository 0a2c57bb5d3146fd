// Matmul without bias on the GPU through cuBLASLt, in the layout of torch.nn.Linear.
// CPU reference: kernels/cpu/matmul.h.
//   forward:  out (N, OC) = inp (N, C) @ W^T,   W stored row-major as (OC, C)
//   backward: dinp (N, C) = dout (N, OC) @ W;   dW (OC, C) += dout^T @ inp
//   with a residual in the epilogue (cuBLASLt's C, beta = s):
//            out = s * x + inp @ W^T                  the sublayer's output product and its residual add
//            dinp = s * dres + dout @ W               (Post-LN) d x's two terms
// floatX in, fp32 accumulation (CUBLAS_COMPUTE_32F: true fp32 in FP32 mode, no TF32). out and dinp
// are floatX and written: where an input feeds several products (q|k|v, gate|up) they are one
// product with the weights stacked, so nothing needs a zeroed buffer. With a residual, the sum is
// formed in fp32 and rounded once, where a separate add would read the rounded product and the
// residual back and write the sum: two tensors fewer through memory per add (dev/cost_model.py).
// The weight gradient dW is fp32 in both builds, so that summing it over a step's micro-batches
// through beta = 1 rounds to fp32, not to bf16, at each add (see docs/gpu.md, "Gradient accumulation").
// Split-K algorithms may only reduce their partial sums in the compute type (fp32), never in a bf16
// output type.
//
// cuBLAS is column-major, and a row-major (R, K) matrix is the column-major (K, R) matrix, its
// transpose. So each row-major product is computed as its transpose:
//   out^T (OC, N) = W (OC, C) . inp^T (C, N):      A = W transposed (stored C x OC),  B = inp (C x N)
//   dinp^T (C, N) = W^T (C, OC) . dout^T (OC, N):  A = W (C x OC),                    B = dout (OC x N)
//   dW^T (C, OC) = inp^T (C, N) . dout (N, OC):    A = inp (C x N),   B = dout transposed (stored OC x N)
//
// Plans: the descriptors, the matrix layouts and the algorithm depend only on the key below, so each
// is made once, on a key's first product, and kept until matmul_teardown(). A trainer uses a dozen
// keys; the search is linear.
//
// A plan's algorithm. The heuristic ranks up to MATMUL_CANDIDATES algorithms that meet the key's
// constraints (split-K reduced in fp32 or not split, the alignments, the workspace). Where it offers
// more than one, the first MATMUL_TIMED are timed on the product that asked for the plan, once, and
// the fastest is kept and logged. The emulation's heuristic offers one (emu/cublaslt.cpp), so there
// nothing is timed and the first is kept. The first is also kept during a stream capture (no
// synchronization allowed) and with MIXLN_MATMUL_TIMING=0: a timed choice can differ from one process
// to the next, and with it the order of a product's sums, so runs compared bitwise need the
// heuristic's first (make gpu-check's trainer comparisons set it).
// Recorded choices: matmul_choices_text() writes each plan's algorithm (cuBLASLt's serialized
// cublasLtMatmulAlgo_t, "can be serialized into host storage for later use with the same version of
// the library", with the key and the build's precision), and matmul_use_choices() reads such a text
// back: a key recorded there takes its recorded algorithm, without timing, if the heuristic offers it
// again; if not (another GPU or library), that is said once and the key is timed anew. The trainer
// records its run's choices beside its checkpoints so that -r computes as the uninterrupted run did.
// matmul_timing (default on) permits the timing at all: the trainer permits it only in its training
// steps, so evaluation and sampling (a new key per context length) keep the heuristic's first.
// Several processes: each would time on its own GPU and could choose apart, so that ranks summed
// gradients of differently ordered products and no record of rank 0's choices reproduced them. The
// trainer sets matmul_agreement in its training steps, where every rank plans the same products in
// the same order, to a collective returning rank 0's choice: each rank's plan takes it (and on -r rank
// 0's recorded choice is every rank's).
// Where the heuristic offers nothing under the fp32-reduction mask, the request is repeated with every
// reduction scheme allowed and each algorithm it offers is set to run unsplit (SPLITK_NUM 1, no
// reduction), keeping those that cublasLtMatmulAlgoCheck accepts; logged once per key. Only when that
// too leaves nothing does the run stop, naming the product.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>
#include "common.cuh"

// The one cuBLASLt handle and workspace, made by matmul_setup() before the first matmul.
inline cublasLtHandle_t cublaslt_handle = nullptr;
inline void* cublaslt_workspace = nullptr;
constexpr size_t CUBLASLT_WORKSPACE_BYTES = 32u << 20;  // what NVIDIA recommends for Hopper

// matmul_backward's second stream, for the weight gradient, with a workspace of its own (two products
// running at once must not share one) and the events of its fork from and join to the caller's stream.
inline cudaStream_t matmul_weight_stream = nullptr;
inline void* matmul_weight_workspace = nullptr;
inline cudaEvent_t matmul_fork = nullptr, matmul_join = nullptr;
constexpr int MATMUL_WORKSPACES = 2;  // for the memory reports

inline void* workspace_for(cudaStream_t stream) {
    return stream == matmul_weight_stream ? matmul_weight_workspace : cublaslt_workspace;
}

// The largest power of two, up to 256, dividing the address: cuBLASLt's heuristic otherwise assumes
// 256-byte aligned matrices, and a slice of a larger buffer may not be.
inline uint32_t pointer_alignment(const void* p) {
    uint32_t alignment = 256;
    while ((uintptr_t)p % alignment) alignment /= 2;
    return alignment;
}

// Everything the heuristic is told: the column-major shape D (m, n) = op(A) (m, k) . op(B) (k, n),
// the transpositions, D's type, and the alignments of A, B and D (align_d: the smaller of C's and D's;
// C has D's type and shape). beta is not among them: the heuristic does not see it, and the one
// algorithm serves every beta alike.
struct MatmulKey {
    int m, n, k;
    bool transpose_a, transpose_b, d_fp32;
    uint32_t align_a, align_b, align_d;

    auto fields() const { return std::tie(m, n, k, transpose_a, transpose_b, d_fp32, align_a, align_b, align_d); }
    bool operator==(const MatmulKey& other) const { return fields() == other.fields(); }
};

struct MatmulPlan {
    MatmulKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
    int choice;  // algo's index (from 0) in the heuristic's list
};

inline std::vector<MatmulPlan> matmul_plans;

// A choice read back by matmul_use_choices.
struct MatmulRecord {
    MatmulKey key;
    cublasLtMatmulAlgo_t algo;
};
inline std::vector<MatmulRecord> matmul_records;
inline std::string matmul_records_source;  // where they were read from, for the log
inline bool matmul_records_stale = false;  // one of them was not offered again (said once)
inline bool matmul_timing = true;           // timing permitted (see "Recorded choices" above)
inline std::function<int(int)> matmul_agreement;  // this rank's choice -> rank 0's (see "Several processes")

constexpr int MATMUL_CANDIDATES = 8;   // algorithms asked of the heuristic
constexpr int MATMUL_TIMED = 4;        // of which the first this many are timed
constexpr int MATMUL_TIMING_RUNS = 3;  // runs timed per algorithm, after one untimed
inline bool matmul_log_choices = true;  // print each timed choice and fallback (the trainer: rank 0 only)

inline void matmul_setup() {
    if (cublaslt_handle) return;
    cublasCheck(cublasLtCreate(&cublaslt_handle));
    cudaCheck(cudaMalloc(&cublaslt_workspace, CUBLASLT_WORKSPACE_BYTES));
    cudaCheck(cudaMalloc(&matmul_weight_workspace, CUBLASLT_WORKSPACE_BYTES));
    cudaCheck(cudaStreamCreateWithFlags(&matmul_weight_stream, cudaStreamNonBlocking));
    cudaCheck(cudaEventCreateWithFlags(&matmul_fork, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&matmul_join, cudaEventDisableTiming));
}

inline void matmul_teardown() {
    if (!cublaslt_handle) return;
    for (const MatmulPlan& plan : matmul_plans) {
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.a_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.b_layout));
        cublasCheck(cublasLtMatrixLayoutDestroy(plan.d_layout));
        cublasCheck(cublasLtMatmulDescDestroy(plan.desc));
    }
    matmul_plans.clear();
    matmul_records.clear();
    matmul_records_stale = false;
    cublasCheck(cublasLtDestroy(cublaslt_handle));
    cudaCheck(cudaFree(cublaslt_workspace));
    cudaCheck(cudaFree(matmul_weight_workspace));
    cudaCheck(cudaStreamDestroy(matmul_weight_stream));
    cudaCheck(cudaEventDestroy(matmul_fork));
    cudaCheck(cudaEventDestroy(matmul_join));
    cublaslt_handle = nullptr;
    cublaslt_workspace = matmul_weight_workspace = nullptr;
    matmul_weight_stream = nullptr;
    matmul_fork = matmul_join = nullptr;
}

// The product of a key, for logs and errors.
inline std::string matmul_name(const MatmulKey& key) {
    char name[200];
    snprintf(name, sizeof(name), "D (%d x %d, %s) = op(A) op(B) with k = %d, transa %d, transb %d, alignments A %u B %u D %u bytes",
             key.m, key.n, key.d_fp32 || FLOATX_IS_FP32 ? "fp32" : "bf16", key.k, key.transpose_a, key.transpose_b,
             key.align_a, key.align_b, key.align_d);
    return name;
}

// The heuristic's algorithms for the plan's problem, best first, with split-K's partial sums reduced
// only by the schemes in reduction_schemes (an unsplit algorithm passes any mask).
inline std::vector<cublasLtMatmulAlgo_t> matmul_heuristic(const MatmulPlan& plan, uint32_t reduction_schemes) {
    cublasLtMatmulPreference_t preference;
    cublasCheck(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = CUBLASLT_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &workspace_bytes, sizeof(workspace_bytes)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                     &reduction_schemes, sizeof(reduction_schemes)));
    const MatmulKey& key = plan.key;
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attribute, bytes] : alignments)
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)));
    cublasLtMatmulHeuristicResult_t results[MATMUL_CANDIDATES];
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle, plan.desc, plan.a_layout, plan.b_layout, plan.d_layout,
                                               plan.d_layout, preference, MATMUL_CANDIDATES, results, &found));
    cublasCheck(cublasLtMatmulPreferenceDestroy(preference));
    std::vector<cublasLtMatmulAlgo_t> algos;
    for (int i = 0; i < found; i++)
        if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
    return algos;
}

// The fallback: the heuristic's algorithms under any reduction scheme, each set to run unsplit
// (one part of k, nothing to reduce), those cuBLASLt accepts for the problem.
inline std::vector<cublasLtMatmulAlgo_t> matmul_unsplit_algorithms(const MatmulPlan& plan) {
    std::vector<cublasLtMatmulAlgo_t> unsplit;
    for (cublasLtMatmulAlgo_t algo : matmul_heuristic(plan, CUBLASLT_REDUCTION_SCHEME_MASK)) {
        const int32_t parts = 1;
        const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
        cublasLtMatmulHeuristicResult_t check;
        if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &parts, sizeof(parts)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof(scheme)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulAlgoCheck(cublaslt_handle, plan.desc, plan.a_layout, plan.b_layout, plan.d_layout,
                                    plan.d_layout, &algo, &check) == CUBLAS_STATUS_SUCCESS &&
            check.workspaceSize <= CUBLASLT_WORKSPACE_BYTES)
            unsplit.push_back(algo);
    }
    return unsplit;
}

// The product that asked for a plan: its operands, for timing.
struct MatmulOperands {
    const void *a, *b, *c;
    void* d;
    float beta;
};

// Milliseconds per product with algo: MATMUL_TIMING_RUNS runs after one untimed, between two events
// on the stream; infinity if cuBLASLt refuses the algorithm.
inline float matmul_milliseconds(const MatmulPlan& plan, const cublasLtMatmulAlgo_t& algo, const MatmulOperands& op,
                                 cudaStream_t stream) {
    const float alpha = 1.0f;
    auto run = [&] {
        return cublasLtMatmul(cublaslt_handle, plan.desc, &alpha, op.a, plan.a_layout, op.b, plan.b_layout, &op.beta,
                              op.c, plan.d_layout, op.d, plan.d_layout, &algo, workspace_for(stream),
                              CUBLASLT_WORKSPACE_BYTES, stream);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) return INFINITY;
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaEventRecord(start, stream));
    for (int i = 0; i < MATMUL_TIMING_RUNS; i++) cublasCheck(run());
    cudaCheck(cudaEventRecord(stop, stream));
    cudaCheck(cudaEventSynchronize(stop));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    return ms / MATMUL_TIMING_RUNS;
}

// The fastest of the first MATMUL_TIMED algorithms, timed on the product's A, B and C and on its D
// when D is not read (the product overwrites it next), else (beta != 0 and C is D) on a scratch D of
// D's size (an accumulated dW must not change); the first where there is nothing to time or timing is
// not possible.
// Returns the chosen algorithm's index in algos.
inline int matmul_fastest(const MatmulPlan& plan, const std::vector<cublasLtMatmulAlgo_t>& algos, MatmulOperands op,
                          cudaStream_t stream) {
    const int timed = std::min((int)algos.size(), MATMUL_TIMED);
    const char* timing = getenv("MIXLN_MATMUL_TIMING");
    if (timed < 2 || !matmul_timing || (timing && strcmp(timing, "0") == 0)) return 0;
    const std::string name = matmul_name(plan.key);
    cudaStreamCaptureStatus capture;
    cudaCheck(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) {
        if (matmul_log_choices)
            printf("cuBLASLt: %s: the heuristic's first of %zu (first seen during a stream capture: not timed)\n",
                   name.c_str(), algos.size());
        return 0;
    }
    void* scratch = nullptr;
    if (op.beta != 0.0f && op.c == op.d) {
        const size_t bytes = (size_t)plan.key.m * plan.key.n * (plan.key.d_fp32 ? sizeof(float) : sizeof(floatX));
        if (cudaMalloc(&scratch, bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            if (matmul_log_choices)
                printf("cuBLASLt: %s: the heuristic's first of %zu (no memory for a scratch D: not timed)\n",
                       name.c_str(), algos.size());
            return 0;
        }
        cudaCheck(cudaMemsetAsync(scratch, 0, bytes, stream));
        op.c = op.d = scratch;
    }
    std::vector<float> ms(timed);
    for (int i = 0; i < timed; i++) ms[i] = matmul_milliseconds(plan, algos[i], op, stream);
    if (scratch) cudaCheck(cudaFree(scratch));
    const int best = (int)(std::min_element(ms.begin(), ms.end()) - ms.begin());
    std::string times;
    for (int i = 0; i < timed; i++) {
        char t[32];
        snprintf(t, sizeof(t), "%s%.1f", i ? ", " : "", ms[i] * 1000.0f);
        times += t;
    }
    if (matmul_log_choices)
        printf("cuBLASLt: %s: algorithm %d of the heuristic's %zu, fastest of the first %d (us: %s)\n", name.c_str(),
               best + 1, algos.size(), timed, times.c_str());
    return best;
}

// The index in algos of key's recorded algorithm, or -1: none recorded, or not offered again (said once).
inline int matmul_recorded_choice(const MatmulKey& key, const std::vector<cublasLtMatmulAlgo_t>& algos) {
    for (const MatmulRecord& record : matmul_records) {
        if (!(record.key == key)) continue;
        for (size_t i = 0; i < algos.size(); i++)
            if (memcmp(&algos[i], &record.algo, sizeof(record.algo)) == 0) return (int)i;
        if (!matmul_records_stale && matmul_log_choices)
            printf("cuBLASLt: %s records an algorithm for %s that the heuristic no longer offers (another GPU or "
                   "cuBLASLt?): such products are chosen anew\n", matmul_records_source.c_str(), matmul_name(key).c_str());
        matmul_records_stale = true;
        return -1;
    }
    return -1;
}

// The text of the choices: one line per plan, and per record whose key has no plan (yet) in this
// process: the build's precision, the key's fields and the algorithm's bytes in hex.
inline std::string matmul_choices_text() {
    std::vector<MatmulRecord> all;
    for (const MatmulPlan& plan : matmul_plans) all.push_back({plan.key, plan.algo});
    for (const MatmulRecord& record : matmul_records)
        if (std::none_of(matmul_plans.begin(), matmul_plans.end(), [&](const MatmulPlan& p) { return p.key == record.key; }))
            all.push_back(record);
    std::string text = "# cuBLASLt's algorithm per product (kernels/matmul.cuh): precision m n k transa transb d_fp32 "
                       "align_a align_b align_d algorithm\n";
    for (const MatmulRecord& r : all) {
        char line[400];
        int at = snprintf(line, sizeof(line), "%s %d %d %d %d %d %d %u %u %u ", FLOATX_IS_FP32 ? "fp32" : "bf16",
                          r.key.m, r.key.n, r.key.k, r.key.transpose_a, r.key.transpose_b, r.key.d_fp32, r.key.align_a,
                          r.key.align_b, r.key.align_d);
        const unsigned char* bytes = (const unsigned char*)&r.algo;
        for (size_t i = 0; i < sizeof(r.algo); i++) at += snprintf(line + at, sizeof(line) - at, "%02x", bytes[i]);
        text += std::string(line) + "\n";
    }
    return text;
}

// Takes the choices of a matmul_choices_text() (read from source) for the keys not planned yet;
// lines of the other precision are skipped. Throws on a line it cannot read.
inline void matmul_use_choices(const std::string& text, const std::string& source) {
    matmul_records_source = source;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(start, end - start);
        start = end + 1;
        if (line.empty() || line[0] == '#') continue;
        char precision[8], hex[2 * sizeof(cublasLtMatmulAlgo_t) + 2];
        MatmulRecord r;
        int ta, tb, df, used = 0;
        if (sscanf(line.c_str(), "%7s %d %d %d %d %d %d %u %u %u %129s%n", precision, &r.key.m, &r.key.n, &r.key.k, &ta,
                   &tb, &df, &r.key.align_a, &r.key.align_b, &r.key.align_d, hex, &used) != 11 ||
            used != (int)line.size() || strlen(hex) != 2 * sizeof(r.algo))
            throw std::runtime_error(source + ": cannot read the line '" + line + "'");
        if (strcmp(precision, FLOATX_IS_FP32 ? "fp32" : "bf16") != 0) continue;
        r.key.transpose_a = ta, r.key.transpose_b = tb, r.key.d_fp32 = df;
        unsigned char* bytes = (unsigned char*)&r.algo;
        for (size_t i = 0; i < sizeof(r.algo); i++) {
            unsigned byte;
            if (sscanf(hex + 2 * i, "%2x", &byte) != 1) throw std::runtime_error(source + ": cannot read the line '" + line + "'");
            bytes[i] = (unsigned char)byte;
        }
        matmul_records.push_back(r);
    }
}

// The plan for key: the cached one, or a new one (see "A plan's algorithm" above). Each matrix is
// stored densely, its leading dimension the number of rows it is stored with.
inline const MatmulPlan& matmul_plan(const MatmulKey& key, const MatmulOperands& operands, cudaStream_t stream) {
    for (const MatmulPlan& plan : matmul_plans)
        if (plan.key == key) return plan;
    MatmulPlan plan;
    plan.key = key;
    const cudaDataType_t type = FLOATX_IS_FP32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasCheck(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    const int a_rows = key.transpose_a ? key.k : key.m, b_rows = key.transpose_b ? key.n : key.k;
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.a_layout, type, a_rows, key.transpose_a ? key.m : key.k, a_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.b_layout, type, b_rows, key.transpose_b ? key.k : key.n, b_rows));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan.d_layout, key.d_fp32 ? CUDA_R_32F : type, key.m, key.n, key.m));

    // Split-K partial sums are added in fp32 (the compute type) in the workspace, or not split at all;
    // the in-place and output-type schemes would add them in D's type, bf16 for out and dinp.
    std::vector<cublasLtMatmulAlgo_t> algos = matmul_heuristic(plan, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    if (algos.empty()) {
        algos = matmul_unsplit_algorithms(plan);
        if (algos.empty()) {
            fprintf(stderr, "cuBLASLt has no algorithm for %s, neither with split-K reduced in fp32 nor unsplit\n",
                    matmul_name(key).c_str());
            exit(EXIT_FAILURE);
        }
        if (matmul_log_choices)
            printf("cuBLASLt: %s: no algorithm reduces split-K in fp32; using %zu that do not split k\n",
                   matmul_name(key).c_str(), algos.size());
    }
    plan.choice = matmul_recorded_choice(key, algos);
    if (plan.choice < 0) plan.choice = matmul_fastest(plan, algos, operands, stream);
    if (matmul_agreement) {
        plan.choice = matmul_agreement(plan.choice);
        if (plan.choice < 0 || plan.choice >= (int)algos.size()) {
            fprintf(stderr, "cuBLASLt: rank 0 chose algorithm %d for %s, of which this rank's heuristic offers %zu "
                    "(different GPUs or cuBLASLt versions?)\n", plan.choice + 1, matmul_name(key).c_str(), algos.size());
            exit(EXIT_FAILURE);
        }
    }
    plan.algo = algos[plan.choice];
    matmul_plans.push_back(plan);
    return matmul_plans.back();
}

// Column-major D (m, n) = op(A) (m, k) . op(B) (k, n) + beta * C, with op the transpose when asked.
// A and B are floatX; C and D are floatX or fp32 (OutT), C either D itself or a matrix that does not
// overlap it.
template <typename OutT>
void cublaslt_matmul(OutT* d, const OutT* c, const floatX* a, const floatX* b, int m, int n, int k, bool transpose_a,
                     bool transpose_b, float beta, cudaStream_t stream) {
    static_assert(std::is_same<OutT, floatX>::value || std::is_same<OutT, float>::value, "D is floatX or fp32");
    const MatmulPlan& plan = matmul_plan({m, n, k, transpose_a, transpose_b, std::is_same<OutT, float>::value,
                                          pointer_alignment(a), pointer_alignment(b),
                                          std::min(pointer_alignment(c), pointer_alignment(d))},
                                         {a, b, c, d, beta}, stream);
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(cublaslt_handle, plan.desc, &alpha, a, plan.a_layout, b, plan.b_layout, &beta, c,
                               plan.d_layout, d, plan.d_layout, &plan.algo, workspace_for(stream),
                               CUBLASLT_WORKSPACE_BYTES, stream));
}

// The plans made so far (for the tests).
inline size_t matmul_plan_count() { return matmul_plans.size(); }

// out (N, OC) = inp (N, C) @ W^T
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* W, int N, int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(out, out, W, inp, OC, N, C, true, false, 0.0f, stream);
}

// out (N, OC) = s * x (N, OC) + inp (N, C) @ W^T: a sublayer's output product with the residual add
// after it (the paper's eq. 1 and 2; s != 1 for DeepNorm). out may not overlap x.
inline void matmul_forward_residual(floatX* out, const floatX* inp, const floatX* W, const floatX* x, float s, int N,
                                    int C, int OC, cudaStream_t stream) {
    cublaslt_matmul(out, x, W, inp, OC, N, C, true, false, s, stream);
}

// dW (OC, C) += dout^T @ inp, in fp32
inline void matmul_backward_weight(float* dW, const floatX* dout, const floatX* inp, int N, int C, int OC,
                                   cudaStream_t stream) {
    cublaslt_matmul(dW, dW, inp, dout, C, OC, N, false, true, 1.0f, stream);
}

// dinp (N, C) = dout @ W + s * dres (written; dres null: s is not used)
inline void matmul_backward_input(floatX* dinp, const floatX* dout, const floatX* W, int N, int C, int OC,
                                  cudaStream_t stream, const floatX* dres = nullptr, float s = 1.0f) {
    cublaslt_matmul(dinp, dres ? dres : dinp, W, dout, C, N, OC, false, false, dres ? s : 0.0f, stream);
}

// Whether [a, a + a_count) and [b, b + b_count) share an element.
inline bool ranges_overlap(const floatX* a, long a_count, const floatX* b, long b_count) {
    return a < b + b_count && b < a + a_count;
}

// Both at once: dW on matmul_weight_stream beside dinp on the caller's stream, which then waits for
// both. Neither product needs the other, and each can run its tiles on the SMs that the other's last
// wave leaves idle (dW's output, OC x C, is often a wave and a bit: dev/cost_model.py). dW reads inp
// and dout meanwhile, so dinp may overlap neither. dres (optional, N x C, not overlapping dinp): a
// gradient added to dinp's in the epilogue, dinp = dout @ W + s * dres.
inline void matmul_backward(floatX* dinp, float* dW, const floatX* dout, const floatX* inp, const floatX* W, int N,
                            int C, int OC, cudaStream_t stream, const floatX* dres = nullptr, float s = 1.0f) {
    if (ranges_overlap(dinp, (long)N * C, inp, (long)N * C) || ranges_overlap(dinp, (long)N * C, dout, (long)N * OC))
        throw std::invalid_argument("matmul_backward: dinp overlaps inp or dout, which the weight gradient reads "
                                    "while dinp is written");
    cudaCheck(cudaEventRecord(matmul_fork, stream));
    cudaCheck(cudaStreamWaitEvent(matmul_weight_stream, matmul_fork, 0));
    matmul_backward_weight(dW, dout, inp, N, C, OC, matmul_weight_stream);
    cudaCheck(cudaEventRecord(matmul_join, matmul_weight_stream));
    matmul_backward_input(dinp, dout, W, N, C, OC, stream, dres, s);
    cudaCheck(cudaStreamWaitEvent(stream, matmul_join, 0));
}
