// CUB's device radix sort on the CPU: cub::DeviceRadixSort::SortPairs, the one call the project
// makes (kernels/embedding.cuh: unsigned keys, int values, a bit range, on a stream), shadowing
// <cub/device/device_radix_sort.cuh>, whose real header does not compile under g++. Nothing else of
// CUB is here: not SortKeys, the Descending sorts, the DoubleBuffer overloads, signed or
// floating-point keys (they would need CUB's bit twiddling), segmented sorts. A new use fails to
// compile instead of running unemulated.
//
// Semantics (CUB 3.0's documentation of SortPairs and its dispatch, cub/device/dispatch/dispatch_radix_sort.cuh):
//   - d_temp_storage == nullptr: only writes the temp storage size needed to temp_storage_bytes; no
//     work is done (so the query is fine during a stream capture).
//   - otherwise, temp_storage_bytes below that size: cudaErrorInvalidValue (util_temporary_storage.cuh,
//     AliasTemporaries; CUB 3.0's onesweep path ignores that check and would overrun: stricter here).
//   - a stable LSD radix sort of the keys on bits [begin_bit, end_bit), 8 bits per pass from begin_bit,
//     values carried along; keys_out holds the whole keys. Inputs are not altered; the temp storage
//     holds the passes' intermediate keys and values, as CUB's does, and the rest of it is poisoned.
//   - queued on the stream (emu::submit): it runs when the host waits, like a kernel.
// The size is CUB's onesweep formula (Policy800: 8-bit digits, tiles of 384 x 21 items): per-pass
// digit bins, a look-back area per tile, two N-item buffers for keys and values when there is more
// than one pass, counters; each rounded to 256 bytes, plus 255 for aligning the start. It grows
// with num_items and with the number of bits. Empty sorts (num_items 0, or begin_bit == end_bit,
// a plain copy) need 1 byte, as in CUB.
// Checked more strictly than on a GPU (cudaErrorInvalidValue and a line on stderr, where a GPU would
// fault or sort garbage): negative num_items, a bit range outside the key, arrays or temp storage
// outside device allocations (emu::is_device_range), overlapping arrays ("In-place operations are
// not supported. There must be no overlap between any of the provided ranges").
#pragma once
#include <cuda_runtime_api.h>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>
#include "../../../stream.h"

namespace cub {

struct DeviceRadixSort {
    template <typename KeyT, typename ValueT, typename NumItemsT>
    static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                                 KeyT* d_keys_out, const ValueT* d_values_in, ValueT* d_values_out, NumItemsT num_items,
                                 int begin_bit = 0, int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
        static_assert(std::is_integral<KeyT>::value && std::is_unsigned<KeyT>::value,
                      "emulated cub::DeviceRadixSort sorts unsigned integer keys only");
        static_assert(std::is_trivially_copyable<ValueT>::value, "values are copied as bytes");
        static_assert(std::is_integral<NumItemsT>::value, "num_items is an integer");
        const char* f = "cub::DeviceRadixSort::SortPairs";
        if ((long long)num_items < 0 || begin_bit < 0 || begin_bit > end_bit || end_bit > (int)sizeof(KeyT) * 8)
            return refuse(f, "num_items %lld, bits [%d, %d) of a %d-bit key", (long long)num_items, begin_bit, end_bit,
                          (int)sizeof(KeyT) * 8);
        const size_t n = (size_t)num_items;
        const Plan plan = make_plan(n, begin_bit, end_bit, sizeof(KeyT), sizeof(ValueT));
        if (!d_temp_storage) {
            temp_storage_bytes = plan.bytes;
            return cudaSuccess;
        }
        if (temp_storage_bytes < plan.bytes)
            return refuse(f, "temp storage of %zu bytes, %zu needed", temp_storage_bytes, plan.bytes);
        if (n == 0) return cudaSuccess;
        // The aligned start of the temp storage, and its extra key and value buffers.
        char* temp = (char*)(((uintptr_t)d_temp_storage + ALIGN - 1) / ALIGN * ALIGN);
        KeyT* keys_alt = plan.passes > 1 ? (KeyT*)(temp + plan.keys_alt_offset) : nullptr;
        ValueT* values_alt = plan.passes > 1 ? (ValueT*)(temp + plan.values_alt_offset) : nullptr;
        const struct { const char* name; const void* p; size_t bytes; } ranges[] = {
            {"keys in", d_keys_in, n * sizeof(KeyT)},       {"keys out", d_keys_out, n * sizeof(KeyT)},
            {"values in", d_values_in, n * sizeof(ValueT)}, {"values out", d_values_out, n * sizeof(ValueT)},
            {"temp storage", d_temp_storage, plan.bytes}};
        for (const auto& r : ranges)
            if (!emu::is_device_range(r.p, r.bytes))
                return refuse(f, "%s [%p, +%zu bytes) is not inside one device allocation", r.name, r.p, r.bytes);
        for (size_t i = 0; i < 5; i++)
            for (size_t j = i + 1; j < 5; j++)
                if (overlap(ranges[i].p, ranges[i].bytes, ranges[j].p, ranges[j].bytes))
                    return refuse(f, "%s and %s overlap", ranges[i].name, ranges[j].name);
        const size_t poison_bytes = plan.bytes >= ALIGN ? plan.bytes - (ALIGN - 1) : 0;  // the aligned allocations
        auto work = [=]() {
            memset(temp, 0xFF, poison_bytes);  // scratch: what CUB leaves there is no one's to read
            sort_passes(plan.passes, begin_bit, end_bit, n, d_keys_in, d_values_in, d_keys_out, d_values_out, keys_alt,
                        values_alt);
        };
        const cudaError_t err = emu::submit(stream, f, work);
        return err == cudaSuccess ? cudaSuccess : emu::set_last_error(err);
    }

private:
    static constexpr size_t ALIGN = 256;      // AliasTemporaries' alignment of each temporary
    static constexpr int RADIX_BITS = 8;      // ONESWEEP_RADIX_BITS
    static constexpr size_t TILE_ITEMS = 384 * 21;  // OnesweepPolicy: 384 threads x 21 items

    struct Plan {
        int passes;
        size_t bytes, keys_alt_offset, values_alt_offset;
    };

    static size_t round_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

    // CUB's InvokeOnesweep sizes, laid out as AliasTemporaries lays them out.
    static Plan make_plan(size_t n, int begin_bit, int end_bit, size_t key_bytes, size_t value_bytes) {
        Plan plan{(end_bit - begin_bit + RADIX_BITS - 1) / RADIX_BITS, 1, 0, 0};
        if (n == 0 || plan.passes == 0) return plan;
        const size_t portions = 1 + (n - 1) / ((1u << 28) - 1);
        const size_t blocks = (n < (1u << 28) ? n + TILE_ITEMS - 1 : (1u << 28)) / TILE_ITEMS;
        const bool extra = plan.passes > 1;
        const size_t sizes[] = {portions * plan.passes * (1u << RADIX_BITS) * 4,  // bins
                                blocks * (1u << RADIX_BITS) * 4,                  // look-back
                                extra ? n * key_bytes : 0,                        // extra key buffer
                                extra ? n * value_bytes : 0,                      // extra value buffer
                                portions * plan.passes * 4};                      // counters
        size_t offset = 0;
        for (int i = 0; i < 5; i++) {
            if (i == 2) plan.keys_alt_offset = offset;
            if (i == 3) plan.values_alt_offset = offset;
            offset += round_up(sizes[i]);
        }
        plan.bytes = offset + ALIGN - 1;
        return plan;
    }

    // One stable counting-sort pass on the digit of `bits` bits at `shift`.
    template <typename KeyT, typename ValueT>
    static void sort_pass(int shift, int bits, size_t n, const KeyT* keys, const ValueT* values, KeyT* keys_out,
                          ValueT* values_out) {
        const KeyT mask = (KeyT)((1u << bits) - 1);
        std::vector<size_t> start((size_t)1 << bits, 0);
        for (size_t i = 0; i < n; i++) start[(keys[i] >> shift) & mask]++;
        size_t sum = 0;
        for (size_t& s : start) {
            const size_t count = s;
            s = sum;
            sum += count;
        }
        for (size_t i = 0; i < n; i++) {
            const size_t to = start[(keys[i] >> shift) & mask]++;
            keys_out[to] = keys[i];
            values_out[to] = values[i];
        }
    }

    // LSD passes from begin_bit, ping-ponging between the temp buffers and the outputs so that the
    // last pass writes the outputs (passes == 0: a copy).
    template <typename KeyT, typename ValueT>
    static void sort_passes(int passes, int begin_bit, int end_bit, size_t n, const KeyT* keys_in,
                            const ValueT* values_in, KeyT* keys_out, ValueT* values_out, KeyT* keys_alt,
                            ValueT* values_alt) {
        if (passes == 0) {
            memmove(keys_out, keys_in, n * sizeof(KeyT));
            memmove(values_out, values_in, n * sizeof(ValueT));
            return;
        }
        const KeyT* from_keys = keys_in;
        const ValueT* from_values = values_in;
        for (int pass = 0; pass < passes; pass++) {
            const bool to_out = (passes - 1 - pass) % 2 == 0;
            KeyT* to_keys = to_out ? keys_out : keys_alt;
            ValueT* to_values = to_out ? values_out : values_alt;
            const int shift = begin_bit + pass * RADIX_BITS;
            const int bits = end_bit - shift < RADIX_BITS ? end_bit - shift : RADIX_BITS;
            sort_pass(shift, bits, n, from_keys, from_values, to_keys, to_values);
            from_keys = to_keys;
            from_values = to_values;
        }
    }

    static bool overlap(const void* x, size_t x_bytes, const void* y, size_t y_bytes) {
        const uintptr_t a = (uintptr_t)x, b = (uintptr_t)y;
        return x_bytes && y_bytes && a < b + y_bytes && b < a + x_bytes;
    }

    __attribute__((format(printf, 2, 3))) static cudaError_t refuse(const char* function, const char* format, ...) {
        fprintf(stderr, "emu CUB: %s: ", function);
        va_list args;
        va_start(args, format);
        vfprintf(stderr, format, args);
        va_end(args);
        fprintf(stderr, " (cudaErrorInvalidValue)\n");
        return cudaErrorInvalidValue;
    }
};

}  // namespace cub
