// The CUDA runtime API on the CPU: device and pinned memory (poisoned, guarded), copies and memsets,
// streams, events, graphs, launches, device properties (an H100 SXM) and errors. Defines the functions
// NVIDIA's cuda_runtime_api.h declares, with the same signatures, and returns the errors the real
// runtime returns for the same misuse.
#include <cuda_runtime_api.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>
#include "execution.h"
#include "launch.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// An AddressSanitizer build: the guard bytes are poisoned for it too, so an access past an allocation's
// end is reported at the access, with its line, instead of at the next guard check.
#define EMU_GUARDS_ASAN(poison, p, n) ((poison) ? ASAN_POISON_MEMORY_REGION(p, n) : ASAN_UNPOISON_MEMORY_REGION(p, n))
#else
#define EMU_GUARDS_ASAN(poison, p, n) ((void)0)
#endif
#include "runtime_internal.h"

struct CUevent_st {
    emu::Ticket ticket;        // where it was last recorded (seq 0: never, or completed at record)
    bool timing = true;
    bool recorded = false;
    double time_ms = 0;        // host time when its stream reached it
    emu::Graph* capture = nullptr;  // recorded on a capturing stream: that capture
    cudaStream_t captured_on = nullptr;
    std::vector<size_t> capture_deps;  // the nodes of that capture it stands for
    cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
};
struct CUgraphExec_st {
    emu::Graph* graph;
};

namespace emu {
namespace {

constexpr size_t DEVICE_GUARD = 256;  // poisoned bytes before and after every allocation
constexpr unsigned char POISON = 0xFF;
// The device's memory: 80 GiB, or EMU_DEVICE_MEMORY_MB (a smaller device, so that a test can run out
// of memory without the host allocating 80 GiB). EMU_REPORT_MEMORY=1: the peak of the device memory
// allocated (cudaMalloc, not pinned) is printed to stderr at exit, "emu: peak device memory N bytes".
size_t total_memory() {
    static const size_t total = [] {
        const char* s = getenv("EMU_DEVICE_MEMORY_MB");
        return s && *s ? (size_t)atoll(s) << 20 : 80ull << 30;
    }();
    return total;
}
#define TOTAL_MEMORY total_memory()
size_t g_peak_device_bytes = 0;
void report_peak_memory() { fprintf(stderr, "emu: peak device memory %zu bytes\n", g_peak_device_bytes); }

struct Allocation {
    size_t bytes;
    bool pinned;
    uint64_t id;  // this allocation's number: none before or after it has the same
};
uint64_t g_allocations_made = 0;
std::map<const char*, Allocation>& allocations() {  // by user pointer
    static std::map<const char*, Allocation> m;
    return m;
}
size_t g_device_bytes = 0;
int g_device = 0;
std::map<const void*, int>& max_dynamic_shared() {
    static std::map<const void*, int> m;
    return m;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

int device_count() {
    const char* s = getenv("EMU_DEVICE_COUNT");
    return s && *s ? atoi(s) : 1;
}

cudaError_t allocate(void** p, size_t bytes, bool pinned) {
    if (!p) return cudaErrorInvalidValue;
    *p = nullptr;
    if (!pinned) {
        if (cudaError_t e = check_unsafe_call_during_capture("cudaMalloc")) return e;
        if (g_device_bytes + bytes > TOTAL_MEMORY) return set_last_error(cudaErrorMemoryAllocation);
    }
    const size_t padded = (bytes + 255) / 256 * 256;
    char* base = (char*)aligned_alloc(256, padded + 2 * DEVICE_GUARD);
    if (!base) return set_last_error(cudaErrorMemoryAllocation);
    std::memset(base, POISON, padded + 2 * DEVICE_GUARD);  // fresh memory reads as NaN
    char* user = base + DEVICE_GUARD;
    EMU_GUARDS_ASAN(true, base, DEVICE_GUARD);
    EMU_GUARDS_ASAN(true, user + bytes, padded - bytes + DEVICE_GUARD);
    allocations()[user] = {bytes, pinned, ++g_allocations_made};
    if (!pinned) g_device_bytes += bytes;
    if (g_device_bytes > g_peak_device_bytes) {
        static const bool report = [] {
            const char* s = getenv("EMU_REPORT_MEMORY");
            return s && *s && *s != '0' && atexit(report_peak_memory) == 0;
        }();
        (void)report;
        g_peak_device_bytes = g_device_bytes;
    }
    *p = user;
    return cudaSuccess;
}

cudaError_t release(void* p, bool pinned) {
    if (!p) return cudaSuccess;
    wait_all();
    auto it = allocations().find((const char*)p);
    if (it == allocations().end() || it->second.pinned != pinned) return set_last_error(cudaErrorInvalidValue);
    check_device_guards(pinned ? "cudaFreeHost" : "cudaFree");
    if (!pinned) g_device_bytes -= it->second.bytes;
    EMU_GUARDS_ASAN(false, (char*)p - DEVICE_GUARD, (it->second.bytes + 255) / 256 * 256 + 2 * DEVICE_GUARD);
    allocations().erase(it);
    free((char*)p - DEVICE_GUARD);
    return cudaSuccess;
}

// The allocation holding [p, p + bytes), or null.
const std::pair<const char* const, Allocation>* find_range(const void* p, size_t bytes) {
    auto& m = allocations();
    auto it = m.upper_bound((const char*)p);
    if (it == m.begin()) return nullptr;
    --it;
    const char* c = (const char*)p;
    if (c >= it->first && c + bytes <= it->first + it->second.bytes) return &*it;
    return nullptr;
}

// A copy's direction as the pointers say (device or host), checked against the kind given.
cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    const bool dst_dev = is_device_range(dst, bytes), src_dev = is_device_range(src, bytes);
    switch (kind) {
        case cudaMemcpyHostToDevice: return dst_dev && !src_dev ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyDeviceToHost: return src_dev && !dst_dev ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyDeviceToDevice: return dst_dev && src_dev ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyHostToHost: return cudaSuccess;
        case cudaMemcpyDefault: return cudaSuccess;
    }
    return cudaErrorInvalidMemcpyDirection;
}

// cudaMemcpyAsync: from pageable host memory the source is read at the call (the runtime stages it);
// to pageable host memory the call returns when the copy is done; pinned memory and device memory are
// read and written when the stream gets there.
cudaError_t copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    if (cudaError_t e = check_copy(dst, src, bytes, kind)) return set_last_error(e);
    if (bytes == 0) return cudaSuccess;
    const bool src_staged = !is_device_range(src, bytes) && !is_pinned_range(src, bytes);
    const bool dst_pageable = !is_device_range(dst, bytes) && !is_pinned_range(dst, bytes);
    cudaError_t e;
    if (src_staged) {
        std::shared_ptr<std::vector<char>> staged(new std::vector<char>((const char*)src, (const char*)src + bytes));
        e = submit(stream, "cudaMemcpyAsync", [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    } else {
        e = submit(stream, "cudaMemcpyAsync", [dst, src, bytes] { std::memmove(dst, src, bytes); });
    }
    if (e) return set_last_error(e);
    if (dst_pageable && !is_capturing(stream)) wait_stream(stream);
    return cudaSuccess;
}

}  // namespace

bool is_device_range(const void* p, size_t bytes) {
    auto* a = find_range(p, bytes);
    return a && !a->second.pinned;
}
bool is_pinned_range(const void* p, size_t bytes) {
    auto* a = find_range(p, bytes);
    return a && a->second.pinned;
}
uint64_t allocation_id(const void* p, size_t bytes) {
    auto* a = find_range(p, bytes);
    return a && !a->second.pinned ? a->second.id : 0;
}

void check_device_guards(const char* after_what) {
    for (auto& [user, a] : allocations()) {
        const size_t padded = (a.bytes + 255) / 256 * 256;
        const unsigned char* before = (const unsigned char*)user - DEVICE_GUARD;
        const unsigned char* after = (const unsigned char*)user + a.bytes;
        EMU_GUARDS_ASAN(false, before, DEVICE_GUARD);
        EMU_GUARDS_ASAN(false, after, padded - a.bytes + DEVICE_GUARD);
        for (size_t i = 0; i < DEVICE_GUARD; i++)
            if (before[i] != POISON)
                fail("%s: bytes before the start of a %s allocation of %zu bytes at %p were written (%zu bytes before it)",
                     after_what, a.pinned ? "pinned" : "device", a.bytes, (const void*)user, DEVICE_GUARD - i);
        for (size_t i = 0; i < padded - a.bytes + DEVICE_GUARD; i++)
            if (after[i] != POISON)
                fail("%s: a write past the end of a %s allocation of %zu bytes at %p (byte %zu after its end changed)",
                     after_what, a.pinned ? "pinned" : "device", a.bytes, (const void*)user, i);
        EMU_GUARDS_ASAN(true, before, DEVICE_GUARD);
        EMU_GUARDS_ASAN(true, after, padded - a.bytes + DEVICE_GUARD);
    }
}

cudaError_t launch(LaunchSpec spec, const void* kernel_address, cudaStream_t stream) {
    const dim3 b = spec.block, g = spec.grid;
    const long threads = (long)b.x * b.y * b.z;
    // The driver's limits (CUDA C Programming Guide, "Compute Capabilities", table of technical specifications).
    if (threads == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024 || g.x == 0 || g.y == 0 || g.z == 0 ||
        g.x > 2147483647u || g.y > 65535 || g.z > 65535)
        return set_last_error(cudaErrorInvalidConfiguration);
    int max_dynamic = 48 * 1024;
    auto it = max_dynamic_shared().find(kernel_address);
    if (it != max_dynamic_shared().end()) max_dynamic = it->second;
    if (spec.shared_bytes > (size_t)max_dynamic) return set_last_error(cudaErrorInvalidValue);
    const int max_threads = probe_launch_bounds(spec);
    if (max_threads > 0 && threads > max_threads) return set_last_error(cudaErrorLaunchOutOfResources);
    std::shared_ptr<LaunchSpec> queued(new LaunchSpec(std::move(spec)));
    cudaError_t e = submit(stream, queued->kernel, [queued] {
        run_launch(*queued);
        check_device_guards(queued->kernel);
    });
    return set_last_error(e);
}

}  // namespace emu

using namespace emu;

extern "C" {

// ---- errors
cudaError_t cudaGetLastError() { return take_last_error(); }
cudaError_t cudaPeekAtLastError() { return peek_last_error(); }
const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define NAME(x) case x: return #x;
        NAME(cudaSuccess) NAME(cudaErrorInvalidValue) NAME(cudaErrorMemoryAllocation) NAME(cudaErrorInvalidConfiguration)
        NAME(cudaErrorLaunchOutOfResources) NAME(cudaErrorInvalidDevice) NAME(cudaErrorNotReady)
        NAME(cudaErrorStreamCaptureUnsupported) NAME(cudaErrorStreamCaptureInvalidated) NAME(cudaErrorStreamCaptureImplicit)
        NAME(cudaErrorStreamCaptureUnjoined) NAME(cudaErrorStreamCaptureUnmatched) NAME(cudaErrorIllegalState)
        NAME(cudaErrorInvalidResourceHandle) NAME(cudaErrorInvalidMemcpyDirection) NAME(cudaErrorNoDevice)
#undef NAME
        default: return "cudaErrorUnknown";
    }
}
const char* cudaGetErrorString(cudaError_t e) {
    // The real runtime's strings for the errors the emulation returns.
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
        case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
        case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
        case cudaErrorStreamCaptureUnjoined: return "capture operation was not joined";
        case cudaErrorStreamCaptureUnmatched: return "operation is not permitted on a stream that is not the origin of the capture";
        case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        default: return "unknown error";
    }
}

// ---- device
cudaError_t cudaGetDeviceCount(int* count) {
    *count = device_count();
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= device_count()) return set_last_error(cudaErrorInvalidDevice);
    g_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    *device = g_device;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
    if (device < 0 || device >= device_count()) return set_last_error(cudaErrorInvalidDevice);
    std::memset(p, 0, sizeof *p);
    // An H100 SXM5 80 GB, as the real runtime describes it (compute capability 9.0).
    std::snprintf(p->name, sizeof p->name, "NVIDIA H100 80GB HBM3 (emulated on the CPU)");
    p->totalGlobalMem = TOTAL_MEMORY;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->reservedSharedMemPerBlock = 1024;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxBlocksPerMultiProcessor = 32;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->memoryBusWidth = 5120;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 3;
    p->unifiedAddressing = 1;
    p->streamPrioritiesSupported = 1;
    p->managedMemory = 1;
    p->cooperativeLaunch = 1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    cudaDeviceProp p;
    if (cudaError_t e = cudaGetDeviceProperties(&p, device)) return e;
    switch (attr) {
        case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; return cudaSuccess;
        case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMajor: *value = p.major; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor: *value = p.minor; return cudaSuccess;
        default: return set_last_error(cudaErrorInvalidValue);
    }
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    *free_bytes = TOTAL_MEMORY - g_device_bytes;
    *total = TOTAL_MEMORY;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
    if (cudaError_t e = check_unsafe_call_during_capture("cudaDeviceSynchronize")) return set_last_error(e);
    wait_all();
    return cudaSuccess;
}
cudaError_t cudaDeviceReset() {
    wait_all();
    return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return cudaSuccess;
}

// ---- memory
cudaError_t cudaMalloc(void** p, size_t bytes) { return allocate(p, bytes, false); }
cudaError_t cudaFree(void* p) { return release(p, false); }
cudaError_t cudaMallocHost(void** p, size_t bytes) { return allocate(p, bytes, true); }
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return allocate(p, bytes, true); }
cudaError_t cudaFreeHost(void* p) { return release(p, true); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    // A synchronous copy runs on the legacy default stream and waits for it: after that stream's work
    // and the blocking streams' (their implicit order with it), not a non-blocking stream's.
    if (cudaError_t e = check_copy(dst, src, bytes, kind)) return set_last_error(e);
    if (cudaError_t e = check_unsafe_call_during_capture("cudaMemcpy")) return set_last_error(e);
    if (cudaError_t e = submit(0, "cudaMemcpy", [=] { if (bytes) std::memmove(dst, src, bytes); })) return set_last_error(e);
    wait_stream(0);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    return copy_async(dst, src, bytes, kind, stream);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (bytes && !is_device_range(p, bytes)) return set_last_error(cudaErrorInvalidValue);
    if (cudaError_t e = check_unsafe_call_during_capture("cudaMemset")) return set_last_error(e);
    if (cudaError_t e = submit(0, "cudaMemset", [=] { std::memset(p, value, bytes); })) return set_last_error(e);
    wait_stream(0);  // as cudaMemcpy
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
    if (bytes && !is_device_range(p, bytes)) return set_last_error(cudaErrorInvalidValue);
    return set_last_error(submit(stream, "cudaMemsetAsync", [p, value, bytes] { std::memset(p, value, bytes); }));
}

// ---- streams
cudaError_t cudaStreamCreate(cudaStream_t* s) {
    *s = (cudaStream_t)new_stream(true);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
    *s = (cudaStream_t)new_stream(!(flags & cudaStreamNonBlocking));
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int flags, int) {
    return cudaStreamCreateWithFlags(s, flags);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return set_last_error(cudaErrorInvalidResourceHandle);
    delete_stream((StreamImpl*)s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (is_capturing(s)) {
        cudaStreamEndCapture(s, nullptr);
        return set_last_error(cudaErrorStreamCaptureUnsupported);
    }
    if (!s) {
        if (cudaError_t e = check_unsafe_call_during_capture("cudaStreamSynchronize")) return set_last_error(e);
    }
    wait_stream(s);
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    // Not ready the first time it is asked about unfinished work (which then runs), ready after: both
    // answers of a polling loop are exercised.
    if (is_capturing(s)) return set_last_error(cudaErrorStreamCaptureUnsupported);
    const Ticket t = current_ticket(s);
    if (ticket_done(t)) return cudaSuccess;
    wait_ticket(t);
    return cudaErrorNotReady;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t ev, unsigned int) {
    if (!ev) return set_last_error(cudaErrorInvalidResourceHandle);
    if (ev->capture) {
        // Waiting for an event of a capture: s joins that capture; the origin waiting for a joined
        // stream's event takes it back out (the join that cudaStreamEndCapture requires).
        if (capture_graph(s) && capture_graph(s) != ev->capture) return set_last_error(cudaErrorStreamCaptureIsolation);
        join_capture(s, ev->capture, ev->capture_mode, ev->capture_deps);
        if (is_capture_origin(s) && ev->captured_on != s) leave_capture(ev->captured_on);
        return cudaSuccess;
    }
    if (is_capturing(s)) {
        // An event recorded outside the capture: the graph cannot depend on it.
        return set_last_error(cudaErrorStreamCaptureIsolation);
    }
    const Ticket t = ev->ticket;
    return set_last_error(submit(s, "cudaStreamWaitEvent", [] {}, {t}));
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    return set_last_error(begin_capture(s, mode));
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
    Graph* g = nullptr;
    cudaError_t e = end_capture(s, &g);
    if (graph) *graph = (cudaGraph_t)g;
    else if (g) delete_graph(g);
    return set_last_error(e);
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
    *status = is_capturing(s) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

// ---- events
cudaError_t cudaEventCreate(cudaEvent_t* ev) {
    *ev = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* ev, unsigned int flags) {
    *ev = new CUevent_st;
    (*ev)->timing = !(flags & cudaEventDisableTiming);
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    delete ev;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t s) {
    if (!ev) return set_last_error(cudaErrorInvalidResourceHandle);
    if (Graph* g = capture_graph(s)) {
        ev->capture = g;
        ev->captured_on = s;
        ev->capture_mode = capture_mode(s);
        ev->capture_deps = capture_frontier(s);
        return cudaSuccess;
    }
    ev->capture = nullptr;
    ev->recorded = true;
    CUevent_st* e = ev;
    Ticket t;
    if (cudaError_t err = submit(s, "cudaEventRecord", [e] { e->time_ms = now_ms(); }, {}, &t)) return set_last_error(err);
    ev->ticket = t;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    if (!ev) return set_last_error(cudaErrorInvalidResourceHandle);
    wait_ticket(ev->ticket);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t ev) {
    if (ticket_done(ev->ticket)) return cudaSuccess;
    wait_ticket(ev->ticket);
    return cudaErrorNotReady;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (!start || !end || !start->timing || !end->timing) return set_last_error(cudaErrorInvalidResourceHandle);
    if (!start->recorded || !end->recorded || !ticket_done(start->ticket) || !ticket_done(end->ticket))
        return set_last_error(cudaErrorNotReady);
    *ms = (float)(end->time_ms - start->time_ms);
    return cudaSuccess;
}

// ---- graphs
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    if (!graph) return set_last_error(cudaErrorInvalidValue);
    *exec = new CUgraphExec_st{copy_graph((const Graph*)graph)};
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return set_last_error(cudaErrorInvalidResourceHandle);
    Graph* g = exec->graph;
    return set_last_error(submit(s, "cudaGraphLaunch", [g] { run_graph(*g); }));
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    if (!exec) return cudaSuccess;
    wait_all();
    delete_graph(exec->graph);
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete_graph((Graph*)graph);
    return cudaSuccess;
}

// ---- kernels
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return set_last_error(cudaErrorInvalidValue);
    if (value < 0 || value > 227 * 1024) return set_last_error(cudaErrorInvalidValue);
    max_dynamic_shared()[func] = value;
    return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int block_size, size_t dynamic_shared) {
    // Threads and shared memory only: the emulation does not know a kernel's registers (say so in docs).
    if (block_size <= 0) return set_last_error(cudaErrorInvalidValue);
    const int warps = (block_size + 31) / 32;
    int by_threads = 64 / warps;
    int by_shared = (int)((228 * 1024) / (dynamic_shared + 1024));
    int n = by_threads < by_shared ? by_threads : by_shared;
    *blocks = n < 32 ? n : 32;
    return cudaSuccess;
}

}  // extern "C"
