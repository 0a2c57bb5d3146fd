// What runtime.cpp needs from stream.cpp beyond stream.h: the emulation's own stream, event and graph
// objects. Not for device code or libraries.
#pragma once
#include "stream.h"

namespace emu {
struct StreamImpl;
struct Graph;
StreamImpl* new_stream(bool blocking);
void delete_stream(StreamImpl* s);
cudaError_t take_last_error();
cudaError_t peek_last_error();
void wait_ticket(const Ticket& t);
Ticket current_ticket(cudaStream_t stream);
cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t end_capture(cudaStream_t stream, Graph** graph);
void join_capture(cudaStream_t waiter, Graph* g, cudaStreamCaptureMode mode, const std::vector<size_t>& deps);
void leave_capture(cudaStream_t joined);
std::vector<size_t> capture_frontier(cudaStream_t stream);
Graph* capture_graph(cudaStream_t stream);
cudaStreamCaptureMode capture_mode(cudaStream_t stream);
bool is_capture_origin(cudaStream_t stream);
void run_graph(const Graph& g);
void delete_graph(Graph* g);
Graph* copy_graph(const Graph* g);
// Device memory: checks every live allocation's guard bytes (after each kernel).
void check_device_guards(const char* after_what);
}  // namespace emu
