// A fiber: a function running on a stack of its own, switched to and from by hand. Each emulated CUDA
// thread is one fiber, so a thread can stop at __syncthreads or a shuffle, in the middle of its code,
// while the other threads of its block catch up, as a GPU's warp scheduler lets it.
//
// The switch saves and restores only what the System V ABI makes a callee keep (rbx, rbp, r12-r15, the
// stack pointer, the SSE and x87 control words): about 20 instructions, no system call, against 1 us for
// swapcontext (which saves the signal mask). Other architectures fall back to ucontext.
//
// Sanitizers must be told about every switch: AddressSanitizer (which stack is live) and
// ThreadSanitizer (each fiber is a thread of its own for race detection, EMU_RACECHECK builds).
#pragma once
#include <cstddef>

namespace emu {

class Fiber {
  public:
    using Entry = void (*)(void* arg);
    Fiber();  // the calling OS thread's own context (the scheduler)
    ~Fiber();
    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;
    // Prepares this fiber to run entry(arg) on a fresh stack the next time it is switched to. The stack
    // is kept and reused across restarts. entry must never return: it switches away for the last time.
    void start(Entry entry, void* arg, size_t stack_bytes);
    // Saves the current context into `from` and continues `to` where it stopped.
    static void switch_to(Fiber& from, Fiber& to);
    bool is_thread_context() const { return stack_ == nullptr; }

  private:
    void* sp_ = nullptr;             // saved stack pointer while not running
    char* stack_ = nullptr;          // mmap'ed, with a guard page below
    size_t stack_bytes_ = 0;
    void* tsan_fiber_ = nullptr;     // ThreadSanitizer's handle (EMU_RACECHECK builds)
    bool stack_was_started_ = false;  // tsan_fiber_ is this fiber's own, made by start()
    const void* asan_bottom_ = nullptr;  // AddressSanitizer: this stack's extent
    size_t asan_size_ = 0;
    void* ucontext_ = nullptr;       // the fallback's ucontext_t, other architectures
};

}  // namespace emu
