// NCCL across processes, emulated: the C API of NVIDIA's nccl.h, defined here and linked instead of
// libnccl. One process per rank, as the trainer runs (data_parallel.cuh, core/rendezvous.h): the ranks
// of a communicator meet in a POSIX shared-memory segment whose name travels inside the unique id.
//
// What runs when. Every communication call (ncclAllReduce, ncclReduceScatter, ncclAllGather,
// ncclBroadcast, ncclReduce, ncclSend/ncclRecv, or a whole ncclGroupStart/End group) checks its
// arguments at once, as NCCL does, and queues one work item on its stream (emu::submit, stream.h).
// The item runs when this rank's host waits for the stream; it then meets the other ranks' matching
// call in the segment. A communicator's calls run in the order they were issued, on every rank, even
// when they are on different streams and the host waits for a later stream first: each item is
// queued after the communicator's previous one (submit's `after`), which is NCCL's own rule (calls
// on one communicator must be issued in the same order on every rank).
//
// Reductions (ncclSum, ncclProd, ncclMax, ncclMin) combine the ranks' contributions in rank order,
// ((x0 + x1) + x2) + ..., in the element type's arithmetic, and every rank receives the same bits.
// That order is the emulation's, fixed. Real NCCL documents no order: its ring adds one rank at a
// time around the ring, starting each chunk at a different rank, so the order depends on the
// element's position, the message size and the algorithm chosen (tree, NVLS); what its maintainers
// state is only that every rank receives the same value (NVIDIA/nccl issues #855, #434), and NVLS is
// not even repeatable from one call to the next (#1497). Two ranks are the exception: x0 + x1 = x1 +
// x0, so two-rank sums are bitwise those of real NCCL. A test that compares W ranks with one rank
// bitwise may rely on the order only where the trainer fixes it itself (data_parallel.cuh's gradient
// norm all-gathers the ranks' partial sums and adds them in rank order); its bucket sums
// (reduce-scatter, all-reduce of fp32 gradients) and the loss's fp64 sum are NCCL's and need a
// stated bound on three or more ranks.
//
// bf16 and fp16 sums (and products) round to the element type after every addition, as NCCL's ring
// and tree kernels do on sm_80 and later: reduce_kernel.h (NVIDIA/nccl, src/device/) reduces
// __nv_bfloat16 with __hadd / __hadd2, i.e. the exact sum of two bf16 values rounded to nearest even
// bf16, W - 1 roundings for W ranks. (Only NVLS on NVSwitch systems reduces bf16 in fp32 and rounds
// once: multimem.ld_reduce ... .acc::f32; not emulated.) The trainer's sums are fp32 and fp64; its
// bf16 calls are all-gathers, which move bits.
//
// A rank that dies. While a call waits for other ranks it checks them: a process that has exited or
// was killed (kill(pid, 0), and /proc/PID/stat for a zombie not yet reaped; the ranks must share a
// PID namespace, as processes on one machine do), a rank that aborted or destroyed its communicator,
// or, failing those, EMU_NCCL_TIMEOUT seconds (default 300) without the others arriving (time a
// peer spends stopped, e.g. in gdb, does not count). The call then gives up: the communicator's
// asynchronous error (ncclCommGetAsyncError) becomes ncclRemoteError ("remote process exited or
// there was a network error", as NCCL reports a peer that went away), or ncclSystemError for the
// timeout; ncclGetLastError says what happened, a line goes to stderr, every later call on the
// communicator returns that error (NCCL's ncclCommEnsureReady), and items already queued do nothing.
// The output buffers are left as they were (partly written, maybe). The trainer's wait_for_stream
// (data_parallel.cuh) sees it: the runtime's cudaStreamQuery runs the stream's work and answers
// cudaErrorNotReady that first time, so the loop asks ncclCommGetAsyncError, prints the error and
// exits. Ranks whose collectives mismatch (kind, count, type, operation or root) get
// ncclInvalidUsage naming both calls, where real NCCL would hang or corrupt memory.
//
// The segment: created by the first rank of ncclCommInitRank (O_EXCL), unlinked as soon as every rank
// has mapped it, so that nothing stays in /dev/shm whatever happens to the ranks afterwards (or by a
// rank that gives up waiting for the others). Layout: a header, one record per rank (pid, state,
// barrier count, the descriptor of its current collective), one chunk-sized slot per rank for
// collectives (each chunk: every rank writes its slot, barrier, every rank reads the slots it needs,
// barrier), and one chunk-sized channel per ordered pair of ranks for send/receive.
//
// Not emulated: ncclAvg and fp8 reductions, ncclCommSplit and the other calls not defined below
// (linking fails, rather than something running wrongly), non-blocking communicators (a config's
// blocking = 0 initializes blocking, which a caller polling ncclInProgress also accepts).
#include <nccl.h>
#include "stream.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

// ----------------------------------------------------------------------------
// Errors: the last message (ncclGetLastError) and the codes

std::mutex g_error_mutex;
std::string g_last_error;

ncclResult_t fail_call(ncclResult_t code, const char* format, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t fail_call(ncclResult_t code, const char* format, ...) {
    char buffer[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(buffer, sizeof(buffer), format, args);
    va_end(args);
    std::lock_guard<std::mutex> lock(g_error_mutex);
    g_last_error = buffer;
    return code;
}

double timeout_seconds() {
    const char* s = getenv("EMU_NCCL_TIMEOUT");
    if (s && *s) {
        const double t = atof(s);
        if (t > 0) return t;
    }
    return 300;
}

// ----------------------------------------------------------------------------
// The unique id and the shared segment

constexpr char kIdMagic[] = "mixln-emu-nccl 1";
struct IdContents {
    char magic[sizeof(kIdMagic)];
    char shm_name[96];
};
static_assert(sizeof(IdContents) <= NCCL_UNIQUE_ID_BYTES, "the id's contents fit in ncclUniqueId");

constexpr size_t kChunkBytes = 256 * 1024;  // a slot's or a channel's bytes: one step of a call
constexpr uint32_t kSegmentReady = 0x4e43434c;

enum RankState : int32_t { kAbsent = 0, kJoined = 1, kDestroyed = 2, kAborted = 3 };

enum OpKind : int32_t { kAllReduce = 1, kReduceScatter, kAllGather, kBroadcast, kReduce, kSend, kRecv };

const char* op_name(int kind) {
    switch (kind) {
        case kAllReduce: return "ncclAllReduce";
        case kReduceScatter: return "ncclReduceScatter";
        case kAllGather: return "ncclAllGather";
        case kBroadcast: return "ncclBroadcast";
        case kReduce: return "ncclReduce";
        case kSend: return "ncclSend";
        case kRecv: return "ncclRecv";
    }
    return "?";
}

const char* type_name(int type) {
    static const char* names[] = {"ncclInt8",  "ncclUint8",  "ncclInt32",   "ncclUint32",     "ncclInt64",     "ncclUint64",
                                  "ncclFloat16", "ncclFloat32", "ncclFloat64", "ncclBfloat16", "ncclFloat8e4m3", "ncclFloat8e5m2"};
    return type >= 0 && type < (int)ncclNumTypes ? names[type] : "?";
}

const char* redop_name(int op) {
    static const char* names[] = {"ncclSum", "ncclProd", "ncclMax", "ncclMin", "ncclAvg"};
    return op >= 0 && op < (int)ncclNumOps ? names[op] : "?";
}

size_t type_size(ncclDataType_t type) {
    switch (type) {
        case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
        default: return 0;
    }
}

struct alignas(64) SegmentHeader {
    std::atomic<uint32_t> ready;  // kSegmentReady once the creator has filled in the rest
    int32_t nranks;
    uint64_t chunk_bytes, total_bytes;
    std::atomic<int32_t> attached;  // ranks that have mapped the segment
};

// The descriptor of a collective, which every rank compares with the others'.
struct Descriptor {
    uint64_t seq;  // the communicator's collectives so far, on this rank
    int32_t kind, type, op, root;
    uint64_t count;
};

struct alignas(64) RankRecord {
    std::atomic<int32_t> pid;    // 0: not joined yet
    std::atomic<int32_t> state;  // RankState
    std::atomic<uint64_t> arrived;  // the barriers this rank has reached
    Descriptor current;             // valid from its arrival at the collective's first barrier
};

struct alignas(64) ChannelHeader {   // one direction between two ranks; chunk_bytes of data follow
    std::atomic<uint64_t> posted;    // chunks the sender has written
    std::atomic<uint64_t> taken;     // chunks the receiver has read
    uint64_t op_bytes, chunk_bytes;  // the chunk in the buffer: its send's size, its own size
};

struct Layout {
    size_t records, slots, channels, total;
    explicit Layout(int n) {
        records = sizeof(SegmentHeader);
        slots = records + sizeof(RankRecord) * n;
        channels = slots + kChunkBytes * n;
        total = channels + (sizeof(ChannelHeader) + kChunkBytes) * (size_t)n * n;
    }
};

bool process_gone(pid_t pid, bool* stopped) {
    *stopped = false;
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    // A zombie (exited, not yet reaped by its parent) still answers kill().
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE* f = fopen(path, "r");
    if (!f) return false;  // no /proc: kill() has to do
    char buffer[512];
    const size_t n = fread(buffer, 1, sizeof(buffer) - 1, f);
    fclose(f);
    buffer[n] = 0;
    const char* paren = strrchr(buffer, ')');
    if (!paren || paren[1] != ' ') return false;
    const char state = paren[2];
    *stopped = state == 'T' || state == 't';
    return state == 'Z' || state == 'X';
}

// ----------------------------------------------------------------------------
// A communicator: this process's view of the segment

struct Op {
    OpKind kind;
    const void* send;
    void* recv;
    size_t count;  // elements: per rank for ncclReduceScatter (received) and ncclAllGather (sent)
    ncclDataType_t type;
    ncclRedOp_t redop;
    int peer;  // the root (broadcast, reduce) or the peer (send, receive)
    cudaStream_t stream;
};

struct State {
    int rank = 0, nranks = 0;
    std::string shm_name;
    char* base = nullptr;
    size_t bytes = 0;
    SegmentHeader* header = nullptr;
    RankRecord* records = nullptr;
    std::atomic<int> async_error{ncclSuccess};
    std::string error_message;  // why, once async_error is set
    std::atomic<bool> aborted{false};
    uint64_t barriers = 0, collectives = 0;  // this rank's counts (the same on every rank)
    emu::Ticket last;                        // the communicator's last queued item
    int queued = 0;                          // items queued, not run yet

    ~State() {
        if (base) munmap(base, bytes);
    }
    RankRecord& record(int r) { return records[r]; }
    char* slot(int r) { return base + Layout(nranks).slots + kChunkBytes * r; }
    ChannelHeader* channel(int from, int to) {
        return (ChannelHeader*)(base + Layout(nranks).channels + (sizeof(ChannelHeader) + kChunkBytes) * ((size_t)from * nranks + to));
    }
    char* channel_data(int from, int to) { return (char*)(channel(from, to) + 1); }
};

}  // namespace

struct ncclComm {
    std::shared_ptr<State> state;
};

namespace {

// Gives up the call in progress: the communicator's asynchronous error, the last error's message,
// and a line on stderr.
void give_up(State& st, ncclResult_t code, const std::string& why) {
    int expected = ncclSuccess;
    if (!st.async_error.compare_exchange_strong(expected, code)) return;  // the first error stays
    const std::string message = "emulated NCCL, rank " + std::to_string(st.rank) + " of " + std::to_string(st.nranks) + ": " + why;
    st.error_message = message;
    fail_call(code, "%s", message.c_str());
    fprintf(stderr, "emu: %s\n", message.c_str());
}

// Waits until missing(&ranks) returns true (nothing missing), checking the ranks it left in `ranks`
// (those still awaited): returns false after giving up (a dead, aborted or departed rank, this
// communicator aborted, or the timeout).
bool wait_for(State& st, const std::function<bool(std::vector<int>*)>& done, const char* what) {
    using clock = std::chrono::steady_clock;
    const double timeout = timeout_seconds();
    auto last_check = clock::now();
    double waited = 0;  // seconds, without the time a missing rank spent stopped
    std::vector<int> missing;
    for (unsigned spin = 0;; spin++) {
        missing.clear();
        if (done(&missing)) return true;
        if (st.aborted.load()) {
            give_up(st, ncclInvalidUsage, std::string(what) + ": the communicator was aborted (ncclCommAbort) while waiting");
            return false;
        }
        if (spin < 64) {
            sched_yield();
            continue;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(spin < 1000 ? 20 : 200));
        const auto now = clock::now();
        const double since = std::chrono::duration<double>(now - last_check).count();
        if (since < 0.02) continue;
        last_check = now;
        bool any_stopped = false;
        for (int r : missing) {
            RankRecord& peer = st.record(r);
            const int state = peer.state.load(std::memory_order_acquire);
            const pid_t pid = peer.pid.load(std::memory_order_acquire);
            const std::string who = "rank " + std::to_string(r) + (pid > 0 ? " (pid " + std::to_string(pid) + ")" : std::string());
            if (state == kAborted) {
                give_up(st, ncclRemoteError, std::string(what) + ": " + who + " aborted its communicator (ncclCommAbort)");
                return false;
            }
            if (state == kDestroyed) {
                give_up(st, ncclRemoteError, std::string(what) + ": " + who + " destroyed its communicator (ncclCommDestroy) without making this call");
                return false;
            }
            bool stopped = false;
            if (pid > 0 && process_gone(pid, &stopped)) {
                give_up(st, ncclRemoteError, std::string(what) + ": " + who + " exited or was killed while rank " +
                                                 std::to_string(st.rank) + " waited for it");
                return false;
            }
            any_stopped = any_stopped || stopped;
        }
        if (!any_stopped) waited += since;
        if (waited > timeout && !missing.empty()) {
            std::string list;
            for (int r : missing) list += (list.empty() ? "" : ", ") + std::to_string(r);
            give_up(st, ncclSystemError, std::string(what) + ": rank(s) " + list + " did not arrive within " +
                                             std::to_string((int)timeout) + " s (EMU_NCCL_TIMEOUT)");
            return false;
        }
    }
}

// Every rank's barrier number k.
bool barrier(State& st, const char* what) {
    const uint64_t k = ++st.barriers;
    st.record(st.rank).arrived.store(k, std::memory_order_release);
    return wait_for(st, [&](std::vector<int>* missing) {
        for (int r = 0; r < st.nranks; r++)
            if (st.record(r).arrived.load(std::memory_order_acquire) < k) missing->push_back(r);
        return missing->empty();
    }, what);
}

// ---- element arithmetic: each rank's contribution added in rank order ----

float bf16_to_float(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t float_to_bf16(float f) {  // round to nearest even
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN (quiet)
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float magnitude;
    if (exponent == 0) magnitude = std::ldexp((float)mantissa, -24);
    else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    else magnitude = std::ldexp((float)(mantissa | 0x400), (int)exponent - 25);
    uint32_t u;
    memcpy(&u, &magnitude, 4);
    u |= sign;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t float_to_half(float f) {  // round to nearest even
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return sign | (ax > 0x7f800000 ? 0x7e00 : 0x7c00);
    if (ax >= 0x477ff000) return sign | 0x7c00;  // 65520 and above round to infinity
    if (ax < 0x38800000) {                       // below 2^-14: a subnormal half, in units of 2^-24
        float a;
        memcpy(&a, &ax, 4);
        return sign | (uint16_t)std::nearbyint(a * 16777216.0f);
    }
    return sign | (uint16_t)((ax + 0x0fff + ((ax >> 13) & 1) - 0x38000000) >> 13);
}

template <typename T>
T combine(ncclRedOp_t op, T a, T b) {
    switch (op) {
        case ncclSum: return (T)(a + b);
        case ncclProd: return (T)(a * b);
        case ncclMax: return a < b ? b : a;
        default: return b < a ? b : a;  // ncclMin
    }
}
template <>
float combine(ncclRedOp_t op, float a, float b) {
    switch (op) {
        case ncclSum: return a + b;
        case ncclProd: return a * b;
        case ncclMax: return fmaxf(a, b);
        default: return fminf(a, b);
    }
}
template <>
double combine(ncclRedOp_t op, double a, double b) {
    switch (op) {
        case ncclSum: return a + b;
        case ncclProd: return a * b;
        case ncclMax: return fmax(a, b);
        default: return fmin(a, b);
    }
}

// out[i] = src[0][i] combined with src[1][i], then src[2][i], ... (rank order), for n elements of T.
template <typename T>
void reduce_plain(void* out, const std::vector<const char*>& src, size_t n, ncclRedOp_t op) {
    for (size_t i = 0; i < n; i++) {
        T acc;
        memcpy(&acc, src[0] + i * sizeof(T), sizeof(T));
        for (size_t r = 1; r < src.size(); r++) {
            T x;
            memcpy(&x, src[r] + i * sizeof(T), sizeof(T));
            acc = combine<T>(op, acc, x);
        }
        memcpy((char*)out + i * sizeof(T), &acc, sizeof(T));
    }
}
// Signed integers add and multiply as two's complement, wrapping (as the GPU does).
template <typename S, typename U>
void reduce_signed(void* out, const std::vector<const char*>& src, size_t n, ncclRedOp_t op) {
    if (op == ncclSum || op == ncclProd) reduce_plain<U>(out, src, n, op);
    else reduce_plain<S>(out, src, n, op);
}
// The same for a 16-bit float type (its bits): each step in fp32, rounded back to the type.
template <float (*to_float)(uint16_t), uint16_t (*from_float)(float)>
void reduce_16bit(void* out, const std::vector<const char*>& src, size_t n, ncclRedOp_t op) {
    for (size_t i = 0; i < n; i++) {
        uint16_t acc;
        memcpy(&acc, src[0] + i * 2, 2);
        for (size_t r = 1; r < src.size(); r++) {
            uint16_t x;
            memcpy(&x, src[r] + i * 2, 2);
            acc = from_float(combine<float>(op, to_float(acc), to_float(x)));  // rounded after every step
        }
        memcpy((char*)out + i * 2, &acc, 2);
    }
}

void reduce(ncclDataType_t type, void* out, const std::vector<const char*>& src, size_t n, ncclRedOp_t op) {
    switch (type) {
        case ncclInt8: reduce_signed<int8_t, uint8_t>(out, src, n, op); break;
        case ncclUint8: reduce_plain<uint8_t>(out, src, n, op); break;
        case ncclInt32: reduce_signed<int32_t, uint32_t>(out, src, n, op); break;
        case ncclUint32: reduce_plain<uint32_t>(out, src, n, op); break;
        case ncclInt64: reduce_signed<int64_t, uint64_t>(out, src, n, op); break;
        case ncclUint64: reduce_plain<uint64_t>(out, src, n, op); break;
        case ncclFloat16: reduce_16bit<half_to_float, float_to_half>(out, src, n, op); break;
        case ncclFloat32: reduce_plain<float>(out, src, n, op); break;
        case ncclFloat64: reduce_plain<double>(out, src, n, op); break;
        case ncclBfloat16: reduce_16bit<bf16_to_float, float_to_bf16>(out, src, n, op); break;
        default: break;  // refused when the call was made
    }
}

// ---- the collectives: chunk by chunk through the ranks' slots ----

std::string describe(const Descriptor& d) {
    std::string s = std::string(op_name(d.kind)) + " #" + std::to_string(d.seq) + " of " + std::to_string(d.count) + " " +
                    type_name(d.type);
    if (d.kind == kAllReduce || d.kind == kReduceScatter || d.kind == kReduce) s += std::string(" ") + redop_name(d.op);
    if (d.kind == kBroadcast || d.kind == kReduce) s += " from root " + std::to_string(d.root);
    return s;
}

bool run_collective(State& st, const Op& op) {
    const int W = st.nranks, me = st.rank;
    const size_t es = type_size(op.type);
    Descriptor mine{st.collectives++, op.kind, op.type, op.redop, op.peer, op.count};
    if (op.kind == kAllGather || op.kind == kBroadcast) mine.op = 0;  // no reduction: not compared
    if (op.kind != kBroadcast && op.kind != kReduce) mine.root = 0;
    st.record(me).current = mine;
    const std::string what = describe(mine);
    if (!barrier(st, what.c_str())) return false;
    for (int r = 0; r < W; r++) {
        const Descriptor& d = st.record(r).current;
        if (d.seq != mine.seq || d.kind != mine.kind || d.type != mine.type || d.op != mine.op || d.root != mine.root ||
            d.count != mine.count) {
            give_up(st, ncclInvalidUsage, "the ranks' calls do not match: rank " + std::to_string(me) + " made " + what +
                                              ", rank " + std::to_string(r) + " " + describe(d) +
                                              " (real NCCL would hang or corrupt memory)");
            return false;
        }
    }
    const char* send = (const char*)op.send;
    char* recv = (char*)op.recv;
    // Elements per step: the slot holds W of them per element for a reduce-scatter.
    const size_t per_step = op.kind == kReduceScatter ? kChunkBytes / (es * W) : kChunkBytes / es;
    std::vector<const char*> src(W);
    for (size_t begin = 0; begin < op.count; begin += per_step) {
        const size_t n = std::min(per_step, op.count - begin);
        // Each rank's contribution into its slot.
        char* slot = st.slot(me);
        if (op.kind == kReduceScatter) {
            for (int d = 0; d < W; d++) memcpy(slot + d * n * es, send + (d * op.count + begin) * es, n * es);
        } else if (op.kind != kBroadcast || me == op.peer) {
            memcpy(slot, send + begin * es, n * es);
        }
        if (!barrier(st, what.c_str())) return false;
        switch (op.kind) {
            case kAllReduce:
            case kReduce:
                if (op.kind == kAllReduce || me == op.peer) {
                    for (int r = 0; r < W; r++) src[r] = st.slot(r);
                    reduce(op.type, recv + begin * es, src, n, op.redop);
                }
                break;
            case kReduceScatter:
                for (int r = 0; r < W; r++) src[r] = st.slot(r) + me * n * es;
                reduce(op.type, recv + begin * es, src, n, op.redop);
                break;
            case kAllGather:
                for (int r = 0; r < W; r++) memmove(recv + (r * op.count + begin) * es, st.slot(r), n * es);
                break;
            case kBroadcast:
                memmove(recv + begin * es, st.slot(op.peer), n * es);
                break;
            default: break;
        }
        if (!barrier(st, what.c_str())) return false;  // the slots are free again
    }
    if (op.count == 0 && !barrier(st, what.c_str())) return false;  // descriptors are read before the next call writes
    return true;
}

// ---- send and receive: through the channel of each ordered pair, all of a group's at once ----

struct Transfer {
    const Op* op;
    size_t bytes, done = 0;
    bool started = false;  // a zero-byte transfer still moves one (empty) chunk
    bool finished() const { return started && done >= bytes; }
};

// One step of t if its channel allows: returns whether it moved.
bool progress(State& st, Transfer& t, std::string* mismatch) {
    const int me = st.rank, peer = t.op->peer;
    if (t.op->kind == kSend) {
        ChannelHeader* ch = st.channel(me, peer);
        if (ch->posted.load(std::memory_order_relaxed) != ch->taken.load(std::memory_order_acquire)) return false;
        const size_t n = std::min(kChunkBytes, t.bytes - t.done);
        memcpy(st.channel_data(me, peer), (const char*)t.op->send + t.done, n);
        ch->op_bytes = t.bytes;
        ch->chunk_bytes = n;
        ch->posted.fetch_add(1, std::memory_order_release);
        t.done += n;
        t.started = true;
        return true;
    }
    ChannelHeader* ch = st.channel(peer, me);
    if (ch->posted.load(std::memory_order_acquire) == ch->taken.load(std::memory_order_relaxed)) return false;
    if (ch->op_bytes != t.bytes) {
        *mismatch = "rank " + std::to_string(peer) + " sends " + std::to_string(ch->op_bytes) + " bytes, rank " +
                    std::to_string(me) + " receives " + std::to_string(t.bytes) + " (ncclSend and ncclRecv must agree)";
        return false;
    }
    memcpy((char*)t.op->recv + t.done, st.channel_data(peer, me), ch->chunk_bytes);
    t.done += ch->chunk_bytes;
    t.started = true;
    ch->taken.fetch_add(1, std::memory_order_release);
    return true;
}

bool run_transfers(State& st, const std::vector<const Op*>& ops) {
    std::vector<Transfer> transfers;
    for (const Op* op : ops) transfers.push_back(Transfer{op, op->count * type_size(op->type)});
    std::string mismatch;
    const auto finished = [&](std::vector<int>* missing) {
        for (bool moved = true; moved;) {
            moved = false;
            for (Transfer& t : transfers)
                while (!t.finished() && mismatch.empty() && progress(st, t, &mismatch)) moved = true;
        }
        if (!mismatch.empty()) return true;
        for (const Transfer& t : transfers)
            if (!t.finished() && std::find(missing->begin(), missing->end(), t.op->peer) == missing->end()) missing->push_back(t.op->peer);
        return missing->empty();
    };
    std::string what = transfers.size() == 1 ? std::string(op_name(ops[0]->kind)) + (ops[0]->kind == kSend ? " to rank " : " from rank ") +
                                                   std::to_string(ops[0]->peer)
                                             : std::to_string(transfers.size()) + " sends and receives of a group";
    if (!wait_for(st, finished, what.c_str())) return false;
    if (!mismatch.empty()) {
        give_up(st, ncclInvalidUsage, mismatch);
        return false;
    }
    return true;
}

// The work item of a call or a group: its collectives in order, then its sends and receives.
void run_ops(const std::shared_ptr<State>& state, const std::vector<Op>& ops) {
    State& st = *state;
    if (st.aborted.load() || st.async_error.load() != ncclSuccess) return;  // a broken communicator does nothing
    std::vector<const Op*> transfers;
    for (const Op& op : ops) {
        if (op.kind == kSend || op.kind == kRecv) transfers.push_back(&op);
        else if (!run_collective(st, op)) return;
    }
    if (!transfers.empty()) run_transfers(st, transfers);
}

// ---- queuing ----

struct PendingGroup {
    int depth = 0;
    std::vector<std::pair<std::shared_ptr<State>, Op>> ops;
};
thread_local PendingGroup g_group;

// Queues ops (one communicator's, in issue order) as one item after the communicator's previous one.
// The ops' streams other than the first wait for the item, and it for them (NCCL joins a group's
// streams so).
ncclResult_t enqueue(const std::shared_ptr<State>& state, std::vector<Op> ops, const char* what) {
    State& st = *state;
    std::vector<cudaStream_t> streams;
    for (const Op& op : ops)
        if (std::find(streams.begin(), streams.end(), op.stream) == streams.end()) streams.push_back(op.stream);
    std::vector<emu::Ticket> after;
    if (st.last.seq) after.push_back(st.last);
    for (size_t i = 1; i < streams.size(); i++) {  // the other streams' work so far
        emu::Ticket t;
        const cudaError_t e = emu::submit(streams[i], what, [] {}, {}, &t);
        if (e != cudaSuccess)
            return fail_call(ncclUnhandledCudaError, "%s: queuing on stream %p failed: %s", what, (void*)streams[i], cudaGetErrorString(e));
        if (t.seq) after.push_back(t);
    }
    emu::Ticket ticket;
    auto counted = std::make_shared<bool>(false);  // in st.queued until it runs (not when captured)
    const cudaError_t e = emu::submit(streams[0], what, [state, ops, counted] {
        if (*counted) state->queued--;
        *counted = false;
        run_ops(state, ops);
    }, after, &ticket);
    if (e != cudaSuccess)
        return fail_call(ncclUnhandledCudaError, "%s: queuing on stream %p failed: %s", what, (void*)streams[0], cudaGetErrorString(e));
    if (ticket.seq) {  // a captured item (seq 0) runs when its graph does (in the graph's order), maybe never
        *counted = true;
        st.queued++;
        st.last = ticket;
    }
    for (size_t i = 1; i < streams.size(); i++) {
        const cudaError_t e2 = emu::submit(streams[i], what, [] {}, {ticket}, nullptr);
        if (e2 != cudaSuccess)
            return fail_call(ncclUnhandledCudaError, "%s: queuing on stream %p failed: %s", what, (void*)streams[i], cudaGetErrorString(e2));
    }
    return ncclSuccess;
}

bool readable(const void* p, size_t bytes) { return emu::is_device_range(p, bytes) || emu::is_pinned_range(p, bytes); }

// Checks a call's arguments as NCCL does (and its buffers, which NCCL leaves to the device to fault
// on), then queues it, or adds it to the open group.
ncclResult_t issue(ncclComm_t comm, Op op) {
    const char* name = op_name(op.kind);
    if (!comm) return fail_call(ncclInvalidArgument, "%s: comm is null", name);
    State& st = *comm->state;
    const int async = st.async_error.load();
    if (async != ncclSuccess)
        return fail_call((ncclResult_t)async, "%s: the communicator has an asynchronous error from an earlier call: %s", name,
                         st.error_message.c_str());
    if (st.aborted.load()) return fail_call(ncclInvalidUsage, "%s: the communicator was aborted", name);
    const size_t es = type_size(op.type);
    if (op.type < 0 || op.type >= ncclNumTypes || es == 0) return fail_call(ncclInvalidArgument, "%s: invalid datatype %d", name, (int)op.type);
    const bool reduces = op.kind == kAllReduce || op.kind == kReduceScatter || op.kind == kReduce;
    if (reduces) {
        if (op.redop < 0 || op.redop >= ncclAvg)
            return fail_call(ncclInvalidArgument, "%s: reduction operation %d (%s) is not emulated (ncclSum, ncclProd, ncclMax, ncclMin are)",
                             name, (int)op.redop, redop_name(op.redop));
        if (op.type == ncclFloat8e4m3 || op.type == ncclFloat8e5m2)
            return fail_call(ncclInvalidArgument, "%s: reductions of %s are not emulated", name, type_name(op.type));
    }
    if (op.kind == kBroadcast || op.kind == kReduce || op.kind == kSend || op.kind == kRecv) {
        if (op.peer < 0 || op.peer >= st.nranks)
            return fail_call(ncclInvalidArgument, "%s: %s %d is not a rank of this communicator (0..%d)", name,
                             op.kind == kSend || op.kind == kRecv ? "peer" : "root", op.peer, st.nranks - 1);
    }
    // The buffers: device (or pinned host) memory of the whole size.
    const size_t W = (size_t)st.nranks, n = op.count;
    size_t send_elems = n, recv_elems = n;
    bool has_send = true, has_recv = true;
    switch (op.kind) {
        case kReduceScatter: send_elems = n * W; break;
        case kAllGather: recv_elems = n * W; break;
        case kBroadcast: has_send = st.rank == op.peer; break;
        case kReduce: has_recv = st.rank == op.peer; break;
        case kSend: has_recv = false; break;
        case kRecv: has_send = false; break;
        default: break;
    }
    if (n > 0) {
        if (has_send && !readable(op.send, send_elems * es))
            return fail_call(ncclInvalidArgument, "%s: sendbuff %p (%zu bytes) is not device memory (real NCCL would fault on the device)",
                             name, op.send, send_elems * es);
        if (has_recv && !readable(op.recv, recv_elems * es))
            return fail_call(ncclInvalidArgument, "%s: recvbuff %p (%zu bytes) is not device memory (real NCCL would fault on the device)",
                             name, (const void*)op.recv, recv_elems * es);
    }
    if (g_group.depth > 0) {
        g_group.ops.emplace_back(comm->state, op);
        return ncclSuccess;
    }
    return enqueue(comm->state, {op}, name);
}

std::string random_hex() {
    unsigned char bytes[12] = {};
    bool ok = false;
    if (FILE* f = fopen("/dev/urandom", "rb")) {
        ok = fread(bytes, 1, sizeof(bytes), f) == sizeof(bytes);
        fclose(f);
    }
    if (!ok) {
        static std::atomic<uint64_t> counter{0};
        uint64_t x = (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count() ^ ((uint64_t)getpid() << 32) ^ (counter++ * 0x9e3779b97f4a7c15ull);
        for (unsigned char& b : bytes) {
            x ^= x >> 29; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 32;
            b = (unsigned char)x;
        }
    }
    std::string s;
    char hex[3];
    for (unsigned char b : bytes) {
        snprintf(hex, sizeof(hex), "%02x", b);
        s += hex;
    }
    return s;
}

// Joins (creating it if first) the segment named in id, as rank of nranks.
ncclResult_t init_rank(ncclComm_t* out, int nranks, const ncclUniqueId& id, int rank) {
    if (!out) return fail_call(ncclInvalidArgument, "ncclCommInitRank: comm is null");
    *out = nullptr;
    if (nranks < 1) return fail_call(ncclInvalidArgument, "ncclCommInitRank: nranks %d is below 1", nranks);
    if (rank < 0 || rank >= nranks) return fail_call(ncclInvalidArgument, "ncclCommInitRank: rank %d is not in 0..%d", rank, nranks - 1);
    IdContents contents;
    memcpy(&contents, id.internal, sizeof(contents));
    if (memcmp(contents.magic, kIdMagic, sizeof(kIdMagic)) != 0 || !memchr(contents.shm_name, 0, sizeof(contents.shm_name)) ||
        contents.shm_name[0] != '/')
        return fail_call(ncclInvalidArgument, "ncclCommInitRank: the id was not made by the emulation's ncclGetUniqueId");
    const std::string name = contents.shm_name;
    const Layout layout(nranks);
    const double timeout = timeout_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    auto st = std::make_shared<State>();
    st->rank = rank;
    st->nranks = nranks;
    st->shm_name = name;
    // Create the segment, or map the one another rank created.
    for (;;) {
        int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) {
            if (ftruncate(fd, (off_t)layout.total) != 0) {
                const int err = errno;
                close(fd);
                shm_unlink(name.c_str());
                return fail_call(ncclSystemError, "ncclCommInitRank: cannot size shared memory %s to %zu bytes: %s", name.c_str(), layout.total, strerror(err));
            }
            void* p = mmap(nullptr, layout.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (p == MAP_FAILED) {
                shm_unlink(name.c_str());
                return fail_call(ncclSystemError, "ncclCommInitRank: cannot map shared memory %s: %s", name.c_str(), strerror(errno));
            }
            SegmentHeader* h = (SegmentHeader*)p;  // zero-filled by ftruncate
            h->nranks = nranks;
            h->chunk_bytes = kChunkBytes;
            h->total_bytes = layout.total;
            h->ready.store(kSegmentReady, std::memory_order_release);
            st->base = (char*)p;
            st->bytes = layout.total;
            break;
        }
        if (errno != EEXIST)
            return fail_call(ncclSystemError, "ncclCommInitRank: cannot create shared memory %s: %s", name.c_str(), strerror(errno));
        fd = shm_open(name.c_str(), O_RDWR, 0600);
        if (fd < 0) {
            if (errno == ENOENT) continue;  // unlinked meanwhile: try again (and wait alone, then time out)
            return fail_call(ncclSystemError, "ncclCommInitRank: cannot open shared memory %s: %s", name.c_str(), strerror(errno));
        }
        struct stat sb;
        while (fstat(fd, &sb) == 0 && sb.st_size == 0 && elapsed() < timeout) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (sb.st_size == 0) {
            close(fd);
            return fail_call(ncclSystemError, "ncclCommInitRank: shared memory %s stayed empty for %d s", name.c_str(), (int)timeout);
        }
        void* p = mmap(nullptr, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) return fail_call(ncclSystemError, "ncclCommInitRank: cannot map shared memory %s: %s", name.c_str(), strerror(errno));
        st->base = (char*)p;
        st->bytes = (size_t)sb.st_size;
        SegmentHeader* h = (SegmentHeader*)p;
        while (h->ready.load(std::memory_order_acquire) != kSegmentReady && elapsed() < timeout)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (h->ready.load(std::memory_order_acquire) != kSegmentReady)
            return fail_call(ncclSystemError, "ncclCommInitRank: shared memory %s was never initialized", name.c_str());
        if (h->nranks != nranks || h->total_bytes != layout.total || (size_t)sb.st_size != layout.total)
            return fail_call(ncclInvalidUsage, "ncclCommInitRank: rank %d was called with nranks %d, but another rank created the communicator with nranks %d",
                             rank, nranks, h->nranks);
        break;
    }
    st->header = (SegmentHeader*)st->base;
    st->records = (RankRecord*)(st->base + layout.records);
    RankRecord& me = st->record(rank);
    int32_t expected = 0;
    if (!me.pid.compare_exchange_strong(expected, (int32_t)getpid()))
        return fail_call(ncclInvalidUsage, "ncclCommInitRank: rank %d of this id was already taken by pid %d", rank, (int)expected);
    me.state.store(kJoined, std::memory_order_release);
    if (st->header->attached.fetch_add(1) + 1 == nranks) shm_unlink(name.c_str());  // every rank has it mapped
    // Wait for every rank.
    const bool all = wait_for(*st, [&](std::vector<int>* missing) {
        for (int r = 0; r < nranks; r++)
            if (st->record(r).state.load(std::memory_order_acquire) == kAbsent) missing->push_back(r);
        return missing->empty();
    }, "ncclCommInitRank");
    if (!all) {  // give_up has set the message
        shm_unlink(name.c_str());  // no leak: a late rank creates a segment of its own and times out
        me.state.store(kAborted, std::memory_order_release);
        return (ncclResult_t)st->async_error.load();
    }
    *out = new ncclComm{st};
    return ncclSuccess;
}

}  // namespace

// ----------------------------------------------------------------------------
// The C API

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
    if (!version) return ncclInvalidArgument;
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
    if (!uniqueId) return fail_call(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is null");
    memset(uniqueId, 0, sizeof(*uniqueId));
    IdContents contents{};
    memcpy(contents.magic, kIdMagic, sizeof(kIdMagic));
    snprintf(contents.shm_name, sizeof(contents.shm_name), "/mixln-emu-nccl-%d-%s", (int)getpid(), random_hex().c_str());
    memcpy(uniqueId->internal, &contents, sizeof(contents));
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
    return init_rank(comm, nranks, commId, rank);
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t* config) {
    return init_rank(comm, nranks, commId, rank);  // always blocking
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
    if (!comm || !count) return fail_call(ncclInvalidArgument, "ncclCommCount: null argument");
    *count = comm->state->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
    if (!comm || !rank) return fail_call(ncclInvalidArgument, "ncclCommUserRank: null argument");
    *rank = comm->state->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
    if (!comm || !device) return fail_call(ncclInvalidArgument, "ncclCommCuDevice: null argument");
    *device = 0;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
    if (!comm || !asyncError) return fail_call(ncclInvalidArgument, "ncclCommGetAsyncError: null argument");
    *asyncError = (ncclResult_t)comm->state->async_error.load();
    return ncclSuccess;
}

// Runs the communicator's queued calls (NCCL's finalize flushes them; the emulation runs every
// stream's queued work, which a GPU would run anyway).
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    if (!comm) return fail_call(ncclInvalidArgument, "ncclCommFinalize: comm is null");
    if (comm->state->queued > 0) emu::wait_all();
    return (ncclResult_t)comm->state->async_error.load();
}

// Runs the communicator's queued calls, then leaves: the segment is unmapped once no queued item
// (e.g. one captured in a graph) refers to it.
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;  // as NCCL
    State& st = *comm->state;
    if (st.queued > 0 && !st.aborted.load()) emu::wait_all();
    if (!st.aborted.load()) st.record(st.rank).state.store(kDestroyed, std::memory_order_release);
    delete comm;
    return ncclSuccess;
}

// Ends the communicator at once: its queued calls do nothing, and the other ranks waiting for this one
// give up with ncclRemoteError.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    State& st = *comm->state;
    st.aborted.store(true);
    st.record(st.rank).state.store(kAborted, std::memory_order_release);
    delete comm;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
    switch (result) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
        case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
        case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
        case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
        case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
        case ncclRemoteError: return "remote process exited or there was a network error";
        case ncclInProgress: return "NCCL operation in progress";
        default: return "unknown result code";
    }
}

// The last error's message, of any communicator (as NCCL's: comm is not used).
const char* ncclGetLastError(ncclComm_t comm) {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> lock(g_error_mutex);
    copy = g_last_error;
    return copy.c_str();
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kAllReduce, sendbuff, recvbuff, count, datatype, op, 0, stream});
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0, stream});
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm,
                           cudaStream_t stream) {
    return issue(comm, Op{kAllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0, stream});
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
    return issue(comm, Op{kBroadcast, sendbuff, recvbuff, count, datatype, ncclSum, root, stream});
}

ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kBroadcast, buff, buff, count, datatype, ncclSum, root, stream});
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kReduce, sendbuff, recvbuff, count, datatype, op, root, stream});
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kSend, sendbuff, nullptr, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream) {
    return issue(comm, Op{kRecv, nullptr, recvbuff, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclGroupStart() {
    g_group.depth++;
    return ncclSuccess;
}

// Queues the group: per communicator (in the order of their first call), one item with its calls.
ncclResult_t ncclGroupEnd() {
    if (g_group.depth == 0) return fail_call(ncclInvalidUsage, "ncclGroupEnd: no ncclGroupStart to end");
    if (--g_group.depth > 0) return ncclSuccess;
    std::vector<std::pair<std::shared_ptr<State>, Op>> ops;
    ops.swap(g_group.ops);
    std::vector<std::shared_ptr<State>> comms;
    for (auto& [state, op] : ops)
        if (std::find(comms.begin(), comms.end(), state) == comms.end()) comms.push_back(state);
    for (const std::shared_ptr<State>& state : comms) {
        std::vector<Op> mine;
        for (auto& [s, op] : ops)
            if (s == state) mine.push_back(op);
        const ncclResult_t result = enqueue(state, mine, "ncclGroupEnd");
        if (result != ncclSuccess) return result;
    }
    return ncclSuccess;
}

}  // extern "C"
