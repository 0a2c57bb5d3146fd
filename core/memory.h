// What the CPU reference model (core/model_cpu.h, with core/backend_cpu.h's Adam moments) allocates for
// a config and a (B, T) batch, checked against the machine's memory before anything is allocated, so
// that flags asking for too much end in a message that says how much, not in std::bad_alloc.
// Counted in double: the products of large flags cannot overflow it.
#pragma once
#include <unistd.h>
#include <cstdio>
#include <stdexcept>
#include <string>
#include "config.h"

struct CpuMemoryEstimate {
    double weights;      // bytes: parameters, gradients, Adam's m and v: 4 P
    double activations;  // per layer 13 N C + 3 N Fs (the stored MLP width) + 2 N + B H T T (attention probabilities), backward scratch
    double logits;       // logits and their gradient: 2 N V
    double total() const { return weights + activations + logits; }
};

inline CpuMemoryEstimate estimate_cpu_memory(const ModelConfig& cfg, int B, int T, size_t real_bytes = sizeof(float)) {
    const double N = (double)B * T, C = cfg.d_model, F = (double)ffn_stored(cfg), V = cfg.vocab_size, L = cfg.n_layer, H = cfg.n_head;
    const double P = (double)make_param_layout(cfg).total;
    CpuMemoryEstimate e;
    e.weights = 4 * P * real_bytes;
    e.activations = (L * (13 * N * C + 3 * N * F + 2 * N + (double)B * H * T * T) + 12 * N * C + 3 * N * F + 2 * N) * real_bytes;
    e.logits = 2 * N * V * real_bytes;
    return e;
}

inline std::string gib(double bytes) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.3g GiB", bytes / (1024.0 * 1024 * 1024));
    return buf;
}

// Throws, saying how much the flags ask for and of what, if it exceeds the machine's physical memory.
inline void check_cpu_memory(const ModelConfig& cfg, int B, int T) {
    const CpuMemoryEstimate e = estimate_cpu_memory(cfg, B, T);
    const double machine = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (e.total() > machine)
        throw std::runtime_error("the flags ask for " + gib(e.total()) + " of memory (weights, gradients and Adam moments " +
                                 gib(e.weights) + "; activations of -b " + std::to_string(B) + " x -t " + std::to_string(T) +
                                 " tokens " + gib(e.activations) + "; logits of " + std::to_string(B) + " x " + std::to_string(T) +
                                 " x vocab " + std::to_string(cfg.vocab_size) + " " + gib(e.logits) + "), more than this machine's " +
                                 gib(machine) + ": lower -b, -t, -V or the model size");
}
