// The race checker's annotations (EMU_RACECHECK builds; nothing otherwise), for the emulation library.
#pragma once
#include <new>

// EMU_RACECHECK: the race checker. The kernels (not this library) are built with ThreadSanitizer;
// each CUDA thread is a fiber ThreadSanitizer knows as a thread of its own, and the only orders
// between them are the ones a GPU guarantees: barriers, __syncwarp, the launch's start and end.
// The emulator's own bookkeeping, which runs inside the threads' fibers (a collective's data exchange,
// shared memory's poison, the rendezvous objects), is hidden from it (IgnoreEmulatorAccesses).
#if defined(EMU_RACECHECK)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN_RELEASE(p) __tsan_release(p)
#define EMU_TSAN_ACQUIRE(p) __tsan_acquire(p)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
struct IgnoreEmulatorAccesses {
    IgnoreEmulatorAccesses() {
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    }
    ~IgnoreEmulatorAccesses() {
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    }
    // Around a switch to another fiber: the next fiber starts with its own (empty) ignore state.
    void pause() { this->~IgnoreEmulatorAccesses(); }
    void resume() { new (this) IgnoreEmulatorAccesses(); }
};
// A fresh synchronization object (freed, its history goes with it).
inline char* new_sync() { return new char; }
#else
#define EMU_TSAN_RELEASE(p) ((void)0)
#define EMU_TSAN_ACQUIRE(p) ((void)0)
inline char* new_sync() { return nullptr; }
struct IgnoreEmulatorAccesses {
    IgnoreEmulatorAccesses() {}  // user-provided: a guard object, not an unused variable
    void pause() {}
    void resume() {}
};
#endif
