// Thread and block execution: how a kernel launch runs on the CPU.
//
// A launch runs its blocks one after another (in order, reversed or shuffled: EMU_BLOCK_ORDER). The
// threads of a block are fibers (fiber.h), run one at a time: a thread runs until it waits at a barrier
// or a warp collective, or ends, then the next runnable thread of the block continues, in lane order
// (EMU_LANE_ORDER: forward, reverse or shuffle). threadIdx, blockIdx, blockDim and gridDim are plain
// globals that the scheduler sets before it switches to a thread.
//
// Every error a GPU would report vaguely, or not at all, stops the program here with what went wrong
// and where: the kernel, the launch site, the block, the thread and the source line.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector_types.h>
#include <vector_functions.h>

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {

// One emulated CUDA thread: where it is in its block and what it waits for.
struct ThreadInfo {
    uint3 idx;
    int linear, warp, lane;
};

// The thread running now; fails outside a kernel.
const ThreadInfo& this_thread();
bool in_kernel();

// Stops the program: "emu: <kernel> (launched at <file:line>), block (x,y,z), thread (x,y,z): <message>"
// (without the kernel part outside a kernel). Aborts, so gdb stops in the failing thread's stack.
[[noreturn]] void fail(const char* format, ...) __attribute__((format(printf, 1, 2)));

// __syncthreads: every thread of the block must reach the same barrier; one that has exited, or waits at
// another barrier, is an error.
void block_barrier(const char* what, const char* file, int line);

// A warp collective: each lane named in mask calls it with the same kind and mask, and a pointer to its
// own data; when the last of them arrives, complete(lanes, mask, context) runs once with every lane's
// pointer (null for lanes outside mask), writing each lane's result into its data, then all continue.
// A mask without the calling lane, a lane in mask that has exited or is missing from the block, lanes
// that meet at different collectives or with different masks: each is an error. memory_order: the
// collective orders memory among its lanes (__syncwarp does; shuffles and votes do not), which the race
// checker needs to know.
using CollectiveFn = void (*)(void* const* lanes, unsigned mask, const void* context);
void warp_collective(const char* what, unsigned mask, const char* file, int line, void* lane_data,
                     CollectiveFn complete, const void* context, bool memory_order);

// The calling thread's per-thread slot for an instruction's emulation state (cp.async's pending
// copies): one pointer per thread, reset at each block; owner frees what it stores at block end
// through the cleanup function it registered.
void*& thread_slot();
void on_block_end(void (*cleanup)());

// Shared memory of the running block. A __shared__ variable (rewritten by cuda_to_cpp.py) asks for its
// storage by a key unique to the declaration; it is fresh, poisoned (0xFF bytes) and guarded in each
// block. dynamic_shared() is the launch's extern __shared__ buffer.
void* block_shared(const void* key, size_t bytes, size_t align, const char* name, const char* file, int line);
void* dynamic_shared();
// The offset of a shared-memory pointer in the block's shared window (__cvta_generic_to_shared) and back.
uint32_t shared_offset(const void* p);
void* shared_pointer(uint32_t offset);

// The scheduler's entry for every kernel: called first by each thread, with __launch_bounds__'s
// maximum threads per block (0 without). A probe run (launch validation) stops here.
void kernel_entry(int max_threads);

template <typename T>
T& shared_variable(const void* key, const char* name, const char* file, int line, size_t align = alignof(T)) {
    return *(T*)block_shared(key, sizeof(T), align, name, file, line);
}

}  // namespace emu

#define __syncthreads() ::emu::block_barrier("__syncthreads", __FILE__, __LINE__)
