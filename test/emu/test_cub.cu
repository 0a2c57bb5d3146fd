// The emulated cub::DeviceRadixSort::SortPairs (emu/include/cub/device/device_radix_sort.cuh)
// against std::stable_sort: stability, bit ranges (single and multi-pass, partial digits, empty),
// the temp-storage query and its errors, the stream semantics, and kernels/embedding.cuh's use
// (unsigned token ids, int positions, a workspace sized for 32 bits and N positions serving fewer).
// Results must be bitwise those of the reference: a sort has one right answer.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime_api.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>
#include "../catch_compat.h"
#include "../../core/rng.h"

namespace {

template <typename T>
struct Device {
    T* ptr = nullptr;
    size_t n;
    explicit Device(size_t n_) : n(n_) { REQUIRE(cudaMalloc((void**)&ptr, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess); }
    Device(const std::vector<T>& host) : Device(host.size()) { upload(host); }
    ~Device() { cudaFree(ptr); }
    Device(const Device&) = delete;
    void upload(const std::vector<T>& host) {
        REQUIRE(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    void poison() { REQUIRE(cudaMemset(ptr, 0xFF, n * sizeof(T)) == cudaSuccess); }
    std::vector<T> download() const {
        std::vector<T> host(n);
        REQUIRE(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
        return host;
    }
};

// The keys' order and the values' in it, by std::stable_sort on the bits [begin, end) of each key.
struct Sorted {
    std::vector<unsigned> keys;
    std::vector<int> values;
};
Sorted reference_sort(const std::vector<unsigned>& keys, const std::vector<int>& values, int begin, int end) {
    const unsigned long long mask = (1ull << (end - begin)) - 1;
    std::vector<size_t> order(keys.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return ((keys[a] >> begin) & mask) < ((keys[b] >> begin) & mask); });
    Sorted s;
    for (size_t i : order) {
        s.keys.push_back(keys[i]);
        s.values.push_back(values[i]);
    }
    return s;
}

size_t query(int n, int begin, int end) {
    size_t bytes = 0;
    REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const unsigned*)nullptr, (unsigned*)nullptr,
                                            (const int*)nullptr, (int*)nullptr, n, begin, end) == cudaSuccess);
    return bytes;
}

// Keys with many repeats in the sorted bits, and random bits outside them (which must not count but
// must come out unchanged); values are distinct, so any instability shows.
std::vector<unsigned> random_keys(size_t n, int begin, int end, Rng& rng) {
    const int bits = end - begin;
    const uint64_t distinct = std::min<uint64_t>(bits ? 1ull << bits : 1, std::max<size_t>(n / 4, 1));
    std::vector<unsigned> keys(n);
    for (unsigned& k : keys) {
        unsigned sorted_bits = (unsigned)rng.below(distinct);
        if (bits >= 2 && rng.uniform() < 0.1) sorted_bits = (unsigned)((1ull << bits) - 1);  // the top digit
        const unsigned outside = (unsigned)rng.next_u64();
        const unsigned mask = bits == 32 ? ~0u : (unsigned)(((1ull << bits) - 1) << begin);
        k = (outside & ~mask) | ((sorted_bits << begin) & mask);
    }
    return keys;
}

std::vector<int> distinct_values(size_t n, Rng& rng) {
    std::vector<int> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (int)(i * 7919 % 1000003) - 500000 + (int)rng.below(3) * 1000003;
    return v;
}

}  // namespace

TEST_CASE("SortPairs: stable on the bit range, as std::stable_sort") {
    Rng rng(2211);
    struct Bits { int begin, end; };
    // Whole keys (4 passes), one partial digit, two and a half digits, a range starting mid-key, one
    // digit exactly, an empty range (a copy), the top bit alone.
    const Bits ranges[] = {{0, 32}, {0, 7}, {0, 17}, {4, 20}, {8, 16}, {3, 3}, {31, 32}, {0, 1}};
    for (const int n : {1, 2, 257, 5000})
        for (const Bits& r : ranges) {
            INFO("n " << n << " bits [" << r.begin << ", " << r.end << ")");
            const std::vector<unsigned> keys = random_keys(n, r.begin, r.end, rng);
            const std::vector<int> values = distinct_values(n, rng);
            Device<unsigned> keys_in(keys), keys_out(n);
            Device<int> values_in(values), values_out(n);
            keys_out.poison();
            values_out.poison();
            size_t bytes = query(n, r.begin, r.end);
            Device<unsigned char> temp(bytes);
            temp.poison();
            REQUIRE(cub::DeviceRadixSort::SortPairs(temp.ptr, bytes, keys_in.ptr, keys_out.ptr, values_in.ptr,
                                                    values_out.ptr, n, r.begin, r.end) == cudaSuccess);
            const Sorted ref = reference_sort(keys, values, r.begin, r.end);
            CHECK(keys_out.download() == ref.keys);
            CHECK(values_out.download() == ref.values);
            CHECK(keys_in.download() == keys);  // inputs are not altered
            CHECK(values_in.download() == values);
        }
}

TEST_CASE("SortPairs: the temp-storage query, and too little temp storage") {
    // The query writes a size and does nothing else (null arrays, as embedding.cuh passes); the size
    // grows with the items and the bits; an empty sort needs 1 byte, as CUB's.
    CHECK(query(1000, 0, 32) > 0);
    CHECK(query(1000, 0, 8) > 0);
    CHECK(query(1000, 0, 32) >= query(1000, 0, 17));
    CHECK(query(1000, 0, 17) >= query(1000, 0, 8));
    CHECK(query(100000, 0, 17) > query(1000, 0, 17));
    CHECK(query(1000, 0, 17) > query(999, 0, 17) - 1);
    CHECK(query(0, 0, 32) == 1);
    CHECK(query(10, 5, 5) == 1);
    // Multi-pass sorts hold two N-item buffers (keys and values): at least 8 bytes an item here.
    CHECK(query(100000, 0, 17) >= 800000);

    Rng rng(2212);
    const int n = 3000;
    const std::vector<unsigned> keys = random_keys(n, 0, 20, rng);
    const std::vector<int> values = distinct_values(n, rng);
    Device<unsigned> keys_in(keys), keys_out(n);
    Device<int> values_in(values), values_out(n);
    keys_out.poison();
    values_out.poison();
    const size_t needed = query(n, 0, 20);
    Device<unsigned char> temp(needed);
    size_t short_bytes = needed - 1;
    CHECK(cub::DeviceRadixSort::SortPairs(temp.ptr, short_bytes, keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr,
                                          n, 0, 20) == cudaErrorInvalidValue);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(keys_out.download() == std::vector<unsigned>(n, 0xFFFFFFFFu));  // nothing was sorted
    CHECK(values_out.download() == std::vector<int>(n, -1));
    size_t bytes = needed;
    CHECK(cub::DeviceRadixSort::SortPairs(temp.ptr, bytes, keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, n,
                                          0, 20) == cudaSuccess);
    CHECK(values_out.download() == reference_sort(keys, values, 0, 20).values);
}

TEST_CASE("SortPairs is queued on its stream and uses its temp storage") {
    Rng rng(2213);
    const int n = 600;
    const std::vector<unsigned> keys = random_keys(n, 0, 32, rng);
    const std::vector<int> values = distinct_values(n, rng);
    Device<unsigned> keys_in(keys), keys_out(n);
    Device<int> values_in(values), values_out(n);
    keys_out.poison();
    values_out.poison();
    size_t bytes = query(n, 0, 32);
    Device<unsigned char> temp(bytes);
    REQUIRE(cudaMemset(temp.ptr, 0, bytes) == cudaSuccess);
    cudaStream_t stream;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cub::DeviceRadixSort::SortPairs(temp.ptr, bytes, keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, n,
                                            0, 32, stream) == cudaSuccess);
    // Not run yet: the outputs (host-addressable in the emulation) still hold poison.
    std::vector<int> before(n);
    memcpy(before.data(), values_out.ptr, n * sizeof(int));
    CHECK(before == std::vector<int>(n, -1));
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const Sorted ref = reference_sort(keys, values, 0, 32);
    CHECK(keys_out.download() == ref.keys);
    CHECK(values_out.download() == ref.values);
    const std::vector<unsigned char> scratch = temp.download();
    CHECK(std::count(scratch.begin(), scratch.end(), 0) < (long)bytes / 2);  // written over
    REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("SortPairs as kernels/embedding.cuh calls it: token ids, a workspace sized for 32 bits") {
    // embedding_backward_workspace_ints(N, C) sizes the scratch for 32 key bits and N positions; the sort
    // then asks for key_bits (the bits of V - 1) and may run on fewer positions.
    Rng rng(2214);
    const int N_max = 4099;
    const size_t workspace_bytes = query(N_max, 0, 32);
    Device<unsigned char> scratch(workspace_bytes);
    for (const int V : {1, 5, 50, 1000, 65536}) {
        for (const int N : {N_max, 257}) {
            int key_bits = 1;
            while (key_bits < 31 && (1L << key_bits) < V) key_bits++;
            INFO("V " << V << " N " << N << " key_bits " << key_bits);
            std::vector<unsigned> tokens(N);
            for (unsigned& t : tokens) t = (unsigned)rng.below(V);
            tokens[N / 2] = V - 1;
            std::vector<int> positions(N);
            std::iota(positions.begin(), positions.end(), 0);
            Device<unsigned> d_tokens(tokens), sorted(N);
            Device<int> d_positions(positions), sorted_positions(N);
            size_t bytes = query(N, 0, key_bits);
            REQUIRE(bytes <= workspace_bytes);
            REQUIRE(cub::DeviceRadixSort::SortPairs(scratch.ptr, bytes, d_tokens.ptr, sorted.ptr, d_positions.ptr,
                                                    sorted_positions.ptr, N, 0, key_bits, (cudaStream_t)0) == cudaSuccess);
            const Sorted ref = reference_sort(tokens, positions, 0, 32);
            CHECK(sorted.download() == ref.keys);
            CHECK(sorted_positions.download() == ref.values);
        }
    }
}

TEST_CASE("SortPairs refuses what a GPU would fault on or sort wrongly") {
    const int n = 64;
    Device<unsigned> keys_in(std::vector<unsigned>(n, 3)), keys_out(n);
    Device<int> values_in(std::vector<int>(n, 1)), values_out(n);
    size_t bytes = query(n, 0, 32);
    Device<unsigned char> temp(bytes);
    std::vector<unsigned> host_keys(n, 1);
    auto sort = [&](const unsigned* ki, unsigned* ko, const int* vi, int* vo, int begin, int end) {
        size_t b = bytes;
        return cub::DeviceRadixSort::SortPairs(temp.ptr, b, ki, ko, vi, vo, n, begin, end);
    };
    CHECK(sort(host_keys.data(), keys_out.ptr, values_in.ptr, values_out.ptr, 0, 32) == cudaErrorInvalidValue);
    CHECK(sort(keys_in.ptr, keys_in.ptr, values_in.ptr, values_out.ptr, 0, 32) == cudaErrorInvalidValue);  // in place
    CHECK(sort(keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr + 1, 0, 32) == cudaErrorInvalidValue);  // past the end
    CHECK(sort(keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, 0, 33) == cudaErrorInvalidValue);
    CHECK(sort(keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, 9, 8) == cudaErrorInvalidValue);
    size_t b = bytes;
    CHECK(cub::DeviceRadixSort::SortPairs(temp.ptr, b, keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, -1) ==
          cudaErrorInvalidValue);
    CHECK(sort(keys_in.ptr, keys_out.ptr, values_in.ptr, values_out.ptr, 0, 32) == cudaSuccess);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(keys_out.download() == std::vector<unsigned>(n, 3));
}
