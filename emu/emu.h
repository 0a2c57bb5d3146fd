// The CUDA emulation, force-included (g++ -include emu/emu.h) ahead of every source that cuda_to_cpp.py
// has rewritten: NVIDIA's own headers for the types, then what nvcc would have provided to device code.
// See docs/emulation.md.
#pragma once
#define MIXLN_EMU 1
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "execution.h"
#include "device.h"
#include "ptx.h"
#include "launch.h"
#include "stream.h"

// A kernel's first statement (inserted by cuda_to_cpp.py): its __launch_bounds__ for the launch check.
#define EMU_KERNEL_ENTRY(max_threads) ::emu::kernel_entry(max_threads)
