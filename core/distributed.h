// Data-parallel bookkeeping that needs no GPU: who this process is (from the launcher's
// environment), which slice of the optimizer state it owns under ZeRO-1, and the arithmetic of
// gradient averaging. The NCCL calls live in the GPU trainer; this file is what they rely on.
#pragma once
#include <cstdlib>
#include <stdexcept>
#include <string>

struct DistributedEnv {
    int rank = 0, world_size = 1, local_rank = 0;
    std::string launcher = "none";  // "mpirun", "torchrun", "slurm" or "none"
};

// Reads an integer environment variable; false if unset. Throws if set but not a non-negative integer.
inline bool env_int(const char* name, int* out) {
    const char* s = getenv(name);
    if (!s) return false;
    char* end = nullptr;
    const long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 1000000)
        throw std::runtime_error(std::string("environment variable ") + name + "='" + s + "' is not a rank or size");
    *out = (int)v;
    return true;
}

// The first launcher whose variables are present wins: torchrun (RANK, WORLD_SIZE, LOCAL_RANK; also
// set by many Slurm scripts that export them by hand), Open MPI's mpirun (OMPI_COMM_WORLD_*), then
// Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). None: a single process.
inline DistributedEnv detect_distributed_env() {
    DistributedEnv e;
    struct Launcher { const char* name; const char* rank; const char* size; const char* local; };
    static const Launcher launchers[] = {
        {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
        {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    };
    for (const Launcher& l : launchers) {
        int rank, size;
        const bool has_rank = env_int(l.rank, &rank), has_size = env_int(l.size, &size);
        if (!has_rank && !has_size) continue;
        if (has_rank != has_size)
            throw std::runtime_error(std::string("launcher '") + l.name + "': " + (has_rank ? l.size : l.rank) + " is not set");
        if (size < 1 || rank >= size)
            throw std::runtime_error(std::string("launcher '") + l.name + "': rank " + std::to_string(rank) +
                                     " is not below world size " + std::to_string(size));
        e.rank = rank;
        e.world_size = size;
        if (!env_int(l.local, &e.local_rank)) e.local_rank = rank;  // one node
        e.launcher = l.name;
        return e;
    }
    return e;
}

// ZeRO-1: the n parameters' fp32 master weights and Adam moments are split into world_size equal
// slices of shard_size elements, as NCCL's reduce-scatter and all-gather need equal counts: on several
// ranks ceil(n / world_size) rounded up to a multiple of ZERO_SHARD_ALIGN, so that every slice of a
// flat buffer starts 16-byte aligned (64 elements: 128 bytes in bf16, 256 in fp32) for vector loads and
// NCCL; on one rank, n. The flat buffers are padded to world_size * shard_size with zeros. Rank r owns
// [begin, end), which is shorter (possibly empty) for the last ranks when n does not divide evenly.
constexpr long ZERO_SHARD_ALIGN = 64;

struct ZeroShard {
    long shard_size, begin, end, padded_total;
};

inline ZeroShard zero_shard(long n, int rank, int world_size) {
    ZeroShard s;
    s.shard_size = (n + world_size - 1) / world_size;
    if (world_size > 1) s.shard_size = (s.shard_size + ZERO_SHARD_ALIGN - 1) / ZERO_SHARD_ALIGN * ZERO_SHARD_ALIGN;
    s.padded_total = s.shard_size * world_size;
    s.begin = std::min(n, (long)rank * s.shard_size);
    s.end = std::min(n, s.begin + s.shard_size);
    return s;
}

// Each rank's gradient is the mean over its own tokens (loss scale 1 / accumulation steps). With
// equal tokens per rank, the mean over all tokens is the sum over ranks divided by world_size:
// NCCL sums (ncclSum) and this factor scales the result (or is folded into the loss scale).
inline double gradient_average_factor(int world_size) { return 1.0 / world_size; }
