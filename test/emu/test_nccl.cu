// The emulated NCCL (emu/nccl.cpp) across processes, as the trainer runs it: each rank a forked
// process that joins a communicator from an id the parent made before the fork, runs its calls on
// the emulated streams, and writes what it received into memory the parent shares; the parent
// compares that, bitwise, with a reference it computes itself (the emulation reduces in rank order,
// so the reference is exact). Inputs are random (never zero) and of magnitudes 2^-8..2^8, so that
// three-rank sums in another order differ. Also: groups, the issue order across two streams, ranks
// whose calls disagree, a rank killed mid-collective, a rank that never joins, argument errors, and
// no shared-memory segment left behind in /dev/shm.
#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "../catch_compat.h"

namespace {

// ---- processes ----

double now_seconds() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  // the same clock in every process
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Memory the parent and its forked ranks share.
struct SharedMemory {
    void* p;
    size_t bytes;
    explicit SharedMemory(size_t n) : bytes(n) {
        p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        REQUIRE(p != MAP_FAILED);
        memset(p, 0, n);
    }
    ~SharedMemory() { munmap(p, bytes); }
    template <typename T>
    T* as(size_t byte_offset = 0) { return (T*)((char*)p + byte_offset); }
};

// Runs body(rank) in nranks forked processes (ranks[r] < 0: that rank is not started); each
// process's exit status is body's return value (0: fine), or 100 + a signal, or -1 where it was still
// running after timeout_s (then killed). while_running, if given, runs in the parent meanwhile with
// the children's pids.
std::vector<int> run_ranks(int nranks, const std::function<int(int)>& body, double timeout_s = 90,
                           const std::function<void(const std::vector<pid_t>&)>& while_running = {},
                           const std::vector<int>& skip = {}) {
    fflush(stdout);
    fflush(stderr);
    std::vector<pid_t> pids(nranks, -1);
    for (int r = 0; r < nranks; r++) {
        if (std::find(skip.begin(), skip.end(), r) != skip.end()) continue;
        const pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            setenv("EMU_NCCL_TIMEOUT", "60", 0);  // a hang in the emulation fails instead of blocking the suite
            int rc = 98;
            try {
                rc = body(r);
            } catch (const std::exception& e) {
                fprintf(stderr, "rank %d: exception: %s\n", r, e.what());
            }
            fflush(stdout);
            fflush(stderr);
            _exit(rc);
        }
        pids[r] = pid;
    }
    if (while_running) while_running(pids);
    std::vector<int> status(nranks, 0);
    const double t0 = now_seconds();
    for (int r = 0; r < nranks; r++) {
        if (pids[r] < 0) continue;
        int st = 0;
        for (;;) {
            const pid_t w = waitpid(pids[r], &st, WNOHANG);
            if (w == pids[r]) {
                status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
                break;
            }
            if (now_seconds() - t0 > timeout_s) {
                kill(pids[r], SIGKILL);
                waitpid(pids[r], &st, 0);
                status[r] = -1;
                break;
            }
            usleep(2000);
        }
    }
    return status;
}

// The emulation's segments that this process's ids named and that are still in /dev/shm.
std::vector<std::string> leftover_segments() {
    std::vector<std::string> found;
    const std::string prefix = "mixln-emu-nccl-" + std::to_string(getpid()) + "-";
    if (DIR* d = opendir("/dev/shm")) {
        while (dirent* e = readdir(d))
            if (strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) found.push_back(e->d_name);
        closedir(d);
    }
    return found;
}

// A failed check in a rank: printed (the parent's log shows it), and the rank's exit status.
#define RANK_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "rank %d: line %d: check failed: %s\n", rank, __LINE__, #cond);        \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)
#define RANK_NCCL(call) RANK_CHECK((call) == ncclSuccess)
#define RANK_CUDA(call) RANK_CHECK((call) == cudaSuccess)

// ---- data: random, never zero, in the element types the trainer uses ----

uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// A value of magnitude in [2^-8, 2^9), with 53 random mantissa bits.
double value(uint64_t seed, int rank, size_t i) {
    const uint64_t u = mix(mix(seed * 1000003 + rank) + i);
    const double m = 1.0 + (double)(u >> 12) * 0x1p-52;
    const int e = (int)(u % 17) - 8;
    return ((u >> 5) & 1 ? -m : m) * std::ldexp(1.0, e);
}

size_t type_bytes(ncclDataType_t t) { return t == ncclDouble ? 8 : t == ncclFloat ? 4 : 2; }

// Element i of rank's input, in type t, as bytes at out.
void input_element(ncclDataType_t t, uint64_t seed, int rank, size_t i, void* out) {
    const double v = value(seed, rank, i);
    if (t == ncclDouble) memcpy(out, &v, 8);
    else if (t == ncclFloat) { const float f = (float)v; memcpy(out, &f, 4); }
    else { const __nv_bfloat16 b = __float2bfloat16_rn((float)v); memcpy(out, &b, 2); }
}
std::vector<char> input(ncclDataType_t t, uint64_t seed, int rank, size_t n) {
    std::vector<char> v(n * type_bytes(t));
    for (size_t i = 0; i < n; i++) input_element(t, seed, rank, i, v.data() + i * type_bytes(t));
    return v;
}

// acc += x in type t: fp32 and fp64 in their own arithmetic; bf16 as NCCL's __hadd on sm_80+, the
// exact sum rounded to bf16 (here through cuda_bf16.h's host conversions, not the emulation's).
void add_into(ncclDataType_t t, char* acc, const char* x) {
    if (t == ncclDouble) { double a, b; memcpy(&a, acc, 8); memcpy(&b, x, 8); a += b; memcpy(acc, &a, 8); }
    else if (t == ncclFloat) { float a, b; memcpy(&a, acc, 4); memcpy(&b, x, 4); a += b; memcpy(acc, &a, 4); }
    else {
        __nv_bfloat16 a, b;
        memcpy(&a, acc, 2);
        memcpy(&b, x, 2);
        const __nv_bfloat16 s = __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
        memcpy(acc, &s, 2);
    }
}

std::string element_string(ncclDataType_t t, const char* p) {
    char s[64];
    if (t == ncclDouble) { double v; memcpy(&v, p, 8); snprintf(s, sizeof(s), "%.17g", v); }
    else if (t == ncclFloat) { float v; memcpy(&v, p, 4); snprintf(s, sizeof(s), "%.9g", v); }
    else { __nv_bfloat16 v; memcpy(&v, p, 2); snprintf(s, sizeof(s), "%.4g (bf16)", __bfloat162float(v)); }
    return s;
}

// ---- the calls under test ----

enum Kind { AllReduce, ReduceScatter, AllGather, Broadcast, Reduce, SendRecvRing };

struct Case {
    const char* name;
    Kind kind;
    ncclDataType_t type;
    size_t count;  // per rank: sent (all-gather), received (reduce-scatter), moved (the others)
    bool in_place;
    int root;      // broadcast, reduce; -1: the last rank
};

// Odd counts; some larger than the emulation's 256 KiB step, so that they take several.
const std::vector<Case>& all_cases() {
    static const std::vector<Case> cases = {
        {"all-reduce fp32", AllReduce, ncclFloat, 1001, false, 0},
        {"all-reduce fp32 in place, several steps", AllReduce, ncclFloat, 70001, true, 0},
        {"all-reduce bf16", AllReduce, ncclBfloat16, 999, false, 0},
        {"all-reduce bf16 in place, several steps", AllReduce, ncclBfloat16, 140001, true, 0},
        {"all-reduce fp64 in place", AllReduce, ncclDouble, 333, true, 0},
        {"all-reduce fp64 of one", AllReduce, ncclDouble, 1, false, 0},
        {"reduce-scatter fp32", ReduceScatter, ncclFloat, 501, false, 0},
        {"reduce-scatter fp32 in place, several steps", ReduceScatter, ncclFloat, 40001, true, 0},
        {"reduce-scatter bf16", ReduceScatter, ncclBfloat16, 777, false, 0},
        {"reduce-scatter fp64, several steps", ReduceScatter, ncclDouble, 33333, false, 0},
        {"all-gather fp32", AllGather, ncclFloat, 1003, false, 0},
        {"all-gather bf16 in place, several steps", AllGather, ncclBfloat16, 140003, true, 0},
        {"all-gather fp64", AllGather, ncclDouble, 17, false, 0},
        {"broadcast fp32 from the last rank", Broadcast, ncclFloat, 2001, false, -1},
        {"broadcast bf16 in place from rank 0", Broadcast, ncclBfloat16, 999, true, 0},
        {"broadcast fp64 from rank 1, several steps", Broadcast, ncclDouble, 100003, false, 1},
        {"reduce fp32 to rank 1", Reduce, ncclFloat, 3001, false, 1},
        {"send/recv ring fp32, several steps", SendRecvRing, ncclFloat, 90001, false, 0},
        {"send/recv ring bf16", SendRecvRing, ncclBfloat16, 5, false, 0},
        {"send/recv ring fp64", SendRecvRing, ncclDouble, 3, false, 0},
    };
    return cases;
}

int root_of(const Case& c, int W) { return c.root < 0 ? W - 1 : c.root; }
size_t send_count(const Case& c, int W) { return c.kind == ReduceScatter ? c.count * W : c.count; }
size_t recv_count(const Case& c, int W) { return c.kind == AllGather ? c.count * W : c.count; }
uint64_t seed_of(size_t case_index, int W) { return 7919 * (case_index + 1) + W; }

// What rank r of W should receive, computed here from every rank's input.
std::vector<char> reference(const Case& c, size_t case_index, int W, int r) {
    const size_t es = type_bytes(c.type), n = c.count;
    const uint64_t seed = seed_of(case_index, W);
    std::vector<std::vector<char>> in(W);
    for (int q = 0; q < W; q++) in[q] = input(c.type, seed, q, send_count(c, W));
    std::vector<char> out(recv_count(c, W) * es);
    switch (c.kind) {
        case AllReduce:
        case Reduce:
            out = in[0];  // then ranks 1, 2, ... added in order
            for (int q = 1; q < W; q++)
                for (size_t i = 0; i < n; i++) add_into(c.type, &out[i * es], &in[q][i * es]);
            break;
        case ReduceScatter:
            memcpy(out.data(), &in[0][r * n * es], n * es);
            for (int q = 1; q < W; q++)
                for (size_t i = 0; i < n; i++) add_into(c.type, &out[i * es], &in[q][(r * n + i) * es]);
            break;
        case AllGather:
            for (int q = 0; q < W; q++) memcpy(&out[q * n * es], in[q].data(), n * es);
            break;
        case Broadcast: out = in[root_of(c, W)]; break;
        case SendRecvRing: out = in[(r + W - 1) % W]; break;
    }
    return out;
}

// Rank `rank` of W: every case on one stream, all queued before the one wait, then each result into
// results (at offsets[case] + rank * its bytes).
int run_all_cases(int rank, int W, const ncclUniqueId& id, char* results, const std::vector<size_t>& offsets) {
    ncclComm_t comm;
    RANK_NCCL(ncclCommInitRank(&comm, W, id, rank));
    cudaStream_t stream;
    RANK_CUDA(cudaStreamCreate(&stream));
    const auto& cases = all_cases();
    std::vector<void*> buffers, outputs;
    for (size_t k = 0; k < cases.size(); k++) {
        const Case& c = cases[k];
        const size_t es = type_bytes(c.type), n = c.count;
        const std::vector<char> in = input(c.type, seed_of(k, W), rank, send_count(c, W));
        const std::vector<char> junk(std::max(send_count(c, W), recv_count(c, W)) * es, (char)0x5a);  // overwritten, or a failure
        void *send = nullptr, *recv = nullptr;
        if (c.in_place) {
            const size_t bytes = std::max(send_count(c, W), recv_count(c, W)) * es;
            RANK_CUDA(cudaMalloc(&recv, bytes));
            buffers.push_back(recv);
            RANK_CUDA(cudaMemcpy(recv, junk.data(), bytes, cudaMemcpyHostToDevice));
            if (c.kind == AllGather) {  // this rank's part of the output is its input
                send = (char*)recv + rank * n * es;
                RANK_CUDA(cudaMemcpy(send, in.data(), in.size(), cudaMemcpyHostToDevice));
            } else {
                send = recv;
                RANK_CUDA(cudaMemcpy(send, in.data(), in.size(), cudaMemcpyHostToDevice));
                if (c.kind == ReduceScatter) recv = (char*)send + rank * n * es;  // NCCL's in-place reduce-scatter
            }
        } else {
            RANK_CUDA(cudaMalloc(&send, in.size()));
            RANK_CUDA(cudaMalloc(&recv, recv_count(c, W) * es));
            buffers.push_back(send);
            buffers.push_back(recv);
            RANK_CUDA(cudaMemcpy(send, in.data(), in.size(), cudaMemcpyHostToDevice));
            RANK_CUDA(cudaMemcpy(recv, junk.data(), recv_count(c, W) * es, cudaMemcpyHostToDevice));
        }
        outputs.push_back(recv);
        switch (c.kind) {
            case AllReduce: RANK_NCCL(ncclAllReduce(send, recv, n, c.type, ncclSum, comm, stream)); break;
            case ReduceScatter: RANK_NCCL(ncclReduceScatter(send, recv, n, c.type, ncclSum, comm, stream)); break;
            case AllGather: RANK_NCCL(ncclAllGather(send, recv, n, c.type, comm, stream)); break;
            case Broadcast: RANK_NCCL(ncclBroadcast(send, recv, n, c.type, root_of(c, W), comm, stream)); break;
            case Reduce: RANK_NCCL(ncclReduce(send, recv, n, c.type, ncclSum, root_of(c, W), comm, stream)); break;
            case SendRecvRing:  // a group, or the blocking sends of a large ring would wait for each other
                RANK_NCCL(ncclGroupStart());
                RANK_NCCL(ncclSend(send, n, c.type, (rank + 1) % W, comm, stream));
                RANK_NCCL(ncclRecv(recv, n, c.type, (rank + W - 1) % W, comm, stream));
                RANK_NCCL(ncclGroupEnd());
                break;
        }
    }
    RANK_CUDA(cudaStreamSynchronize(stream));
    ncclResult_t async = ncclInternalError;
    RANK_NCCL(ncclCommGetAsyncError(comm, &async));
    RANK_CHECK(async == ncclSuccess);
    for (size_t k = 0; k < cases.size(); k++) {
        const size_t bytes = recv_count(cases[k], W) * type_bytes(cases[k].type);
        RANK_CUDA(cudaMemcpy(results + offsets[k] + rank * bytes, outputs[k], bytes, cudaMemcpyDeviceToHost));
    }
    for (void* p : buffers) RANK_CUDA(cudaFree(p));
    RANK_CUDA(cudaStreamDestroy(stream));
    RANK_NCCL(ncclCommDestroy(comm));
    return 0;
}

// Compares rank r's result of case k with the reference, naming the first difference.
void check_case(const Case& c, size_t k, int W, int r, const char* got) {
    const size_t es = type_bytes(c.type);
    if (c.kind == Reduce && r != root_of(c, W)) return;  // only the root receives
    const std::vector<char> want = reference(c, k, W, r);
    size_t first = want.size();
    for (size_t i = 0; i < want.size(); i += es)
        if (memcmp(&want[i], got + i, es) != 0) { first = i; break; }
    INFO(W << " ranks, rank " << r << ": " << c.name << " (" << c.count << " per rank)");
    if (first < want.size())
        INFO("first difference at element " << first / es << ": got " << element_string(c.type, got + first) << ", want "
                                            << element_string(c.type, &want[first]));
    CHECK(first == want.size());
}

}  // namespace

TEST_CASE("emulated NCCL: every call on 2 and 3 processes, bitwise against a reference in rank order") {
    const auto& cases = all_cases();
    for (int W : {2, 3}) {
        std::vector<size_t> offsets;
        size_t total = 0;
        for (const Case& c : cases) {
            offsets.push_back(total);
            total += W * recv_count(c, W) * type_bytes(c.type);
        }
        SharedMemory results(total);
        ncclUniqueId id;
        REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
        const std::vector<int> status = run_ranks(W, [&](int rank) {
            return run_all_cases(rank, W, id, results.as<char>(), offsets);
        });
        for (int r = 0; r < W; r++) {
            INFO(W << " ranks: rank " << r << "'s exit status (-1: hung)");
            REQUIRE(status[r] == 0);
        }
        for (size_t k = 0; k < cases.size(); k++)
            for (int r = 0; r < W; r++)
                check_case(cases[k], k, W, r, results.as<char>() + offsets[k] + r * recv_count(cases[k], W) * type_bytes(cases[k].type));
    }
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: the reference's rank order matters for three ranks' fp32 and bf16 sums") {
    // Summing in another order (2, 1, 0) changes some bits: the bitwise checks above pin the order.
    for (size_t k : {size_t(0), size_t(2)}) {
        const Case& c = all_cases()[k];
        const size_t es = type_bytes(c.type);
        const std::vector<char> want = reference(c, k, 3, 0);
        std::vector<char> reversed = input(c.type, seed_of(k, 3), 2, c.count);
        for (int q : {1, 0}) {
            const std::vector<char> in = input(c.type, seed_of(k, 3), q, c.count);
            for (size_t i = 0; i < c.count; i++) add_into(c.type, &reversed[i * es], &in[i * es]);
        }
        INFO(c.name);
        CHECK(reversed != want);
    }
}

TEST_CASE("emulated NCCL: a group of all-gathers into a padded buffer, on two streams, with an all-reduce") {
    // As data_parallel.cuh's all_gather: bucket b's slice of every rank into the padded buffer, one
    // group; here half of them on a second stream, which the group joins: waiting for either stream
    // waits for the whole group (NCCL makes a group's streams wait for each other).
    const int W = 3;
    const std::vector<size_t> slices = {7, 1, 301, 64, 3};
    size_t owned_total = 0;
    for (size_t s : slices) owned_total += s;
    const size_t padded_total = owned_total * W;
    SharedMemory results(W * (padded_total * 2 + sizeof(double)));
    ncclUniqueId id;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    const std::vector<int> status = run_ranks(W, [&](int rank) {
        ncclComm_t comm;
        RANK_NCCL(ncclCommInitRank(&comm, W, id, rank));
        cudaStream_t a, b;
        RANK_CUDA(cudaStreamCreate(&a));
        RANK_CUDA(cudaStreamCreate(&b));
        const std::vector<char> owned = input(ncclBfloat16, 11, rank, owned_total);
        void *d_owned, *d_padded;
        double* d_x;
        RANK_CUDA(cudaMalloc(&d_owned, owned.size()));
        RANK_CUDA(cudaMalloc(&d_padded, padded_total * 2));
        RANK_CUDA(cudaMalloc(&d_x, sizeof(double)));
        RANK_CUDA(cudaMemcpy(d_owned, owned.data(), owned.size(), cudaMemcpyHostToDevice));
        RANK_CUDA(cudaMemset(d_padded, 0, padded_total * 2));
        const double x = value(12, rank, 0);
        RANK_CUDA(cudaMemcpy(d_x, &x, sizeof(x), cudaMemcpyHostToDevice));
        RANK_NCCL(ncclGroupStart());
        size_t owned_offset = 0, padded_offset = 0;
        for (size_t i = 0; i < slices.size(); i++) {
            RANK_NCCL(ncclAllGather((char*)d_owned + owned_offset * 2, (char*)d_padded + padded_offset * 2, slices[i], ncclBfloat16, comm,
                                    i % 2 ? b : a));
            owned_offset += slices[i];
            padded_offset += slices[i] * W;
        }
        RANK_NCCL(ncclAllReduce(d_x, d_x, 1, ncclDouble, ncclSum, comm, a));
        RANK_NCCL(ncclGroupEnd());
        RANK_CUDA(cudaStreamSynchronize(b));  // b only: the group's work on a is done too
        char* out = results.as<char>() + rank * (padded_total * 2 + sizeof(double));
        std::vector<char> host(padded_total * 2 + sizeof(double));
        RANK_CUDA(cudaMemcpy(out, d_padded, padded_total * 2, cudaMemcpyDeviceToHost));
        RANK_CUDA(cudaMemcpy(out + padded_total * 2, d_x, sizeof(double), cudaMemcpyDeviceToHost));
        ncclResult_t async;
        RANK_NCCL(ncclCommGetAsyncError(comm, &async));
        RANK_CHECK(async == ncclSuccess);
        RANK_NCCL(ncclCommDestroy(comm));
        return 0;
    });
    for (int r = 0; r < W; r++) REQUIRE(status[r] == 0);
    std::vector<std::vector<char>> owned(W);
    for (int q = 0; q < W; q++) owned[q] = input(ncclBfloat16, 11, q, owned_total);
    std::vector<char> want(padded_total * 2);
    size_t owned_offset = 0, padded_offset = 0;
    for (size_t s : slices) {
        for (int q = 0; q < W; q++) memcpy(&want[(padded_offset + q * s) * 2], &owned[q][owned_offset * 2], s * 2);
        owned_offset += s;
        padded_offset += s * W;
    }
    const double sum = (value(12, 0, 0) + value(12, 1, 0)) + value(12, 2, 0);
    for (int r = 0; r < W; r++) {
        INFO("rank " << r);
        const char* got = results.as<char>() + r * (padded_total * 2 + sizeof(double));
        CHECK(memcmp(got, want.data(), want.size()) == 0);
        double x;
        memcpy(&x, got + padded_total * 2, sizeof(x));
        CHECK(x == sum);
    }
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: calls run in issue order across streams, whichever stream a rank waits for first") {
    // Each rank issues an all-reduce on stream a, an all-gather on stream b, a broadcast on a. Rank 0
    // waits for b first (which must run a's all-reduce before b's all-gather), the others for a first
    // (which runs the all-reduce and the broadcast's turn comes after b's all-gather). Any other order
    // would meet mismatching calls.
    for (int W : {2, 3}) {
        const size_t n1 = 1001, n2 = 77, n3 = 5;
        const size_t per_rank = (n1 + n2 * W + n3) * sizeof(float);
        SharedMemory results(W * per_rank);
        ncclUniqueId id;
        REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
        const std::vector<int> status = run_ranks(W, [&](int rank) {
            ncclComm_t comm;
            RANK_NCCL(ncclCommInitRank(&comm, W, id, rank));
            cudaStream_t a, b;
            RANK_CUDA(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
            RANK_CUDA(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
            float *x, *y, *g, *z;
            RANK_CUDA(cudaMalloc(&x, n1 * 4));
            RANK_CUDA(cudaMalloc(&y, n2 * 4));
            RANK_CUDA(cudaMalloc(&g, n2 * W * 4));
            RANK_CUDA(cudaMalloc(&z, n3 * 4));
            const std::vector<char> in1 = input(ncclFloat, 21, rank, n1), in2 = input(ncclFloat, 22, rank, n2),
                                    in3 = input(ncclFloat, 23, rank, n3);
            RANK_CUDA(cudaMemcpy(x, in1.data(), in1.size(), cudaMemcpyHostToDevice));
            RANK_CUDA(cudaMemcpy(y, in2.data(), in2.size(), cudaMemcpyHostToDevice));
            RANK_CUDA(cudaMemcpy(z, in3.data(), in3.size(), cudaMemcpyHostToDevice));
            RANK_NCCL(ncclAllReduce(x, x, n1, ncclFloat, ncclSum, comm, a));
            RANK_NCCL(ncclAllGather(y, g, n2, ncclFloat, comm, b));
            RANK_NCCL(ncclBroadcast(z, z, n3, ncclFloat, 0, comm, a));
            if (rank == 0) {
                RANK_CUDA(cudaStreamSynchronize(b));
                RANK_CUDA(cudaStreamSynchronize(a));
            } else {
                RANK_CUDA(cudaStreamSynchronize(a));
                RANK_CUDA(cudaStreamSynchronize(b));
            }
            ncclResult_t async;
            RANK_NCCL(ncclCommGetAsyncError(comm, &async));
            RANK_CHECK(async == ncclSuccess);
            char* out = results.as<char>() + rank * per_rank;
            RANK_CUDA(cudaMemcpy(out, x, n1 * 4, cudaMemcpyDeviceToHost));
            RANK_CUDA(cudaMemcpy(out + n1 * 4, g, n2 * W * 4, cudaMemcpyDeviceToHost));
            RANK_CUDA(cudaMemcpy(out + (n1 + n2 * W) * 4, z, n3 * 4, cudaMemcpyDeviceToHost));
            RANK_NCCL(ncclCommDestroy(comm));
            return 0;
        });
        for (int r = 0; r < W; r++) {
            INFO(W << " ranks: rank " << r << "'s exit status (-1: hung)");
            REQUIRE(status[r] == 0);
        }
        std::vector<char> want(per_rank);
        std::vector<char> sum = input(ncclFloat, 21, 0, n1);
        for (int q = 1; q < W; q++) {
            const std::vector<char> in = input(ncclFloat, 21, q, n1);
            for (size_t i = 0; i < n1; i++) add_into(ncclFloat, &sum[i * 4], &in[i * 4]);
        }
        memcpy(want.data(), sum.data(), n1 * 4);
        for (int q = 0; q < W; q++) memcpy(&want[(n1 + q * n2) * 4], input(ncclFloat, 22, q, n2).data(), n2 * 4);
        memcpy(&want[(n1 + n2 * W) * 4], input(ncclFloat, 23, 0, n3).data(), n3 * 4);
        for (int r = 0; r < W; r++) {
            INFO(W << " ranks: rank " << r);
            CHECK(memcmp(results.as<char>() + r * per_rank, want.data(), per_rank) == 0);
        }
    }
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: ranks whose calls disagree get ncclInvalidUsage naming both calls") {
    const int W = 2;
    SharedMemory results(W * 512);
    ncclUniqueId id;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    const std::vector<int> status = run_ranks(W, [&](int rank) {
        ncclComm_t comm;
        RANK_NCCL(ncclCommInitRank(&comm, W, id, rank));
        float* x;
        RANK_CUDA(cudaMalloc(&x, 64 * 4));
        RANK_CUDA(cudaMemset(x, 0, 64 * 4));
        RANK_NCCL(ncclAllReduce(x, x, rank == 0 ? 10 : 11, ncclFloat, ncclSum, comm, 0));
        RANK_CUDA(cudaStreamSynchronize(0));
        ncclResult_t async;
        RANK_NCCL(ncclCommGetAsyncError(comm, &async));
        RANK_CHECK(async == ncclInvalidUsage);
        RANK_CHECK(ncclAllReduce(x, x, 1, ncclFloat, ncclSum, comm, 0) == ncclInvalidUsage);  // and every later call
        snprintf(results.as<char>(rank * 512), 512, "%s", ncclGetLastError(comm));
        RANK_NCCL(ncclCommAbort(comm));
        return 0;
    });
    for (int r = 0; r < W; r++) {
        REQUIRE(status[r] == 0);
        const std::string message = results.as<char>(r * 512);
        INFO(message);
        CHECK(message.find("ncclAllReduce #0 of 10 ncclFloat32") != std::string::npos);
        CHECK(message.find("ncclAllReduce #0 of 11 ncclFloat32") != std::string::npos);
    }
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: a rank killed mid-collective ends the others' calls with ncclRemoteError within seconds") {
    // Three ranks all-reduce in a loop until one fails; the parent kills rank 2 (SIGKILL) once every
    // rank has done a few. Rank 0 waits as data_parallel.cuh's wait_for_stream does (polling
    // cudaStreamQuery and ncclCommGetAsyncError), rank 1 in cudaStreamSynchronize.
    const int W = 3;
    struct Report {
        std::atomic<int> iterations;
        double detected_at;
        int async_error, next_call;
        char last_error[400];
    };
    SharedMemory shared(sizeof(double) + W * sizeof(Report));
    double* killed_at = shared.as<double>();
    Report* reports = shared.as<Report>(64);
    ncclUniqueId id;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    const std::vector<int> status = run_ranks(
        W,
        [&](int rank) {
            Report& report = reports[rank];
            ncclComm_t comm;
            RANK_NCCL(ncclCommInitRank(&comm, W, id, rank));
            cudaStream_t stream;
            RANK_CUDA(cudaStreamCreate(&stream));
            const size_t n = 100001;  // several steps: the kill lands inside a collective
            float* x;
            RANK_CUDA(cudaMalloc(&x, n * 4));
            const std::vector<char> in = input(ncclFloat, 31, rank, n);
            RANK_CUDA(cudaMemcpy(x, in.data(), in.size(), cudaMemcpyHostToDevice));
            for (int it = 0; it < 1000000; it++) {
                RANK_NCCL(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm, stream));
                ncclResult_t async = ncclSuccess;
                if (rank == 0) {
                    for (;;) {  // data_parallel.cuh's wait_for_stream
                        const cudaError_t state = cudaStreamQuery(stream);
                        if (state == cudaSuccess) break;
                        RANK_CHECK(state == cudaErrorNotReady);
                        RANK_NCCL(ncclCommGetAsyncError(comm, &async));
                        if (async != ncclSuccess && async != ncclInProgress) break;
                        usleep(20);
                    }
                } else {
                    RANK_CUDA(cudaStreamSynchronize(stream));
                    RANK_NCCL(ncclCommGetAsyncError(comm, &async));
                }
                if (async != ncclSuccess) {
                    report.detected_at = now_seconds();
                    report.async_error = async;
                    report.next_call = ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm, stream);
                    snprintf(report.last_error, sizeof(report.last_error), "%s", ncclGetLastError(comm));
                    ncclCommAbort(comm);  // as the trainer's exit handler
                    return 0;
                }
                report.iterations.fetch_add(1);
            }
            return 2;  // never failed
        },
        60,
        [&](const std::vector<pid_t>& pids) {
            const double t0 = now_seconds();
            while (now_seconds() - t0 < 30 && (reports[0].iterations < 3 || reports[1].iterations < 3 || reports[2].iterations < 3))
                usleep(1000);
            usleep(20000);
            *killed_at = now_seconds();
            kill(pids[2], SIGKILL);
        });
    CHECK(status[2] == 100 + SIGKILL);
    for (int r = 0; r < 2; r++) {
        INFO("rank " << r << " (exit status " << status[r] << ", -1: hung): " << reports[r].last_error);
        REQUIRE(status[r] == 0);
        CHECK(reports[r].iterations >= 3);
        CHECK(reports[r].async_error == ncclRemoteError);
        CHECK(reports[r].next_call == ncclRemoteError);
        CHECK(reports[r].detected_at - *killed_at < 5.0);
        CHECK(std::string(reports[r].last_error).find("rank 2") != std::string::npos);
    }
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: ncclCommInitRank gives up when a rank never joins, naming it") {
    const int W = 3;
    SharedMemory shared(512 + 64);
    ncclUniqueId id;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    const double t0 = now_seconds();
    const std::vector<int> status = run_ranks(
        W,
        [&](int rank) {
            setenv("EMU_NCCL_TIMEOUT", "1", 1);
            ncclComm_t comm;
            const ncclResult_t result = ncclCommInitRank(&comm, W, id, rank);
            *shared.as<int>(512) = result;
            snprintf(shared.as<char>(), 512, "%s", ncclGetLastError(nullptr));
            return 0;
        },
        30, {}, {1, 2});  // only rank 0 starts
    REQUIRE(status[0] == 0);
    const std::string message = shared.as<char>();
    INFO(message);
    CHECK(*shared.as<int>(512) == ncclSystemError);
    CHECK(message.find("rank(s) 1, 2 did not arrive") != std::string::npos);
    CHECK(now_seconds() - t0 < 10);
    CHECK(leftover_segments().empty());
}

TEST_CASE("emulated NCCL: one rank in this process; argument errors as NCCL returns them") {
    ncclUniqueId id, other;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    REQUIRE(ncclGetUniqueId(&other) == ncclSuccess);
    CHECK(memcmp(&id, &other, sizeof(id)) != 0);  // unique per call
    ncclComm_t comm;
    REQUIRE(ncclCommInitRank(&comm, 1, id, 0) == ncclSuccess);
    CHECK(leftover_segments().empty());  // unlinked once every rank has it mapped
    int count = 0, rank = -1;
    CHECK(ncclCommCount(comm, &count) == ncclSuccess);
    CHECK(ncclCommUserRank(comm, &rank) == ncclSuccess);
    CHECK((count == 1 && rank == 0));

    float* d;
    REQUIRE(cudaMalloc(&d, 8 * sizeof(float)) == cudaSuccess);
    const float h_in[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    REQUIRE(cudaMemcpy(d, h_in, sizeof(h_in), cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(ncclAllReduce(d, d, 8, ncclFloat, ncclSum, comm, 0) == ncclSuccess);
    float h_out[8] = {};
    REQUIRE(cudaMemcpy(h_out, d, sizeof(h_out), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(memcmp(h_in, h_out, sizeof(h_in)) == 0);

    CHECK(ncclBroadcast(d, d, 8, ncclFloat, 1, comm, 0) == ncclInvalidArgument);  // no rank 1
    CHECK(std::string(ncclGetLastError(comm)).find("root 1") != std::string::npos);
    CHECK(ncclAllReduce(h_in, d, 8, ncclFloat, ncclSum, comm, 0) == ncclInvalidArgument);  // host memory
    CHECK(ncclAllReduce(d, d, 9, ncclFloat, ncclSum, comm, 0) == ncclInvalidArgument);     // past the end
    CHECK(ncclAllReduce(d, d, 8, ncclFloat, ncclAvg, comm, 0) == ncclInvalidArgument);     // not emulated
    CHECK(ncclAllReduce(d, d, 8, ncclNumTypes, ncclSum, comm, 0) == ncclInvalidArgument);
    CHECK(ncclAllReduce(d, d, 8, ncclFloat, ncclSum, nullptr, 0) == ncclInvalidArgument);
    CHECK(ncclGroupEnd() == ncclInvalidUsage);
    ncclComm_t again;
    CHECK(ncclCommInitRank(&again, 2, id, 2) == ncclInvalidArgument);
    ncclResult_t async = ncclInternalError;
    CHECK(ncclCommGetAsyncError(comm, &async) == ncclSuccess);
    CHECK(async == ncclSuccess);  // argument errors are not the communicator's
    CHECK(std::string(ncclGetErrorString(ncclRemoteError)) == "remote process exited or there was a network error");
    CHECK(std::string(ncclGetErrorString(ncclSuccess)) == "no error");
    REQUIRE(cudaFree(d) == cudaSuccess);
    CHECK(ncclCommDestroy(comm) == ncclSuccess);
}
