// A small deterministic random number generator (SplitMix64), identical on every platform, so a
// seed gives the same initial weights and data order in the CPU and GPU trainers. Its whole state
// is one 64-bit word, saved in checkpoints.
#pragma once
#include <cmath>
#include <cstdint>

struct Rng {
    uint64_t state;

    explicit Rng(uint64_t seed) : state(seed) {}

    uint64_t next_u64() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return (next_u64() >> 11) * 0x1.0p-53; }
    // Uniform integer in [0, n).
    uint64_t below(uint64_t n) { return (uint64_t)(uniform() * (double)n); }
    // Standard normal by Box-Muller (one value per call; the partner is discarded for simplicity).
    double normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    }
};

// Fisher-Yates shuffle of an index permutation.
template <typename Index>
void shuffle_indices(Index* idx, uint64_t n, Rng& rng) {
    for (uint64_t i = 0; i < n; i++) idx[i] = (Index)i;
    for (uint64_t i = n; i > 1; i--) {
        const uint64_t j = rng.below(i);
        const Index tmp = idx[i - 1]; idx[i - 1] = idx[j]; idx[j] = tmp;
    }
}
