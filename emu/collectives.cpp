// Warp shuffles, votes and __syncwarp on top of execution.h's warp_collective.
#include "device.h"
#include <cstdio>

namespace emu {

void shuffle_complete(void* const* lanes, unsigned mask, const void* context) {
    const size_t bytes = *(const size_t*)context;
    for (int l = 0; l < 32; l++) {
        if (!lanes[l]) continue;
        ShuffleLane* me = (ShuffleLane*)lanes[l];
        const int src = me->src;
        if (src >= 0 && src < 32 && lanes[src]) std::memcpy(me->out, ((ShuffleLane*)lanes[src])->in, bytes);
        else if (src >= 0 && src < 32 && !(mask & (1u << src))) std::memset(me->out, 0xFF, bytes);  // lane not in mask: undefined
        else std::memcpy(me->out, me->in, bytes);
    }
}

namespace {
struct VoteLane {
    bool predicate;
    unsigned result;
};
void vote_complete(void* const* lanes, unsigned, const void*) {
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        if (lanes[l] && ((VoteLane*)lanes[l])->predicate) ballot |= 1u << l;
    for (int l = 0; l < 32; l++)
        if (lanes[l]) ((VoteLane*)lanes[l])->result = ballot;
}
void nothing(void* const*, unsigned, const void*) {}
}  // namespace

unsigned vote(unsigned mask, bool predicate, const char* what, const char* file, int line) {
    VoteLane lane{predicate, 0};
    warp_collective(what, mask, file, line, &lane, vote_complete, nullptr, false);
    return lane.result;
}

void syncwarp(unsigned mask, const char* file, int line) {
    // __syncwarp orders memory among its lanes (Programming Guide, "Synchronization Functions").
    int dummy;
    warp_collective("__syncwarp", mask, file, line, &dummy, nothing, nullptr, true);
}

void trap(const char* file, int line) { fail("__trap() at %s:%d", file, line); }

}  // namespace emu

unsigned __activemask() {
    // All lanes run until they exit, so the active lanes are the ones that have not exited; the
    // scheduler does not track that per call, so this reports the calling lane's whole warp.
    const emu::ThreadInfo& t = emu::this_thread();
    const int warp_threads = (int)(blockDim.x * blockDim.y * blockDim.z) - t.warp * 32;
    return warp_threads >= 32 ? 0xffffffffu : ((1u << warp_threads) - 1);
}
