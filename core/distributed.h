// Data-parallel bookkeeping that needs no GPU: who this process is (from the launcher's
// environment), the gradient buckets and which slice of each this rank owns under ZeRO-1, and the
// arithmetic of gradient averaging. The NCCL calls live in the GPU trainer; this file is what they rely on.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>
#include "config.h"

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

// ZeRO-1 with gradient buckets. The parameters (the layout of core/config.h) are cut into buckets,
// each one contiguous block that the backward finishes at one moment, so that its gradients can be
// summed over the ranks while the backward goes on: the embedding, each layer's block, and the final
// norm with the LM head. The backward finishes them last to first (LM head, layer L-1, ..., layer 0,
// embedding).
//
// On W ranks each bucket of n elements is cut into W equal slices (NCCL's reduce-scatter and
// all-gather need equal counts) of `slice` elements: ceil(n / W) rounded up to a multiple of
// ZERO_SHARD_ALIGN, so that every slice starts 16-byte aligned (64 elements: 128 bytes in bf16, 256
// in fp32) for vector loads and NCCL. Rank r owns slice r of every bucket, the parameters
// [begin + r*slice, min(end, begin + (r+1)*slice)): shorter, or empty, for the last ranks. Three
// arrangements of the numbers follow from that:
//   padded: the device's weights and gradients, every bucket padded with zeros to W * slice
//           elements, in layout order; bucket b starts at padded_offset.
//   owned:  one rank's master weights, Adam moments and summed gradients: its slice of every bucket,
//           each padded to `slice`, in layout order; bucket b's at owned_offset = padded_offset / W.
//   packed: the rank's owned parameters without the padding, in layout order: Adam's moments as the
//           driver and the optimizer shard files hold them.
// On one rank nothing is padded: slice = n, padded = the plain layout, and the rank owns all of it.
constexpr long ZERO_SHARD_ALIGN = 64;

struct GradientBucket {
    long begin, end;       // parameters [begin, end) of the layout
    long slice;            // elements of each rank's slice
    long padded_offset;    // the bucket's first element in the padded buffers (W * slice elements)
    long owned_offset;     // its slice's first element in each rank's owned buffers
};

struct ParamRange {
    long begin, end;  // parameters [begin, end) of the layout
    bool operator==(const ParamRange& o) const { return begin == o.begin && end == o.end; }
};

// A run of one rank's owned parameters, where it sits in the layout (plain), in the packed moments and
// in the owned buffers: count elements from each.
struct OwnedPiece {
    long plain, packed, owned, count;
};

struct BucketPlan {
    int world_size = 1;
    std::vector<GradientBucket> buckets;  // in layout order: embedding, layers 0..L-1, final norm + LM head
    long padded_total = 0;                // elements of the padded buffers
    long owned_total = 0;                 // elements of each rank's owned buffers: padded_total / world_size

    // The bucket that holds parameter i.
    int bucket_of(long i) const {
        const auto after = std::upper_bound(buckets.begin(), buckets.end(), i,
                                            [](long x, const GradientBucket& b) { return x < b.begin; });
        return (int)(after - buckets.begin()) - 1;
    }
    // Where parameter i sits in the padded buffers.
    long padded_index(long i) const {
        const GradientBucket& b = buckets[bucket_of(i)];
        return b.padded_offset + (i - b.begin);
    }
    // Rank r's parameters, a piece per bucket where its slice is not empty, in layout order.
    std::vector<OwnedPiece> owned_pieces(int rank) const {
        std::vector<OwnedPiece> pieces;
        long packed = 0;
        for (const GradientBucket& b : buckets) {
            const long first = b.begin + rank * b.slice, count = std::min(b.end, first + b.slice) - first;
            if (count <= 0) continue;
            pieces.push_back(OwnedPiece{first, packed, b.owned_offset, count});
            packed += count;
        }
        return pieces;
    }
    // The same as ranges of the layout, adjacent ones merged (on one rank: [0, P)).
    std::vector<ParamRange> owned_ranges(int rank) const {
        std::vector<ParamRange> ranges;
        for (const OwnedPiece& p : owned_pieces(rank)) {
            if (!ranges.empty() && ranges.back().end == p.plain) ranges.back().end += p.count;
            else ranges.push_back(ParamRange{p.plain, p.plain + p.count});
        }
        return ranges;
    }
};

// The plan for buckets of the given sizes (layout order, each at least 1) on world_size ranks.
inline BucketPlan make_bucket_plan(const std::vector<long>& sizes, int world_size) {
    BucketPlan plan;
    plan.world_size = world_size;
    long begin = 0;
    for (const long n : sizes) {
        long slice = (n + world_size - 1) / world_size;
        if (world_size > 1) slice = (slice + ZERO_SHARD_ALIGN - 1) / ZERO_SHARD_ALIGN * ZERO_SHARD_ALIGN;
        plan.buckets.push_back(GradientBucket{begin, begin + n, slice, plan.padded_total, plan.owned_total});
        begin += n;
        plan.padded_total += slice * world_size;
        plan.owned_total += slice;
    }
    return plan;
}

// The model's buckets: the embedding, one per layer block, the final norm with the LM head.
inline BucketPlan gradient_bucket_plan(const ParamLayout& layout, int n_layer, int world_size) {
    std::vector<long> sizes = {layout.layer_begin(0)};
    for (int l = 0; l < n_layer; l++) sizes.push_back(layout.layer_stride);
    sizes.push_back(layout.total - layout.layer_begin(n_layer));
    return make_bucket_plan(sizes, world_size);
}

// The buckets of gradient_bucket_plan, in layout order; the backward finishes them last to first.
inline int embedding_bucket() { return 0; }
inline int layer_bucket(int l) { return 1 + l; }
inline int head_bucket(int n_layer) { return 1 + n_layer; }  // the final norm with the LM head

// The number of parameters in ranges.
inline long range_total(const std::vector<ParamRange>& ranges) {
    long n = 0;
    for (const ParamRange& r : ranges) n += r.end - r.begin;
    return n;
}

// Copies every piece's count elements from src at piece.*from to dst at piece.*to: between the
// layout (&OwnedPiece::plain), the packed moments (&OwnedPiece::packed) and the owned buffers
// (&OwnedPiece::owned).
template <typename T>
void copy_pieces(const std::vector<OwnedPiece>& pieces, long OwnedPiece::*from, const T* src, long OwnedPiece::*to, T* dst) {
    for (const OwnedPiece& p : pieces) std::copy(src + p.*from, src + p.*from + p.count, dst + p.*to);
}

// All P parameters between the plain layout and the padded buffers (whose padding is left as it is),
// converted from From to To on the way.
template <typename From, typename To>
void plain_to_padded(const BucketPlan& plan, const From* plain, To* padded) {
    for (const GradientBucket& b : plan.buckets) std::copy(plain + b.begin, plain + b.end, padded + b.padded_offset);
}
template <typename T>
void padded_to_plain(const BucketPlan& plan, const T* padded, T* plain) {
    for (const GradientBucket& b : plan.buckets)
        std::copy(padded + b.padded_offset, padded + b.padded_offset + (b.end - b.begin), plain + b.begin);
}

// Each rank's gradient is the mean over its own tokens (loss scale 1 / accumulation steps). With
// equal tokens per rank, the mean over all tokens is the sum over ranks divided by world_size:
// NCCL sums (ncclSum) and this factor scales the result (or is folded into the loss scale).
inline double gradient_average_factor(int world_size) { return 1.0 / world_size; }
