// Streams, events and graphs of the emulated runtime: the order in which queued device work runs.
//
// Work queued on a stream (a kernel, a copy, a cuBLASLt product, an NCCL call) does not run when it is
// queued: it runs when the host waits for it (cudaStreamSynchronize, cudaEventSynchronize, a
// synchronous copy, cudaDeviceSynchronize, a query), and then only what that wait needs: the stream's
// work in order, and before any item, the work on other streams it depends on (cudaStreamWaitEvent,
// and the legacy default stream's implicit order with blocking streams). Everything else stays queued
// as long as possible: a missing cudaStreamWaitEvent, or a host that reads a pinned buffer before
// waiting, reads stale or poisoned data here instead of passing by luck.
//
// While a stream is being captured (cudaStreamBeginCapture), work queued on it, and on the streams
// that joined the capture through an event, is recorded into the graph instead; cudaGraphLaunch queues
// the recorded work, in recorded order, as one item.
#pragma once
#include <cuda_runtime_api.h>
#include <cstdint>
#include <functional>
#include <vector>

namespace emu {

// One queued item: its stream and its position there (1 for the stream's first item).
struct Ticket {
    const void* stream = nullptr;  // the stream's emulation object (not the cudaStream_t)
    uint64_t seq = 0;              // 0: nothing (e.g. recorded into a graph)
    uint64_t stream_id = 0;        // the stream's number (a destroyed stream's object may be reused)
};

// Queues work on stream (0: the legacy default stream), after the items in `after` (which may be on
// other streams: NCCL orders a communicator's calls so), or records it when the stream is being
// captured. what names the work in error messages. Returns cudaSuccess, or the error a call queuing
// on this stream would get (e.g. cudaErrorStreamCaptureImplicit for the legacy stream during a
// capture), and then nothing is queued. *ticket, if given, identifies the queued item.
cudaError_t submit(cudaStream_t stream, const char* what, std::function<void()> work,
                   const std::vector<Ticket>& after = {}, Ticket* ticket = nullptr);

// Whether the item t names has run (true for no item).
bool ticket_done(const Ticket& t);

// Runs everything queued on stream so far (and what it depends on): the host's wait.
void wait_stream(cudaStream_t stream);
// Runs everything queued on every stream.
void wait_all();

// Whether stream is being captured into a graph (work is recorded, not run).
bool is_capturing(cudaStream_t stream);
// The calling thread has a capture in progress in global or thread-local mode: a potentially unsafe
// call (cudaMalloc, a synchronous copy) must fail with cudaErrorStreamCaptureUnsupported and
// invalidate the capture. Returns the error to return, or cudaSuccess.
cudaError_t check_unsafe_call_during_capture(const char* what);

// Records err as the runtime's last error (cudaGetLastError) and returns it.
cudaError_t set_last_error(cudaError_t err);

// Device memory: whether [p, p + bytes) lies inside one live cudaMalloc allocation.
bool is_device_range(const void* p, size_t bytes);
// Pinned host memory: whether [p, p + bytes) lies inside one live cudaMallocHost allocation.
bool is_pinned_range(const void* p, size_t bytes);
// The live cudaMalloc allocation holding [p, p + bytes): a number that no other allocation, earlier
// or later, has; 0 if there is none.
uint64_t allocation_id(const void* p, size_t bytes);

}  // namespace emu
