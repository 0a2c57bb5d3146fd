// Streams, events and graphs: see stream.h. The CUDA runtime functions for them are in runtime.cpp.
#include "stream.h"
#include "execution.h"
#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <vector>

struct CUgraph_st;

namespace emu {

// A captured graph: its nodes in the order they were recorded, each with the nodes it depends on
// (the one before it on its stream, and those of the events its stream waited for), as the real
// capture builds its edges. origin: recorded on the stream that began the capture.
struct Graph {
    struct Node {
        const char* what;
        std::function<void()> work;
        std::vector<size_t> deps;
        bool origin;
    };
    std::vector<Node> nodes;
};

struct StreamImpl {
    struct Item {
        const char* what;
        std::function<void()> work;
        std::vector<Ticket> after;
    };
    bool legacy = false, blocking = true;
    uint64_t id = 0;            // this stream's number: no other stream, earlier or later, has it
    std::deque<Item> queue;     // submitted, not yet run
    uint64_t submitted = 0, completed = 0;
    Graph* capture = nullptr;   // the graph this stream records into, while capturing
    std::vector<size_t> capture_frontier;  // the nodes its next recorded node depends on
    cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
    bool capture_origin = false;
    bool capture_invalidated = false;
};

namespace {
cudaError_t g_last_error = cudaSuccess;

std::vector<StreamImpl*>& all_streams() {
    static std::vector<StreamImpl*> v;
    return v;
}
uint64_t g_streams_made = 0;
}  // namespace

StreamImpl* legacy_stream() {
    static StreamImpl* s = [] {
        StreamImpl* l = new StreamImpl;
        l->legacy = true;
        l->id = ++g_streams_made;
        all_streams().push_back(l);
        return l;
    }();
    return s;
}

StreamImpl* impl(cudaStream_t stream) { return stream ? (StreamImpl*)stream : legacy_stream(); }

// The ticket of s's last submitted item.
Ticket last_item(const StreamImpl* s) { return Ticket{s, s->submitted, s->id}; }

StreamImpl* new_stream(bool blocking) {
    legacy_stream();
    StreamImpl* s = new StreamImpl;
    s->blocking = blocking;
    s->id = ++g_streams_made;
    all_streams().push_back(s);
    return s;
}

void drain(StreamImpl* s, uint64_t upto);

void delete_stream(StreamImpl* s) {
    drain(s, s->submitted);
    auto& v = all_streams();
    v.erase(std::find(v.begin(), v.end(), s));
    delete s;
}

cudaError_t set_last_error(cudaError_t err) {
    if (err != cudaSuccess) g_last_error = err;
    return err;
}
cudaError_t take_last_error() {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t peek_last_error() { return g_last_error; }

bool any_capture_in_progress() {
    for (StreamImpl* s : all_streams())
        if (s->capture && s->capture_mode != cudaStreamCaptureModeRelaxed) return true;
    return false;
}

void invalidate_captures() {
    for (StreamImpl* s : all_streams())
        if (s->capture) s->capture_invalidated = true;
}

cudaError_t check_unsafe_call_during_capture(const char*) {
    if (!any_capture_in_progress()) return cudaSuccess;
    invalidate_captures();
    return cudaErrorStreamCaptureUnsupported;
}

bool is_capturing(cudaStream_t stream) { return impl(stream)->capture != nullptr; }

cudaError_t submit(cudaStream_t stream, const char* what, std::function<void()> work, const std::vector<Ticket>& after,
                   Ticket* ticket) {
    StreamImpl* s = impl(stream);
    if (ticket) *ticket = Ticket{};
    if (s->capture) {
        std::vector<Graph::Node>& nodes = s->capture->nodes;
        nodes.push_back({what, std::move(work), s->capture_frontier, s->capture_origin});
        s->capture_frontier = {nodes.size() - 1};
        return cudaSuccess;
    }
    // Work on the legacy default stream during a capture would join the capture implicitly: an error
    // that invalidates it, as the real runtime reports.
    if (s->legacy && any_capture_in_progress()) {
        invalidate_captures();
        return cudaErrorStreamCaptureImplicit;
    }
    StreamImpl::Item item{what, std::move(work), after};
    // The legacy default stream waits for all blocking streams' earlier work, and they wait for its.
    if (s->legacy) {
        for (StreamImpl* o : all_streams())
            if (o != s && o->blocking && o->submitted > 0) item.after.push_back(last_item(o));
    } else if (s->blocking) {
        StreamImpl* l = legacy_stream();
        if (l->submitted > 0) item.after.push_back(last_item(l));
    }
    s->queue.push_back(std::move(item));
    s->submitted++;
    if (ticket) *ticket = last_item(s);
    return cudaSuccess;
}

// The live stream a ticket names, or null: a destroyed stream ran all its work when it was destroyed.
StreamImpl* live_stream(const Ticket& t) {
    for (StreamImpl* s : all_streams())
        if (s == t.stream && s->id == t.stream_id) return s;
    return nullptr;
}

// Runs s's items until `upto` have completed, each after what it waits for.
void drain(StreamImpl* s, uint64_t upto) {
    while (s->completed < upto) {
        StreamImpl::Item item = std::move(s->queue.front());
        s->queue.pop_front();
        for (const Ticket& t : item.after) {
            StreamImpl* o = t.seq ? live_stream(t) : nullptr;
            if (o && o != s) drain(o, t.seq);
        }
        item.work();
        s->completed++;
    }
}

void wait_stream(cudaStream_t stream) {
    StreamImpl* s = impl(stream);
    drain(s, s->submitted);
}

void wait_all() {
    // A blocking stream's items may wait for the legacy stream and vice versa; drain() follows them.
    for (bool more = true; more;) {
        more = false;
        for (StreamImpl* s : std::vector<StreamImpl*>(all_streams()))
            if (s->completed < s->submitted) {
                drain(s, s->submitted);
                more = true;
            }
    }
}

void wait_ticket(const Ticket& t) {
    if (StreamImpl* s = t.seq ? live_stream(t) : nullptr) drain(s, t.seq);
}
bool ticket_done(const Ticket& t) {
    const StreamImpl* s = t.seq ? live_stream(t) : nullptr;
    return !s || s->completed >= t.seq;
}
Ticket current_ticket(cudaStream_t stream) { return last_item(impl(stream)); }

// ----------------------------------------------------------------------------
// Capture

cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    StreamImpl* s = impl(stream);
    if (s->legacy) return cudaErrorStreamCaptureUnsupported;
    if (s->capture) return cudaErrorIllegalState;
    s->capture = new Graph;
    s->capture_frontier.clear();
    s->capture_mode = mode;
    s->capture_origin = true;
    s->capture_invalidated = false;
    return cudaSuccess;
}

cudaError_t end_capture(cudaStream_t stream, Graph** graph) {
    StreamImpl* s = impl(stream);
    *graph = nullptr;
    if (!s->capture) return cudaErrorIllegalState;
    if (!s->capture_origin) return cudaErrorStreamCaptureUnmatched;
    Graph* g = s->capture;
    bool invalid = s->capture_invalidated, unjoined = false;
    for (StreamImpl* o : all_streams())
        if (o != s && o->capture == g) {
            unjoined = true;
            o->capture = nullptr;
        }
    s->capture = nullptr;
    s->capture_origin = false;
    if (invalid) {
        delete g;
        return cudaErrorStreamCaptureInvalidated;
    }
    if (unjoined) {
        delete g;
        return cudaErrorStreamCaptureUnjoined;
    }
    *graph = g;
    return cudaSuccess;
}

// An event recorded on a capturing stream lets another stream join the capture (cudaStreamWaitEvent);
// recorded on the joined stream and waited for by the origin, it lets that stream leave it again.
// deps: the nodes the event stands for; the waiter's next node depends on them.
void join_capture(cudaStream_t waiter, Graph* g, cudaStreamCaptureMode mode, const std::vector<size_t>& deps) {
    StreamImpl* s = impl(waiter);
    if (s->capture != g) {
        s->capture = g;
        s->capture_mode = mode;
        s->capture_origin = false;
        s->capture_frontier.clear();
    }
    for (size_t d : deps)
        if (std::find(s->capture_frontier.begin(), s->capture_frontier.end(), d) == s->capture_frontier.end())
            s->capture_frontier.push_back(d);
}
void leave_capture(cudaStream_t joined) {
    StreamImpl* s = impl(joined);
    if (!s->capture_origin) {
        s->capture = nullptr;
        s->capture_frontier.clear();
    }
}
std::vector<size_t> capture_frontier(cudaStream_t stream) { return impl(stream)->capture_frontier; }
Graph* capture_graph(cudaStream_t stream) { return impl(stream)->capture; }
cudaStreamCaptureMode capture_mode(cudaStream_t stream) { return impl(stream)->capture_mode; }
bool is_capture_origin(cudaStream_t stream) { return impl(stream)->capture_origin; }

// A launch of the graph runs its nodes as lazily as the streams run queued work: the origin's in
// order, each only after the nodes it depends on, so that work forked onto another stream runs as
// late as its edges allow. A node missing an edge (a forgotten cudaStreamWaitEvent before the capture
// ended) then runs after the work it should have preceded, as it may on a GPU.
void run_graph(const Graph& g) {
    std::vector<bool> done(g.nodes.size(), false);
    std::function<void(size_t)> run = [&](size_t i) {
        if (done[i]) return;
        done[i] = true;
        for (size_t d : g.nodes[i].deps) run(d);
        g.nodes[i].work();
    };
    for (size_t i = 0; i < g.nodes.size(); i++)
        if (g.nodes[i].origin) run(i);
    for (size_t i = 0; i < g.nodes.size(); i++) run(i);
}
void delete_graph(Graph* g) { delete g; }
Graph* copy_graph(const Graph* g) { return new Graph(*g); }

}  // namespace emu
