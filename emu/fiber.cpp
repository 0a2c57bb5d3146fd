// Fibers: see fiber.h. The x86-64 switch is below; elsewhere ucontext (slower, same behaviour).
#include "fiber.h"
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(EMU_RACECHECK)  // the library itself is not instrumented: see execution.cpp
#define EMU_TSAN 1
#include <sanitizer/tsan_interface.h>
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__x86_64__)
extern "C" void emu_fiber_switch(void** save_sp, void* new_sp);
extern "C" void emu_fiber_trampoline();
// emu_fiber_switch(save_sp, new_sp): pushes the callee-saved registers and the SSE/x87 control words
// on the current stack, stores the stack pointer in *save_sp, loads new_sp and pops the same frame
// there. A new fiber's frame (built by Fiber::start) "returns" into emu_fiber_trampoline, which calls
// entry(arg) from r13 and r12.
asm(R"(
    .text
    .globl emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch

    .globl emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");
#endif

namespace emu {

namespace {
#if defined(EMU_ASAN) || !defined(__x86_64__)
struct StartArgs {
    Fiber::Entry entry;
    void* arg;
};
#endif

#if defined(EMU_ASAN)
// A new fiber's first code: tell AddressSanitizer the switch into it has finished.
void asan_entry(void* p) {
    StartArgs* a = (StartArgs*)p;
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
    a->entry(a->arg);
}
#endif
}  // namespace

Fiber::Fiber() {
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void* addr;
        size_t size;
        pthread_attr_getstack(&attr, &addr, &size);
        asan_bottom_ = addr;
        asan_size_ = size;
        pthread_attr_destroy(&attr);
    }
#if defined(EMU_TSAN)
    tsan_fiber_ = __tsan_get_current_fiber();
#endif
#if !defined(__x86_64__)
    ucontext_ = new ucontext_t;
#endif
}

Fiber::~Fiber() {
#if defined(EMU_TSAN)
    if (stack_was_started_ && tsan_fiber_) __tsan_destroy_fiber(tsan_fiber_);
#endif
    if (stack_) munmap(stack_ - getpagesize(), stack_bytes_ + getpagesize());
#if !defined(__x86_64__)
    delete (ucontext_t*)ucontext_;
#endif
}

void Fiber::start(Entry entry, void* arg, size_t stack_bytes) {
    const size_t page = getpagesize();
    stack_bytes = (stack_bytes + page - 1) / page * page;
    if (!stack_ || stack_bytes_ != stack_bytes) {
        if (stack_) munmap(stack_ - page, stack_bytes_ + page);
        // A guard page below the stack: a kernel that overflows its stack faults there.
        char* base = (char*)mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) { perror("emu: fiber stack"); abort(); }
        mprotect(base, page, PROT_NONE);
        stack_ = base + page;
        stack_bytes_ = stack_bytes;
    }
    asan_bottom_ = stack_;
    asan_size_ = stack_bytes_;
#if defined(EMU_TSAN)
    // One race-detector thread per fiber, kept across restarts: creating one costs about a millisecond,
    // once per CUDA thread per block. So thread i of one block is ordered after thread i of the block
    // before on the same fiber, which hides races between blocks; within a block, every thread is a
    // thread of its own (docs/emulation.md).
    if (!stack_was_started_) tsan_fiber_ = __tsan_create_fiber(0);
    stack_was_started_ = true;
#endif
#if defined(EMU_ASAN)
    // A reused stack still carries the redzones of the frames its last thread left: clear them.
    ASAN_UNPOISON_MEMORY_REGION(stack_, stack_bytes_);
    StartArgs* start_args = (StartArgs*)(stack_ + stack_bytes_ - 64);  // the top of its own stack
    start_args->entry = entry;
    start_args->arg = arg;
    arg = start_args;
    entry = asan_entry;
#endif
#if defined(__x86_64__)
    // The frame emu_fiber_switch pops: control words, r15, r14, r13 (entry), r12 (arg), rbx, rbp, and the
    // return address, so that the trampoline starts with a 16-byte aligned stack.
    uintptr_t top = ((uintptr_t)(stack_ + stack_bytes_ - 128)) & ~(uintptr_t)15;
    uint64_t* frame = (uint64_t*)(top - 64);
    const uint32_t mxcsr = 0x1F80, x87_control = 0x037F;
    frame[0] = (uint64_t)mxcsr | ((uint64_t)x87_control << 32);
    frame[1] = 0;                  // r15
    frame[2] = 0;                  // r14
    frame[3] = (uint64_t)entry;    // r13
    frame[4] = (uint64_t)arg;      // r12
    frame[5] = 0;                  // rbx
    frame[6] = 0;                  // rbp
    frame[7] = (uint64_t)&emu_fiber_trampoline;
    sp_ = frame;
#else
    ucontext_t* uc = (ucontext_t*)ucontext_;
    getcontext(uc);
    uc->uc_stack.ss_sp = stack_;
    uc->uc_stack.ss_size = stack_bytes_ - 128;
    uc->uc_link = nullptr;
    static thread_local StartArgs args;
    args = {entry, arg};
    makecontext(uc, (void (*)())+[](int hi, int lo) {
        StartArgs* a = (StartArgs*)(((uintptr_t)(unsigned)hi << 32) | (unsigned)lo);
        a->entry(a->arg);
    }, 2, (int)((uintptr_t)&args >> 32), (int)(uintptr_t)&args);
#endif
}

void Fiber::switch_to(Fiber& from, Fiber& to) {
#if defined(EMU_ASAN)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, to.asan_bottom_, to.asan_size_);
#endif
#if defined(EMU_TSAN)
    // no_sync: a switch is not a synchronization; only barriers (execution.cpp) order threads.
    __tsan_switch_to_fiber(to.tsan_fiber_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__x86_64__)
    emu_fiber_switch(&from.sp_, to.sp_);
#else
    swapcontext((ucontext_t*)from.ucontext_, (ucontext_t*)to.ucontext_);
#endif
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

}  // namespace emu
