// Token embedding, forward (gather) and backward (deterministic scatter-add) (kernels/embedding.cuh;
// CPU reference kernels/cpu/embedding.h).
//   forward:  out (N, C) = wte[tokens[n]];   backward: dwte[v] += sum of dout[n] over tokens[n] = v
// (dwte, a weight gradient, is fp32 in both builds)
// The production backward and version 4 group the positions by token on the device (CUB's radix
// sort), timed with it; versions 2 and 3 group them on the host (a stable sort), before the timing,
// and time their device kernels only.
//
// Versions:
//   1  production, kernels/embedding.cuh. Forward: one thread per VEC columns, 128-bit accesses when C
//      is a multiple of VEC (else one element at a time). Backward: a radix sort of the token ids with
//      their positions, then one block per chunk of 32 sorted positions (times slices of columns),
//      each thread VEC columns, four rows in flight: it sums each run of equal tokens in its chunk in
//      order, adds a run inside the chunk into dwte, and stores a run crossing a chunk edge as an fp32
//      partial row; a second kernel adds each such run's partials in chunk order (deterministic). As
//      version 3, without its host-made work list.
//   2  forward: one thread per 128-bit vector (8 bf16). Backward: one block per distinct token, each
//      thread one 128-bit vector of columns, four positions' loads in flight per step.
//   3  forward as 2. Backward: version 2's kernel on pieces of at most 32 positions. Token frequencies
//      are Zipfian, so under version 2 the most frequent token (~9% of the 16384 positions here) has
//      one block add ~1500 rows one after the other while the rest of the GPU idles; version 3 splits a
//      token's positions into pieces, writes each piece's fp32 partial row to scratch, and a second
//      kernel adds a token's partials in piece order (still deterministic, one more ~MB of traffic).
//   4  the production kernels before 128-bit accesses and chunks: forward one thread per element;
//      backward the radix sort, then one block per (distinct token, 256 columns), each thread adding
//      its column over all of the token's positions in order.
//
// Build and run (make dev builds every benchmark; make dev PRECISION=FP32 puts fp32 ones in build/fp32/dev):
//   nvcc -O3 -std=c++17 -Xcompiler -fopenmp -gencode arch=compute_90a,code=sm_90a dev/embedding.cu -o embedding -lcublasLt -lcublas
//   ./embedding 3
//
// Shapes: N = 16384 tokens drawn from a Zipf distribution (exponent 1, as natural text) over V = 32000,
// C = 768 and 2048. Bytes counted (X = sizeof(floatX)): forward reads N rows of wte and writes N rows:
// 2 N C X (+ 4 N for the tokens); backward reads dout and reads and writes the K fp32 rows of the
// distinct tokens: (N X + 8 K) C. Scratch partial rows, the position lists and version 1's sort are not counted.
#include <algorithm>
#include <numeric>
#include <vector>
#include "common.cuh"
#include "../core/rng.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/embedding.cuh"

static const char* const VERSIONS[] = {
    "production (kernels/embedding.cuh)",
    "128-bit vectors; backward a block per token, 4 rows in flight per thread",
    "as 2, backward split into pieces of <= 32 positions, partials added in order",
    "one element per thread; backward one block per token over all its positions",
};

// ----------------------------------------------------------------------------
// Versions 2 and 3. C must be a multiple of VEC, so rows are 16-byte aligned.

__global__ void embedding_forward_v2_kernel(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale) {
    const int cvec = C / VEC;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * cvec) return;
    const long n = idx / cvec;
    const int c = (int)(idx % cvec) * VEC;
    const PackedX w = load128(wte + (long)tokens[n] * C + c);
    PackedX o;
#pragma unroll
    for (int e = 0; e < VEC; e++) o[e] = (floatX)(scale * (float)w[e]);
    store128(out + n * C + c, o);
}

// Sums dout rows positions[begin .. end) in order for the VEC columns c .. c + VEC - 1, four loads issued
// before their adds.
__device__ inline void sum_rows(float* acc, const floatX* dout, const int* positions, int begin, int end, int C, int c) {
#pragma unroll
    for (int e = 0; e < VEC; e++) acc[e] = 0.0f;
    int i = begin;
    for (; i + 4 <= end; i += 4) {
        PackedX d[4];
#pragma unroll
        for (int u = 0; u < 4; u++) d[u] = load128(dout + (long)positions[i + u] * C + c);
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int e = 0; e < VEC; e++) acc[e] += (float)d[u][e];
    }
    for (; i < end; i++) {
        const PackedX d = load128(dout + (long)positions[i] * C + c);
#pragma unroll
        for (int e = 0; e < VEC; e++) acc[e] += (float)d[e];
    }
}

// row += scale * acc for VEC fp32 columns: VEC / 4 float4s (16-byte aligned, as the column is a
// multiple of VEC and so is C).
__device__ inline void add_to_row(float* row, const float* acc, float scale) {
#pragma unroll
    for (int q = 0; q < VEC / 4; q++) {
        float4 r = reinterpret_cast<float4*>(row)[q];
        r.x += scale * acc[4 * q];
        r.y += scale * acc[4 * q + 1];
        r.z += scale * acc[4 * q + 2];
        r.w += scale * acc[4 * q + 3];
        reinterpret_cast<float4*>(row)[q] = r;
    }
}

// groups (token[K], start[K + 1], positions[N]): K distinct tokens, token[k]'s positions are
// positions[start[k] .. start[k + 1]) in increasing order.
static std::vector<int> token_groups(const std::vector<int>& tokens) {
    const int N = (int)tokens.size();
    std::vector<int> order(N);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
    std::vector<int> token, start;
    for (int i = 0; i < N; i++) {
        if (i == 0 || tokens[order[i]] != tokens[order[i - 1]]) {
            token.push_back(tokens[order[i]]);
            start.push_back(i);
        }
    }
    start.push_back(N);
    std::vector<int> groups = token;
    groups.insert(groups.end(), start.begin(), start.end());
    groups.insert(groups.end(), order.begin(), order.end());
    return groups;
}

// groups of token_groups; block k owns token k's row, thread
// threadIdx.x + j * blockDim.x its vectors of columns.
__global__ void embedding_backward_v2_kernel(float* dwte, const floatX* dout, const int* groups, int K, int C, float scale) {
    const int k = blockIdx.x;
    const int* start = groups + K;
    const int* positions = groups + 2 * K + 1;
    for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
        float acc[VEC];
        sum_rows(acc, dout, positions, start[k], start[k + 1], C, c);
        add_to_row(dwte + (long)groups[k] * C + c, acc, scale);
    }
}

// Version 3's work list, built on the host: piece p adds positions[begin, end) of token `token`, into
// dwte directly (slot < 0: the token has one piece) or into partial row `slot` of the scratch. Token
// t of `finish` adds its partial rows [slot_begin, slot_end) in order into dwte.
struct Piece { int token, begin, end, slot; };
struct Finish { int token, slot_begin, slot_end, unused; };
constexpr int PIECE_POSITIONS = 32;

__global__ void embedding_backward_pieces_kernel(float* dwte, float* partial, const floatX* dout, const Piece* pieces,
                                                 const int* positions, int C, float scale) {
    const Piece p = pieces[blockIdx.x];
    for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
        float acc[VEC];
        sum_rows(acc, dout, positions, p.begin, p.end, C, c);
        if (p.slot < 0) {
            add_to_row(dwte + (long)p.token * C + c, acc, scale);
        } else {
            float* dst = partial + (long)p.slot * C + c;
#pragma unroll
            for (int e = 0; e < VEC; e++) dst[e] = acc[e];
        }
    }
}

__global__ void embedding_backward_finish_kernel(float* dwte, const float* partial, const Finish* finish, int C, float scale) {
    const Finish f = finish[blockIdx.x];
    for (int c = threadIdx.x * VEC; c < C; c += blockDim.x * VEC) {
        float acc[VEC] = {};
        for (int s = f.slot_begin; s < f.slot_end; s++)
#pragma unroll
            for (int e = 0; e < VEC; e++) acc[e] += partial[(long)s * C + c + e];
        add_to_row(dwte + (long)f.token * C + c, acc, scale);
    }
}

// What version 3 needs on the device, from the tokens.
struct PieceWork {
    int num_pieces = 0, num_finish = 0, num_slots = 0;
    Piece* pieces = nullptr;
    Finish* finish = nullptr;
    int* positions = nullptr;
    float* partial = nullptr;

    PieceWork(const std::vector<int>& tokens, int C) {
        const int N = (int)tokens.size();
        std::vector<int> order(N);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
        std::vector<Piece> p;
        std::vector<Finish> f;
        for (int i = 0; i < N;) {
            int j = i;
            while (j < N && tokens[order[j]] == tokens[order[i]]) j++;
            const int token = tokens[order[i]];
            if (j - i <= PIECE_POSITIONS) {
                p.push_back({token, i, j, -1});
            } else {
                const int first = num_slots;
                for (int b = i; b < j; b += PIECE_POSITIONS) p.push_back({token, b, std::min(j, b + PIECE_POSITIONS), num_slots++});
                f.push_back({token, first, num_slots, 0});
            }
            i = j;
        }
        num_pieces = (int)p.size();
        num_finish = (int)f.size();
        cudaCheck(cudaMalloc(&pieces, std::max<size_t>(1, p.size()) * sizeof(Piece)));
        cudaCheck(cudaMalloc(&finish, std::max<size_t>(1, f.size()) * sizeof(Finish)));
        cudaCheck(cudaMalloc(&positions, N * sizeof(int)));
        cudaCheck(cudaMalloc(&partial, std::max<size_t>(1, (size_t)num_slots * C) * sizeof(float)));
        cudaCheck(cudaMemcpy(pieces, p.data(), p.size() * sizeof(Piece), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(finish, f.data(), f.size() * sizeof(Finish), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(positions, order.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    }
    ~PieceWork() {
        cudaCheck(cudaFree(pieces));
        cudaCheck(cudaFree(finish));
        cudaCheck(cudaFree(positions));
        cudaCheck(cudaFree(partial));
    }
};

// ----------------------------------------------------------------------------
// Version 4

// One thread per output element.
__global__ void embedding_forward_v4_kernel(floatX* out, const int* tokens, const floatX* wte, int N, int C, float scale) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    const long n = idx / C;
    const int c = idx % C;
    out[idx] = (floatX)(scale * (float)wte[(long)tokens[n] * C + c]);
}

// Block (i, j) returns unless i starts a run of equal tokens in sorted_tokens; if it does, it sums the
// run's rows of dout in order for columns j*blockDim.x + threadIdx.x, and adds scale * sum into that
// token's row of dwte.
__global__ void embedding_backward_v4_kernel(float* dwte, const floatX* dout, const int* sorted_tokens,
                                             const int* positions, int N, int C, float scale) {
    const int i = blockIdx.x;
    const int token = sorted_tokens[i];
    if (i > 0 && sorted_tokens[i - 1] == token) return;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int k = i; k < N && sorted_tokens[k] == token; k++) sum += (float)dout[(long)positions[k] * C + c];
    dwte[(long)token * C + c] += scale * sum;
}

// The radix sort of the production launcher, then version 4's kernel; its own buffers.
struct SortedTokensV4 {
    DeviceBuffer<int> sorted_tokens, positions_in, positions;
    DeviceBuffer<unsigned char> scratch;
    explicit SortedTokensV4(int N) : sorted_tokens(N), positions_in(N), positions(N), scratch(embedding_sort_scratch_bytes(N, 32)) {}
};
static void embedding_backward_v4(SortedTokensV4& w, float* dwte, const floatX* dout, const int* tokens, int N, int C,
                                  int V, float scale) {
    int key_bits = 1;
    while (key_bits < 31 && (1L << key_bits) < V) key_bits++;
    size_t scratch_bytes = embedding_sort_scratch_bytes(N, key_bits);
    embedding_positions_kernel<<<ceil_div(N, 256), 256>>>(w.positions_in.ptr, N);
    cudaCheck(cudaGetLastError());
    cudaCheck(cub::DeviceRadixSort::SortPairs(w.scratch.ptr, scratch_bytes, reinterpret_cast<const unsigned*>(tokens),
                                              reinterpret_cast<unsigned*>(w.sorted_tokens.ptr), w.positions_in.ptr,
                                              w.positions.ptr, N, 0, key_bits, (cudaStream_t)0));
    embedding_backward_v4_kernel<<<dim3(N, ceil_div(C, 256)), 256>>>(dwte, dout, w.sorted_tokens.ptr, w.positions.ptr, N,
                                                                     C, scale);
    cudaCheck(cudaGetLastError());
}

static int backward_v2_threads(int C) { return (int)std::min<long>(256, ceil_div(C / VEC, 32) * 32); }

// ----------------------------------------------------------------------------

// One shape: N tokens drawn from Zipf(1) over V, rows of C; validated, then timed if `timed`.
static void run_shape(int version, const char* name, int N, int V, int C, bool timed) {
    const float scale = 1.0f;
    const std::string shape = shape_name(name, N, C);

    // Zipf(1) over V: rank r has probability proportional to 1 / (r + 1); token id = 7919 r mod V (a
    // bijection, 7919 being prime and not dividing V), so frequent rows are scattered over wte.
    std::vector<double> cdf(V);
    double total = 0;
    for (int r = 0; r < V; r++) cdf[r] = (total += 1.0 / (r + 1));
    Rng rng(61);
    std::vector<int> tokens_h(N);
    for (int& t : tokens_h) {
        const int r = (int)(std::lower_bound(cdf.begin(), cdf.end(), rng.uniform() * total) - cdf.begin());
        t = (int)((7919L * std::min(r, V - 1)) % V);
    }
    std::vector<int> sorted = tokens_h;
    std::sort(sorted.begin(), sorted.end());
    const int K = (int)(std::unique(sorted.begin(), sorted.end()) - sorted.begin());
    int most = 0;
    for (int i = 0, j; i < N; i = j) {
        for (j = i; j < N && sorted[j] == sorted[i]; j++) {}
        most = std::max(most, j - i);
    }
    printf("N %d tokens, Zipf(1) over V %d: %d distinct, the most frequent %d times\n", N, V, K, most);
    DeviceBuffer<int> tokens(N), workspace(embedding_backward_workspace_ints(N, C)), groups(2 * K + 1 + N);
    tokens.upload_raw(tokens_h);
    groups.upload_raw(token_groups(tokens_h));

    const double X = sizeof(floatX);
    if ((version == 2 || version == 3) && C % VEC) unsupported("embedding v2/v3: C must be a multiple of 8 (bf16) or 4 (fp32)");
    printf("%s: N %d, V %d, C %d\n", name, N, V, C);
    DeviceBuffer<floatX> wte((size_t)V * C), out((size_t)N * C), dout((size_t)N * C);
    DeviceBuffer<float> dwte((size_t)V * C);
    wte.fill_normal(62);
    dout.fill_normal(63);

    // forward: STORE_TOL (one product, stored)
    auto forward = [&] {
        if (version == 1) {
            embedding_forward(out.ptr, tokens.ptr, wte.ptr, N, C, scale, 0);
        } else if (version == 4) {
            embedding_forward_v4_kernel<<<ceil_div((long)N * C, 256), 256>>>(out.ptr, tokens.ptr, wte.ptr, N, C, scale);
            cudaCheck(cudaGetLastError());
        } else {
            embedding_forward_v2_kernel<<<ceil_div((long)N * C / VEC, 256), 256>>>(out.ptr, tokens.ptr, wte.ptr, N, C, scale);
            cudaCheck(cudaGetLastError());
        }
    };
    out.poison();
    forward();
    std::vector<double> out_ref((size_t)N * C);
    embedding_forward(out_ref.data(), tokens_h.data(), to_double(wte.download()).data(), N, C, (double)scale);
    Validation forward_checks;
    forward_checks.check("out", out.download(), out_ref, STORE_TOL);
    if (forward_checks.passed && timed)
        report_bandwidth("embedding_forward", shape, version, 2.0 * N * C * X + 4.0 * N, benchmark_kernel(forward));

    // backward: the production launcher (version 1, sort included), or the kernels of versions 2
    // and 3 on the host's groups and pieces.
    dwte.fill_normal(64);
    std::vector<double> dwte_ref = to_double(dwte.download());
    embedding_backward(dwte.ptr, dout.ptr, tokens.ptr, workspace.ptr, N, C, V, scale, 0);
    cudaCheck(cudaDeviceSynchronize());
    PieceWork pieces(tokens_h, C);
    SortedTokensV4 sorted_v4(N);
    if (version == 3)
        printf("  version 3: %d pieces, %d tokens split into %d partial rows\n", pieces.num_pieces, pieces.num_finish,
               pieces.num_slots);
    auto backward = [&] {
        if (version == 1) {
            embedding_backward(dwte.ptr, dout.ptr, tokens.ptr, workspace.ptr, N, C, V, scale, 0);
        } else if (version == 4) {
            embedding_backward_v4(sorted_v4, dwte.ptr, dout.ptr, tokens.ptr, N, C, V, scale);
        } else if (version == 2) {
            embedding_backward_v2_kernel<<<K, backward_v2_threads(C)>>>(dwte.ptr, dout.ptr, groups.ptr, K, C, scale);
        } else {
            embedding_backward_pieces_kernel<<<pieces.num_pieces, backward_v2_threads(C)>>>(
                dwte.ptr, pieces.partial, dout.ptr, pieces.pieces, pieces.positions, C, scale);
            cudaCheck(cudaGetLastError());
            if (pieces.num_finish)
                embedding_backward_finish_kernel<<<pieces.num_finish, backward_v2_threads(C)>>>(
                    dwte.ptr, pieces.partial, pieces.finish, C, scale);
        }
        cudaCheck(cudaGetLastError());
    };
    // Check: dwte starts random, and the version under test adds the gradient once more on top of
    // the production launcher's call above; the reference adds it twice. FP32_TOL: per element
    // two fp32 sums of at most ~1500 terms (a 2^-24 random walk, ~1e-6 relative), added in fp32.
    backward();
    const std::vector<double> dout_h = to_double(dout.download());
    embedding_backward(dwte_ref.data(), dout_h.data(), tokens_h.data(), N, C, (double)scale);
    embedding_backward(dwte_ref.data(), dout_h.data(), tokens_h.data(), N, C, (double)scale);
    Validation backward_checks;
    backward_checks.check("dwte", dwte.download(), dwte_ref, FP32_TOL);
    if (backward_checks.passed && timed)
        report_bandwidth("embedding_backward", shape, version, (N * X + 8.0 * K) * C, benchmark_kernel(backward));
}

int main(int argc, char** argv) {
    const int version = parse_version(argc, argv, 4, VERSIONS);
    measure_ceilings();
    // Small shapes first, validated only: a partial last block, a vector tail, long runs of one token
    // (N 1000 over V 7: runs of ~140 positions, across chunks), C = 18 not a multiple of VEC (versions
    // 1 and 4 only).
    run_shape(version, "small", 300, 50, 24, false);
    run_shape(version, "small", 1000, 7, 64, false);
    if (version == 1 || version == 4) run_shape(version, "small", 500, 3, 18, false);
    if (!small_shapes_only())
        for (const ModelShape& m : MODEL_SHAPES) run_shape(version, m.name, TOKENS, VOCAB, m.C, true);
    return validation_exit_status();
}
