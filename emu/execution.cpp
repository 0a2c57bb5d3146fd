// The block scheduler, barriers, warp collectives and shared memory: see execution.h.
#include "execution.h"
#include "launch.h"
#include "fiber.h"
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "race_annotations.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace emu {

namespace {

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t SHARED_WINDOW = 512 * 1024;  // the emulated shared window of one block
constexpr size_t GUARD = 64;                  // poisoned bytes after every shared array
constexpr unsigned char POISON = 0xFF;        // NaN in bf16, fp16 and fp32; -1 in integers

enum class State { Runnable, Waiting, Done };

struct Rendezvous;

struct Thread {
    ThreadInfo info;
    Fiber fiber;
    State state = State::Done;
    const char* wait_what = nullptr;
    const char* wait_file = nullptr;
    int wait_line = 0;
    void* slot = nullptr;
    bool at_barrier = false;
};

struct Rendezvous {
    const char* what;
    unsigned mask, arrived = 0;
    const char* file;
    int line;
    void* lane_data[32] = {};
    CollectiveFn complete;
    const void* context;
    bool memory_order;
    char* sync;  // the race checker's synchronization object, fresh per rendezvous
};

struct SharedArray {
    const void* key;
    size_t offset, bytes;
    const char* name;
    const char* file;
    int line;
};

struct Executor {
    const LaunchSpec* launch = nullptr;
    bool probing = false;
    int probe_max_threads = 0;
    Fiber scheduler;
    std::vector<Thread> threads;  // grown on demand, fibers and stacks reused
    int num_threads = 0;
    Thread* current = nullptr;
    std::vector<int> lane_order;
    // __syncthreads
    int barrier_arrived = 0;
    const char* barrier_what = nullptr;
    const char* barrier_file = nullptr;
    int barrier_line = 0;
    char* barrier_sync[2] = {};
    int barrier_generation = 0;
    // warp collectives in progress, per warp, and the lanes of each warp that have exited
    std::vector<std::vector<Rendezvous*>> pending;
    std::vector<unsigned> exited;
    int num_exited = 0;
    std::vector<Rendezvous*> free_rendezvous;  // reused, never freed
    // shared memory
    char* window = nullptr;
    size_t window_used = 0, static_bytes = 0, dynamic_bytes = 0;
    std::vector<SharedArray> arrays;
    std::vector<void (*)()> block_end_cleanups;
};

Executor& ex() {
    static Executor e;
    return e;
}

std::string describe_site() {
    Executor& e = ex();
    if (!e.launch) return "emu: ";
    char buf[512];
    std::snprintf(buf, sizeof buf, "emu: kernel %s (launched at %s:%d with grid (%u,%u,%u), block (%u,%u,%u)), block (%u,%u,%u)",
                  e.launch->kernel, e.launch->file, e.launch->line, e.launch->grid.x, e.launch->grid.y,
                  e.launch->grid.z, e.launch->block.x, e.launch->block.y, e.launch->block.z, blockIdx.x, blockIdx.y,
                  blockIdx.z);
    std::string s = buf;
    if (e.current) {
        const ThreadInfo& t = e.current->info;
        std::snprintf(buf, sizeof buf, ", thread (%u,%u,%u) (warp %d, lane %d)", t.idx.x, t.idx.y, t.idx.z, t.warp,
                      t.lane);
        s += buf;
    }
    return s + ": ";
}

std::vector<int> make_order(int n, const char* env, unsigned salt) {
    std::vector<int> order(n);
    for (int i = 0; i < n; i++) order[i] = i;
    const char* mode = getenv(env);
    if (!mode || !*mode || !strcmp(mode, "forward")) return order;
    if (!strcmp(mode, "reverse")) {
        std::reverse(order.begin(), order.end());
        return order;
    }
    if (!strcmp(mode, "shuffle")) {
        const char* seed = getenv("EMU_SEED");
        std::mt19937 rng((seed ? (unsigned)atoi(seed) : 1u) * 2654435761u + salt);
        std::shuffle(order.begin(), order.end(), rng);
        return order;
    }
    std::fprintf(stderr, "emu: %s=%s: expected forward, reverse or shuffle\n", env, mode);
    exit(2);
}

void thread_main(void* arg) {
    Thread* t = (Thread*)arg;
    Executor& e = ex();
    EMU_TSAN_ACQUIRE(&e);  // the launch happens before the kernel's threads
    e.launch->body();
    // The thread returned from the kernel: it may not leave lanes of its warp waiting for it.
    t->state = State::Done;
    e.exited[t->info.warp] |= 1u << t->info.lane;
    e.num_exited++;
    for (Rendezvous* rv : e.pending[t->info.warp])
        if (rv->mask & (1u << t->info.lane))
            fail("exited while lanes 0x%08x of its warp wait for it in %s (%s:%d, mask 0x%08x)", rv->arrived, rv->what,
                 rv->file, rv->line, rv->mask);
    EMU_TSAN_RELEASE(&e);  // ... and the threads before whatever the host does after the launch
    Fiber::switch_to(t->fiber, e.scheduler);
    std::abort();  // never resumed
}

void yield_to_scheduler(Thread* t) {
    Fiber::switch_to(t->fiber, ex().scheduler);
}

// Parks t at a barrier or collective (`what` at file:line, for a deadlock's report) until the last
// thread to arrive makes it runnable. The race checker's ignore state is per fiber: paused meanwhile.
void wait_until_released(Thread* t, const char* what, const char* file, int line, IgnoreEmulatorAccesses& ignore) {
    t->state = State::Waiting;
    t->wait_what = what;
    t->wait_file = file;
    t->wait_line = line;
    ignore.pause();
    yield_to_scheduler(t);
    ignore.resume();
}

std::string thread_range(const std::vector<int>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
        if (!s.empty()) s += ",";
        s += std::to_string(ids[i]);
        if (j > i) s += "-" + std::to_string(ids[j]);
        i = j + 1;
    }
    return s;
}

[[noreturn]] void deadlock() {
    Executor& e = ex();
    std::string report;
    // group the threads by where they wait
    std::vector<bool> seen(e.num_threads, false);
    for (int i = 0; i < e.num_threads; i++) {
        if (seen[i]) continue;
        const Thread& t = e.threads[i];
        std::vector<int> same;
        for (int j = i; j < e.num_threads; j++) {
            const Thread& u = e.threads[j];
            if (u.state == t.state && u.wait_what == t.wait_what && u.wait_line == t.wait_line) {
                same.push_back(j);
                seen[j] = true;
            }
        }
        char buf[256];
        if (t.state == State::Done) std::snprintf(buf, sizeof buf, "\n  threads %s have exited", thread_range(same).c_str());
        else std::snprintf(buf, sizeof buf, "\n  threads %s wait in %s (%s:%d)", thread_range(same).c_str(), t.wait_what,
                           t.wait_file, t.wait_line);
        report += buf;
    }
    e.current = nullptr;
    fail("deadlock: no thread of the block can go on (a barrier or collective that not every thread reaches)%s",
         report.c_str());
}

void check_shared_guards() {
    Executor& e = ex();
    for (const SharedArray& a : e.arrays) {
        const unsigned char* guard = (const unsigned char*)e.window + a.offset + a.bytes;
#if defined(__SANITIZE_ADDRESS__)
        ASAN_UNPOISON_MEMORY_REGION(guard, GUARD);
#endif
        for (size_t i = 0; i < GUARD; i++)
            if (guard[i] != POISON) {
                e.current = nullptr;
                fail("a thread wrote past the end of __shared__ %s (%zu bytes, %s:%d): byte %zu after its end changed",
                     a.name, a.bytes, a.file, a.line, i);
            }
    }
}

size_t add_array(const void* key, size_t bytes, size_t align, const char* name, const char* file, int line) {
    Executor& e = ex();
    if (align < 16) align = 16;
    const size_t offset = (e.window_used + align - 1) / align * align;
    if (offset + bytes + GUARD > SHARED_WINDOW) fail("__shared__ %s: the block's shared memory exceeds the window", name);
    std::memset(e.window + offset, POISON, bytes + GUARD);
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(e.window + offset + bytes, GUARD);
#endif
    e.arrays.push_back({key, offset, bytes, name, file, line});
    e.window_used = offset + bytes + GUARD;
    return offset;
}

void start_block(int n) {
    IgnoreEmulatorAccesses ignore;
    Executor& e = ex();
    if (!e.window) e.window = (char*)aligned_alloc(1024, SHARED_WINDOW);
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(e.window, SHARED_WINDOW);
#endif
    e.arrays.clear();
    e.window_used = 0;
    e.static_bytes = 0;
    e.dynamic_bytes = e.launch->shared_bytes;
    add_array(nullptr, e.dynamic_bytes, 1024, "(extern, dynamic)", e.launch->file, e.launch->line);
    e.barrier_arrived = 0;
    if ((int)e.threads.size() < n) e.threads = std::vector<Thread>(n);
    e.num_threads = n;
    e.pending.assign((n + 31) / 32, {});
    e.exited.assign((n + 31) / 32, 0u);
    e.num_exited = 0;
    const dim3 b = e.launch->block;
    for (int i = 0; i < n; i++) {
        Thread& t = e.threads[i];
        t.info.idx = make_uint3(i % b.x, (i / b.x) % b.y, i / (b.x * b.y));
        t.info.linear = i;
        t.info.warp = i / 32;
        t.info.lane = i % 32;
        t.state = State::Runnable;
        t.wait_what = nullptr;
        t.wait_line = 0;
        t.slot = nullptr;
        t.at_barrier = false;
        t.fiber.start(thread_main, &t, STACK_BYTES);
    }
}

void end_block() {
    IgnoreEmulatorAccesses ignore;
    Executor& e = ex();
    for (auto cleanup : e.block_end_cleanups) cleanup();
    check_shared_guards();
}

}  // namespace

// ----------------------------------------------------------------------------

const ThreadInfo& this_thread() {
    if (!ex().current) fail("a device function called outside a kernel");
    return ex().current->info;
}
bool in_kernel() { return ex().current != nullptr; }

void fail(const char* format, ...) {
    std::fflush(stdout);
    std::string prefix = describe_site();
    va_list args;
    va_start(args, format);
    char msg[4096];
    std::vsnprintf(msg, sizeof msg, format, args);
    va_end(args);
    std::fprintf(stderr, "%s%s\n", prefix.c_str(), msg);
    std::fflush(stderr);
    std::abort();
}

void block_barrier(const char* what, const char* file, int line) {
    IgnoreEmulatorAccesses ignore;
    Executor& e = ex();
    Thread* t = e.current;
    if (!t) fail("%s called outside a kernel (%s:%d)", what, file, line);
    if (e.num_exited > 0)
        for (int i = 0; i < e.num_threads; i++)
            if (e.threads[i].state == State::Done)
                fail("%s (%s:%d): thread %d of the block has already exited and can never arrive (a barrier in "
                     "divergent code)", what, file, line, i);
    if (e.barrier_arrived == 0) {
        e.barrier_what = what;
        e.barrier_file = file;
        e.barrier_line = line;
        if (!e.barrier_sync[e.barrier_generation % 2]) e.barrier_sync[e.barrier_generation % 2] = new_sync();
    } else if (e.barrier_line != line || strcmp(e.barrier_file, file) != 0) {
        fail("%s (%s:%d) while other threads of the block wait at %s (%s:%d): threads meet at different barriers",
             what, file, line, e.barrier_what, e.barrier_file, e.barrier_line);
    }
    [[maybe_unused]] char* sync = e.barrier_sync[e.barrier_generation % 2];
    EMU_TSAN_RELEASE(sync);
    if (++e.barrier_arrived == e.num_threads) {
        e.barrier_arrived = 0;
        e.barrier_generation++;
        // The object two generations back is no longer used by anyone: free it, so that the race
        // checker starts the next one without its history.
        delete e.barrier_sync[e.barrier_generation % 2];
        e.barrier_sync[e.barrier_generation % 2] = nullptr;
        for (int i = 0; i < e.num_threads; i++)
            if (e.threads[i].at_barrier) {
                e.threads[i].at_barrier = false;
                e.threads[i].state = State::Runnable;
            }
    } else {
        t->at_barrier = true;
        wait_until_released(t, what, file, line, ignore);
    }
    EMU_TSAN_ACQUIRE(sync);
}

void warp_collective(const char* what, unsigned mask, const char* file, int line, void* lane_data,
                     CollectiveFn complete, const void* context, bool memory_order) {
    IgnoreEmulatorAccesses ignore;
    Executor& e = ex();
    Thread* t = e.current;
    if (!t) fail("%s called outside a kernel (%s:%d)", what, file, line);
    const int lane = t->info.lane, warp = t->info.warp;
    const unsigned bit = 1u << lane;
    if (!(mask & bit)) fail("%s (%s:%d) with mask 0x%08x, which leaves out the calling lane %d", what, file, line, mask, lane);
    const int lanes_here = e.num_threads - warp * 32;
    const unsigned existing = lanes_here >= 32 ? 0xffffffffu : (1u << lanes_here) - 1;
    if (mask & ~existing)
        fail("%s (%s:%d) with mask 0x%08x names lane %d, which is not in the block (%d threads)", what, file, line,
             mask, __builtin_ctz(mask & ~existing), e.num_threads);
    if (mask & e.exited[warp])
        fail("%s (%s:%d) with mask 0x%08x names lane %d, which has exited", what, file, line, mask,
             __builtin_ctz(mask & e.exited[warp]));
    std::vector<Rendezvous*>& pending = e.pending[warp];
    Rendezvous* rv = nullptr;
    for (Rendezvous* p : pending)
        if (p->mask & bit) rv = p;
    if (rv) {
        if (rv->mask != mask || (rv->what != what && strcmp(rv->what, what) != 0))
            fail("%s (%s:%d, mask 0x%08x) while lanes 0x%08x of its warp wait in %s (%s:%d, mask 0x%08x): lanes meet "
                 "at different collectives", what, file, line, mask, rv->arrived, rv->what, rv->file, rv->line, rv->mask);
    } else {
        if (e.free_rendezvous.empty()) e.free_rendezvous.push_back(new Rendezvous);
        rv = e.free_rendezvous.back();
        e.free_rendezvous.pop_back();
        *rv = Rendezvous{what, mask, 0, file, line, {}, complete, context, memory_order, new_sync()};
        pending.push_back(rv);
    }
    rv->arrived |= bit;
    rv->lane_data[lane] = lane_data;
    [[maybe_unused]] char* sync = rv->sync;
    if (memory_order) EMU_TSAN_RELEASE(sync);
    if (rv->arrived == mask) {
        pending.erase(std::find(pending.begin(), pending.end(), rv));
        rv->complete(rv->lane_data, mask, rv->context);
        for (int l = 0; l < 32; l++) {
            const int id = warp * 32 + l;
            if ((mask & (1u << l)) && id != t->info.linear) e.threads[id].state = State::Runnable;
        }
        // The rendezvous's sync object lives until the last lane has acquired it: the last to leave frees it.
        rv->arrived = __builtin_popcount(mask);
    } else {
        wait_until_released(t, what, file, line, ignore);
    }
    if (memory_order) EMU_TSAN_ACQUIRE(sync);
    if (--rv->arrived == 0) {
        delete rv->sync;
        e.free_rendezvous.push_back(rv);
    }
}

void*& thread_slot() {
    if (!ex().current) fail("a device function called outside a kernel");
    return ex().current->slot;
}

void on_block_end(void (*cleanup)()) {
    auto& v = ex().block_end_cleanups;
    if (std::find(v.begin(), v.end(), cleanup) == v.end()) v.push_back(cleanup);
}

void* block_shared(const void* key, size_t bytes, size_t align, const char* name, const char* file, int line) {
    IgnoreEmulatorAccesses ignore;
    Executor& e = ex();
    if (!e.current) fail("__shared__ %s used outside a kernel (%s:%d)", name, file, line);
    for (const SharedArray& a : e.arrays)
        if (a.key == key) return e.window + a.offset;
    e.static_bytes += bytes;
    if (e.static_bytes > 48 * 1024)
        fail("__shared__ %s (%s:%d): %zu bytes of static shared memory, above the 48 KB a kernel may declare "
             "(nvcc: ptxas error 'too much shared data'; use dynamic shared memory)", name, file, line, e.static_bytes);
    if (e.static_bytes + e.dynamic_bytes > 227 * 1024)
        fail("__shared__ %s (%s:%d): %zu bytes static + %zu dynamic, above the H100's 227 KB per block", name, file,
             line, e.static_bytes, e.dynamic_bytes);
    return e.window + add_array(key, bytes, align, name, file, line);
}

void* dynamic_shared() {
    Executor& e = ex();
    if (!e.current) fail("extern __shared__ used outside a kernel");
    return e.window;
}

uint32_t shared_offset(const void* p) {
    Executor& e = ex();
    const char* c = (const char*)p;
    if (!e.window || c < e.window || c >= e.window + SHARED_WINDOW)
        fail("__cvta_generic_to_shared of %p, which is not in the block's shared memory", p);
    return (uint32_t)(c - e.window);
}

void* shared_pointer(uint32_t offset) {
    Executor& e = ex();
    if (offset >= e.window_used) fail("shared address 0x%x is outside the block's shared memory (%zu bytes)", offset, e.window_used);
    return e.window + offset;
}

void kernel_entry(int max_threads) {
    Executor& e = ex();
    if (e.probing) {
        e.probe_max_threads = max_threads;
        EMU_TSAN_RELEASE(&e);  // what the probe read, before the host reuses it
        Fiber::switch_to(e.current->fiber, e.scheduler);  // abandoned: the probe never resumes it
    }
}

// ----------------------------------------------------------------------------

int probe_launch_bounds(const LaunchSpec& spec) {
    Executor& e = ex();
    e.launch = &spec;
    e.probing = true;
    e.probe_max_threads = -1;
    blockIdx = make_uint3(0, 0, 0);
    blockDim = spec.block;
    gridDim = spec.grid;
    start_block(1);
    e.num_threads = 1;
    e.current = &e.threads[0];
    threadIdx = e.current->info.idx;
    EMU_TSAN_RELEASE(&e);
    Fiber::switch_to(e.scheduler, e.current->fiber);
    EMU_TSAN_ACQUIRE(&e);
    e.current = nullptr;
    e.probing = false;
    e.launch = nullptr;
    if (e.probe_max_threads < 0) fail("kernel %s did not call emu::kernel_entry (not rewritten by cuda_to_cpp.py?)", spec.kernel);
    return e.probe_max_threads;
}

void run_launch(const LaunchSpec& spec) {
    Executor& e = ex();
    e.launch = &spec;
    blockDim = spec.block;
    gridDim = spec.grid;
    const int n = spec.block.x * spec.block.y * spec.block.z;
    const long num_blocks = (long)spec.grid.x * spec.grid.y * spec.grid.z;
    std::vector<int> block_order = make_order((int)num_blocks, "EMU_BLOCK_ORDER", 1);
    for (long bi : block_order) {
        blockIdx = make_uint3(bi % spec.grid.x, (bi / spec.grid.x) % spec.grid.y, bi / ((long)spec.grid.x * spec.grid.y));
        start_block(n);
        EMU_TSAN_RELEASE(&e);  // the host's work before the launch happens before every thread
        const std::vector<int> order = make_order(n, "EMU_LANE_ORDER", (unsigned)bi + 7);
        int done = 0;
        while (done < n) {
            bool progressed = false;
            for (int i : order) {
                Thread& t = e.threads[i];
                if (t.state != State::Runnable) continue;
                e.current = &t;
                threadIdx = t.info.idx;
                Fiber::switch_to(e.scheduler, t.fiber);
                e.current = nullptr;
                progressed = true;
                if (t.state == State::Done) done++;
            }
            if (!progressed && done < n) deadlock();
        }
        end_block();
    }
    EMU_TSAN_ACQUIRE(&e);
    e.launch = nullptr;
}

}  // namespace emu
