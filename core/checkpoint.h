// Checkpoints: the only code that reads or writes them, shared by the CPU and GPU trainers.
//
// Format version 3 (little-endian): a 512-byte header of 64 int64 slots, then float32 arrays.
//   slot 0  magic "MIXLNCKP" (8 ASCII bytes)     slot 14  number of stored parameters P
//   slot 1  version, 3                           slot 15  optimizer steps completed
//   slot 2  vocab_size                           slot 16  1 if Adam moments follow, else 0
//   slot 3  max_seq_len                          slot 17-19  data position: epoch, shard, sample
//   slot 4  n_layer                              slot 20  trainer RNG state
//   slot 5  n_head                               slot 21  micro-batch B
//   slot 6  d_model                              slot 22  sequence length T
//   slot 7  d_ffn (the model's F)                slot 23  total batch tokens
//   slot 8  norm scheme (0 Mix-LN, 1 DeepNorm,   slot 24  world size
//           2 the paper code's DeepNorm)
//   slot 9  alpha (IEEE double bits)             slot 25  data seed
//   slot 10 scaled_init   slot 11 scaled_embed   slot 26  optimizer shard files W (0: none)
//   slot 12 rope_theta (double bits)             slot 27  CRC-32 of the file (below)
//   slot 13 norm_eps (double bits)               slot 28  run id (run_dir.h)
//                                                slot 29  steps skipped so far (a non-finite gradient
//                                                         norm; AdamW counts slot 15 - slot 29 updates)
//                                                slots 30-63  0
//   then params[P] (fp32 master weights, in the v3 layout of core/config.h: layer-major, the MLP
//   stored ffn_stored(cfg) wide with zero padding, so P = make_param_layout(cfg).total), then, if
//   slot 16 is 1, Adam's m[P] and v[P] in the same layout.
// Slot 27 is zlib's CRC-32 (core/crc32.h) of the whole file with slot 27's own 8 bytes taken as zero.
// A weights-only checkpoint (scripts/import_hf.py) has zeros in slots 15-29 but for the CRC: -f takes
// it, -r refuses it. Versions 1 and 2 held the parameters in the layout before v3 (tensor-major,
// unpadded): they are refused, and scripts/upgrade_checkpoint.py converts them.
//
// ZeRO-1 on W > 1 ranks: each rank holds the moments of its slices of the parameters only (one slice
// of every gradient bucket, core/distributed.h), so rank r writes them to ckpt_STEP.rankR.bin beside
// ckpt_STEP.bin (optimizer_shard_path), whose slot 16 is then 0 and slot 26 is W. An optimizer shard
// file, version 3 (little-endian):
//   a 128-byte header of 16 int64 slots
//   slot 0  magic "MIXLNOPT"                     slot 5  rank r
//   slot 1  version, 3                           slot 6  K: the number of parameter ranges
//   slot 2  parameter count P                    slot 7  n: the parameters in them
//   slot 3  optimizer steps completed            slot 8  CRC-32 of the file, slot 8 taken as zero
//   slot 4  world size W                         slot 9  run id; slots 10-15  0
//   then K ranges, each two int64: begin, end (parameters [begin, end) of the layout; ascending, not
//   empty, not overlapping, inside [0, P), n parameters in all), then Adam's m[n] and v[n] (fp32):
//   the moments of those parameters in layout order.
// Versions 1 and 2 (one range per rank, of the parameter layout before checkpoint version 3) are
// refused with a message.
// A checkpoint is complete when ckpt_STEP.bin and the W shard files its slot 26 promises all exist;
// list_checkpoints (and so resuming from a directory) skips incomplete ones.
//
// Readers check every header field's range and the file's size against the header before they
// allocate anything, then the CRC, then that the MLP's padding is zero; each error names the file and
// what is wrong.
//
// Every file is written to PATH.tmp, flushed and fsync'ed, then renamed over PATH: a crash or a full
// disk leaves either the old file or the new one, never a torn one.
#pragma once
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>
#include "config.h"
#include "crc32.h"
#include "distributed.h"
#include "../dataloader.h"

constexpr int CHECKPOINT_VERSION = 3;
constexpr int CHECKPOINT_HEADER_SLOTS = 64;
constexpr int CHECKPOINT_CRC_SLOT = 27, CHECKPOINT_RUN_ID_SLOT = 28, CHECKPOINT_SKIPPED_SLOT = 29;
constexpr int OPTIMIZER_SHARD_VERSION = 3;
constexpr int OPTIMIZER_SHARD_HEADER_SLOTS = 16;
constexpr int OPTIMIZER_SHARD_CRC_SLOT = 8, OPTIMIZER_SHARD_RUN_ID_SLOT = 9;
constexpr int64_t MAX_WORLD_SIZE = 1 << 20;

// Everything besides weights and moments that a bit-identical resume needs.
struct TrainState {
    int64_t step = 0;
    DataPosition data;
    uint64_t rng_state = 0;
    int64_t micro_batch = 0, seq_len = 0, total_batch = 0, world_size = 1;
    uint64_t data_seed = 0;
    int64_t optimizer_shards = 0;  // W: Adam's moments are in W optimizer shard files (ZeRO-1), not here
    uint64_t run_id = 0;           // the run that wrote it (run_dir.h); 0: unknown (weights only)
    int64_t skipped_steps = 0;     // of the steps, those whose update was skipped (a non-finite gradient norm)
};

struct Checkpoint {
    ModelConfig cfg;
    TrainState state;
    std::vector<float> params, m, v;   // m and v empty if the file has no optimizer state
};

// One rank's part of Adam's moments under ZeRO-1: the parameters in ranges, of n_params.
struct OptimizerShard {
    int64_t n_params = 0, step = 0, world_size = 1, rank = 0;
    std::vector<ParamRange> ranges;  // ascending
    std::vector<float> m, v;         // the moments of the parameters in ranges, in order
    uint64_t run_id = 0;
};

static inline int64_t double_bits(double x) { int64_t i; memcpy(&i, &x, 8); return i; }
static inline double bits_double(int64_t i) { double x; memcpy(&x, &i, 8); return x; }

// Writes path through PATH.tmp: write(f) returns false if a write failed; the file is then flushed,
// fsync'ed and renamed over path. On any failure the temporary file is removed, path is untouched,
// and the error names the file and the reason.
inline void write_file_atomically(const std::string& path, const std::function<bool(FILE*)>& write) {
    const std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) throw std::runtime_error("checkpoint '" + tmp + "': cannot create: " + strerror(errno));
    const bool ok = write(f) && fflush(f) == 0 && fsync(fileno(f)) == 0;
    const int err = errno;
    if (fclose(f) != 0 || !ok) {
        unlink(tmp.c_str());
        throw std::runtime_error("checkpoint '" + path + "': write failed (" + strerror(ok ? errno : err) +
                                 "); the previous checkpoints are untouched");
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
        unlink(tmp.c_str());
        throw std::runtime_error("checkpoint '" + path + "': rename failed: " + strerror(errno));
    }
}

// n items of size bytes; nothing to write is success (an empty vector's data() may be null, which
// fwrite must not be given).
static inline bool write_items(FILE* f, const void* x, size_t size, size_t n) { return n == 0 || fwrite(x, size, n, f) == n; }
static inline bool write_floats(FILE* f, const float* x, int64_t n) { return write_items(f, x, sizeof(float), (size_t)n); }

// The CRC-32 of a header (its crc_slot read as zero) followed by float arrays.
inline uint32_t file_crc(const int64_t* header, int slots, int crc_slot, std::initializer_list<std::pair<const float*, int64_t>> arrays) {
    std::vector<int64_t> h(header, header + slots);
    h[crc_slot] = 0;
    uint32_t crc = crc32_update(0, h.data(), h.size() * sizeof(int64_t));
    for (const auto& a : arrays) if (a.first) crc = crc32_update(crc, a.first, (size_t)a.second * sizeof(float));
    return crc;
}

inline void save_checkpoint(const std::string& path, const ModelConfig& cfg, const TrainState& st,
                            const float* params, const float* m, const float* v, int64_t n_params) {
    int64_t h[CHECKPOINT_HEADER_SLOTS] = {0};
    const bool has_moments = m && v;
    memcpy(&h[0], "MIXLNCKP", 8);
    h[1] = CHECKPOINT_VERSION;
    h[2] = cfg.vocab_size; h[3] = cfg.max_seq_len; h[4] = cfg.n_layer; h[5] = cfg.n_head;
    h[6] = cfg.d_model; h[7] = cfg.d_ffn; h[8] = (int64_t)cfg.norm; h[9] = double_bits(cfg.alpha);
    h[10] = cfg.scaled_init; h[11] = cfg.scaled_embed; h[12] = double_bits(cfg.rope_theta);
    h[13] = double_bits(cfg.norm_eps); h[14] = n_params; h[15] = st.step; h[16] = has_moments ? 1 : 0;
    h[17] = st.data.epoch; h[18] = st.data.shard; h[19] = st.data.sample; h[20] = (int64_t)st.rng_state;
    h[21] = st.micro_batch; h[22] = st.seq_len; h[23] = st.total_batch; h[24] = st.world_size;
    h[25] = (int64_t)st.data_seed; h[26] = st.optimizer_shards; h[CHECKPOINT_RUN_ID_SLOT] = (int64_t)st.run_id;
    h[CHECKPOINT_SKIPPED_SLOT] = st.skipped_steps;
    h[CHECKPOINT_CRC_SLOT] = file_crc(h, CHECKPOINT_HEADER_SLOTS, CHECKPOINT_CRC_SLOT,
                                      {{params, n_params}, {has_moments ? m : nullptr, n_params}, {has_moments ? v : nullptr, n_params}});
    write_file_atomically(path, [&](FILE* f) {
        return fwrite(h, sizeof(h), 1, f) == 1 && write_floats(f, params, n_params) &&
               (!has_moments || (write_floats(f, m, n_params) && write_floats(f, v, n_params)));
    });
}

// An open file with its size; closes itself.
struct InputFile {
    FILE* f = nullptr;
    int64_t bytes = 0;
    InputFile(const std::string& path, const std::function<std::runtime_error(const std::string&)>& fail) {
        f = fopen(path.c_str(), "rb");
        struct stat st;
        if (!f || fstat(fileno(f), &st) != 0) throw fail(std::string("cannot open: ") + strerror(errno));
        if (!S_ISREG(st.st_mode)) { fclose(f); throw fail("not a regular file"); }
        bytes = st.st_size;
    }
    ~InputFile() { if (f) fclose(f); }
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;
    bool read(void* dst, size_t elem, size_t n) { return n == 0 || fread(dst, elem, n, f) == n; }  // dst may be null if n is 0
};

// header bytes + arrays * n floats, or -1 if it overflows.
inline int64_t expected_file_bytes(int64_t header_bytes, int64_t arrays, int64_t n) {
    int64_t bytes;
    if (n < 0 || __builtin_mul_overflow(n, arrays * (int64_t)sizeof(float), &bytes) ||
        __builtin_add_overflow(bytes, header_bytes, &bytes))
        return -1;
    return bytes;
}

inline std::string size_problem(int64_t expected, int64_t actual) {
    if (expected < 0) return "the header's sizes overflow 64 bits (corrupt header)";
    if (actual < expected)
        return "truncated: the header promises " + std::to_string(expected) + " bytes but the file has " + std::to_string(actual);
    if (actual > expected)
        return "unexpected bytes after the data: the header promises " + std::to_string(expected) + " bytes, the file has " +
               std::to_string(actual) + " (corrupt or not a checkpoint)";
    return "";
}

// What is wrong with a checkpoint header (version 3), or "" if every field is in range. The model
// config goes to *cfg.
inline std::string checkpoint_header_problem(const int64_t* h, ModelConfig* cfg) {
    if (memcmp(&h[0], "MIXLNCKP", 8) != 0) return "bad magic: not a mixln checkpoint";
    if (h[1] == 1 || h[1] == 2)
        return "version " + std::to_string(h[1]) + ": the parameter layout changed in version 3 (layer-major, padded MLP); "
               "convert the file with scripts/upgrade_checkpoint.py OLD NEW";
    if (h[1] != CHECKPOINT_VERSION) return "unsupported version " + std::to_string(h[1]) + " (this build reads 3)";
    for (int i = 2; i <= 7; i++)
        if (h[i] < 0 || h[i] > INT_MAX) return "slot " + std::to_string(i) + " (a model size) is " + std::to_string(h[i]) + ", outside [0, 2^31)";
    if (!norm_scheme_name(h[8])) return "unknown norm scheme " + std::to_string(h[8]) + " in slot 8 (0, 1 or 2)";
    if ((h[10] != 0 && h[10] != 1) || (h[11] != 0 && h[11] != 1)) return "scaled_init / scaled_embed must be 0 or 1";
    ModelConfig& c = *cfg;
    c.vocab_size = (int)h[2]; c.max_seq_len = (int)h[3]; c.n_layer = (int)h[4]; c.n_head = (int)h[5];
    c.d_model = (int)h[6]; c.d_ffn = (int)h[7]; c.norm = (NormScheme)h[8]; c.alpha = bits_double(h[9]);
    c.scaled_init = h[10] != 0; c.scaled_embed = h[11] != 0; c.rope_theta = bits_double(h[12]); c.norm_eps = bits_double(h[13]);
    const std::string model = model_config_problem(c);
    if (!model.empty()) return model;
    try {
        if (h[14] != make_param_layout(c).total) return "parameter count " + std::to_string(h[14]) + " does not match its model config (corrupt header)";
    } catch (const std::exception& e) {
        return e.what();
    }
    if (h[15] < 0 || h[15] > INT_MAX) return "step " + std::to_string(h[15]) + " is outside [0, 2^31)";
    if (h[16] != 0 && h[16] != 1) return "slot 16 (Adam moments follow) must be 0 or 1, not " + std::to_string(h[16]);
    for (int i = 17; i <= 19; i++) if (h[i] < 0) return "data position slot " + std::to_string(i) + " is negative";
    for (int i = 21; i <= 22; i++)
        if (h[i] < 0 || h[i] > INT_MAX) return "slot " + std::to_string(i) + " (-b / -t) is " + std::to_string(h[i]) + ", outside [0, 2^31)";
    if (h[23] < 0) return "total batch " + std::to_string(h[23]) + " is negative";
    if (h[24] < 0 || h[24] > MAX_WORLD_SIZE) return "world size " + std::to_string(h[24]) + " is outside [0, 2^20]";
    if (h[26] != 0 && (h[26] != h[24] || h[16] != 0))
        return "optimizer shard count " + std::to_string(h[26]) + " must be 0 or the world size, without moments in the file";
    if (h[CHECKPOINT_CRC_SLOT] < 0 || h[CHECKPOINT_CRC_SLOT] > 0xFFFFFFFFll) return "CRC slot 27 is not a 32-bit value";
    if (h[CHECKPOINT_SKIPPED_SLOT] < 0 || h[CHECKPOINT_SKIPPED_SLOT] > h[15])
        return "slot 29 (skipped steps) is " + std::to_string(h[CHECKPOINT_SKIPPED_SLOT]) + ", outside [0, the step " + std::to_string(h[15]) + "]";
    for (int i = CHECKPOINT_SKIPPED_SLOT + 1; i < CHECKPOINT_HEADER_SLOTS; i++)
        if (h[i] != 0) return "slot " + std::to_string(i) + " is not 0 (written by a newer version, or corrupt)";
    return "";
}

inline Checkpoint load_checkpoint(const std::string& path) {
    auto fail = [&](const std::string& what) { return std::runtime_error("checkpoint '" + path + "': " + what); };
    InputFile in(path, fail);
    int64_t h[CHECKPOINT_HEADER_SLOTS];
    if (in.bytes < (int64_t)sizeof(h) || !in.read(h, sizeof(h), 1)) throw fail("truncated header: " + std::to_string(in.bytes) + " bytes, less than 512");
    Checkpoint ck;
    const std::string bad = checkpoint_header_problem(h, &ck.cfg);
    if (!bad.empty()) throw fail(bad);
    const int64_t n = h[14];
    const bool has_opt = h[16] != 0;
    const std::string size = size_problem(expected_file_bytes(sizeof(h), has_opt ? 3 : 1, n), in.bytes);
    if (!size.empty()) throw fail(size);
    TrainState& s = ck.state;
    s.step = h[15]; s.data = DataPosition{(uint64_t)h[17], (uint64_t)h[18], (uint64_t)h[19]};
    s.rng_state = (uint64_t)h[20]; s.micro_batch = h[21]; s.seq_len = h[22]; s.total_batch = h[23];
    s.world_size = h[24]; s.data_seed = (uint64_t)h[25]; s.optimizer_shards = h[26]; s.run_id = (uint64_t)h[CHECKPOINT_RUN_ID_SLOT];
    s.skipped_steps = h[CHECKPOINT_SKIPPED_SLOT];
    ck.params.resize(n);
    bool ok = in.read(ck.params.data(), sizeof(float), n);
    if (ok && has_opt) {
        ck.m.resize(n); ck.v.resize(n);
        ok = in.read(ck.m.data(), sizeof(float), n) && in.read(ck.v.data(), sizeof(float), n);
    }
    if (!ok) throw fail("read failed (file changed or truncated while reading)");
    const uint32_t crc = file_crc(h, CHECKPOINT_HEADER_SLOTS, CHECKPOINT_CRC_SLOT,
                                  {{ck.params.data(), n}, {has_opt ? ck.m.data() : nullptr, n}, {has_opt ? ck.v.data() : nullptr, n}});
    if (crc != (uint64_t)h[CHECKPOINT_CRC_SLOT]) {
        char msg[128];
        snprintf(msg, sizeof msg, "checksum mismatch (CRC-32 stored %08llx, computed %08x): the file is corrupt",
                 (unsigned long long)h[CHECKPOINT_CRC_SLOT], crc);
        throw fail(msg);
    }
    const ParamLayout layout = make_param_layout(ck.cfg);
    for (const std::vector<float>* x : {&ck.params, &ck.m, &ck.v}) {
        const int l = x->empty() ? -1 : first_layer_with_nonzero_ffn_padding(x->data(), ck.cfg, layout);
        if (l >= 0)
            throw fail("layer " + std::to_string(l) + "'s MLP padding (units " + std::to_string(ck.cfg.d_ffn) + ".." +
                       std::to_string(ffn_stored(ck.cfg) - 1) + " of gate, up and down) is not zero (corrupt file)");
    }
    return ck;
}

// Rank r's optimizer shard file of the checkpoint at path: ckpt_STEP.bin -> ckpt_STEP.rankR.bin.
inline std::string optimizer_shard_path(const std::string& checkpoint, int64_t rank) {
    const std::string stem = checkpoint.size() > 4 && checkpoint.substr(checkpoint.size() - 4) == ".bin"
                                 ? checkpoint.substr(0, checkpoint.size() - 4) : checkpoint;
    return stem + ".rank" + std::to_string(rank) + ".bin";
}

// The CRC-32 of an optimizer shard file: its header (the CRC slot read as zero), ranges, m and v.
inline uint32_t optimizer_shard_crc(const int64_t* h, const std::vector<int64_t>& ranges, const OptimizerShard& s) {
    uint32_t crc = file_crc(h, OPTIMIZER_SHARD_HEADER_SLOTS, OPTIMIZER_SHARD_CRC_SLOT, {});
    crc = crc32_update(crc, ranges.data(), ranges.size() * sizeof(int64_t));
    crc = crc32_update(crc, s.m.data(), s.m.size() * sizeof(float));
    return crc32_update(crc, s.v.data(), s.v.size() * sizeof(float));
}

inline void save_optimizer_shard(const std::string& path, const OptimizerShard& s) {
    std::vector<int64_t> ranges;
    for (const ParamRange& r : s.ranges) ranges.insert(ranges.end(), {r.begin, r.end});
    const int64_t n = range_total(s.ranges);
    if ((int64_t)s.m.size() != n || (int64_t)s.v.size() != n)
        throw std::runtime_error("checkpoint '" + path + "': the moments do not cover the shard's parameter ranges");
    int64_t h[OPTIMIZER_SHARD_HEADER_SLOTS] = {0};
    memcpy(&h[0], "MIXLNOPT", 8);
    h[1] = OPTIMIZER_SHARD_VERSION; h[2] = s.n_params; h[3] = s.step; h[4] = s.world_size; h[5] = s.rank;
    h[6] = (int64_t)s.ranges.size(); h[7] = n; h[OPTIMIZER_SHARD_RUN_ID_SLOT] = (int64_t)s.run_id;
    h[OPTIMIZER_SHARD_CRC_SLOT] = optimizer_shard_crc(h, ranges, s);
    write_file_atomically(path, [&](FILE* f) {
        return fwrite(h, sizeof(h), 1, f) == 1 && write_items(f, ranges.data(), sizeof(int64_t), ranges.size()) &&
               write_floats(f, s.m.data(), n) && write_floats(f, s.v.data(), n);
    });
}

inline OptimizerShard load_optimizer_shard(const std::string& path) {
    auto fail = [&](const std::string& what) { return std::runtime_error("checkpoint '" + path + "': " + what); };
    InputFile in(path, fail);
    int64_t h[OPTIMIZER_SHARD_HEADER_SLOTS] = {0};
    if (in.bytes < (int64_t)sizeof(h) || !in.read(h, sizeof(h), 1)) throw fail("truncated header");
    if (memcmp(&h[0], "MIXLNOPT", 8) != 0) throw fail("bad magic: not a mixln optimizer shard");
    if (h[1] == 1 || h[1] == 2)
        throw fail("optimizer shard version " + std::to_string(h[1]) + " (one slice of the whole parameter array per rank, in the "
                   "layout before checkpoint version 3) is no longer read: this build's ZeRO-1 owns a slice of every layer's "
                   "bucket (version 3); scripts/upgrade_checkpoint.py --weights-only converts its checkpoint's weights, for -f");
    if (h[1] != OPTIMIZER_SHARD_VERSION) throw fail("unsupported version " + std::to_string(h[1]) + " (this build reads 3)");
    OptimizerShard s;
    s.n_params = h[2]; s.step = h[3]; s.world_size = h[4]; s.rank = h[5];
    s.run_id = (uint64_t)h[OPTIMIZER_SHARD_RUN_ID_SLOT];
    const int64_t num_ranges = h[6], n = h[7];
    if (s.n_params < 1 || s.step < 0 || s.step > INT_MAX) throw fail("parameter count or step out of range (corrupt header)");
    if (s.world_size < 1 || s.world_size > MAX_WORLD_SIZE || s.rank < 0 || s.rank >= s.world_size) throw fail("rank or world size out of range (corrupt header)");
    if (num_ranges < 0 || num_ranges > INT_MAX || n < 0 || n > s.n_params) throw fail("range count or parameter count out of range (corrupt header)");
    if (h[OPTIMIZER_SHARD_CRC_SLOT] < 0 || h[OPTIMIZER_SHARD_CRC_SLOT] > 0xFFFFFFFFll) throw fail("CRC slot 8 is not a 32-bit value");
    for (int i = OPTIMIZER_SHARD_RUN_ID_SLOT + 1; i < OPTIMIZER_SHARD_HEADER_SLOTS; i++)
        if (h[i] != 0) throw fail("slot " + std::to_string(i) + " is not 0");
    const std::string size = size_problem(expected_file_bytes(sizeof(h) + 2 * sizeof(int64_t) * num_ranges, 2, n), in.bytes);
    if (!size.empty()) throw fail(size);
    std::vector<int64_t> ranges(2 * num_ranges);
    if (!in.read(ranges.data(), sizeof(int64_t), ranges.size())) throw fail("read failed (file changed or truncated while reading)");
    int64_t covered = 0;
    for (int64_t i = 0; i < num_ranges; i++) {
        const int64_t begin = ranges[2 * i], end = ranges[2 * i + 1];
        if (begin < (i ? ranges[2 * i - 1] : 0) || begin >= end || end > s.n_params)
            throw fail("parameter range " + std::to_string(i) + " [" + std::to_string(begin) + ", " + std::to_string(end) +
                       ") is empty, out of order or outside [0, P) (corrupt file)");
        covered += end - begin;
        s.ranges.push_back(ParamRange{begin, end});
    }
    if (covered != n) throw fail("the ranges hold " + std::to_string(covered) + " parameters, the header says " + std::to_string(n) + " (corrupt file)");
    s.m.resize(n); s.v.resize(n);
    if (!in.read(s.m.data(), sizeof(float), n) || !in.read(s.v.data(), sizeof(float), n))
        throw fail("read failed (file changed or truncated while reading)");
    if (optimizer_shard_crc(h, ranges, s) != (uint64_t)h[OPTIMIZER_SHARD_CRC_SLOT]) throw fail("checksum mismatch: the file is corrupt");
    return s;
}

// Checkpoint files are DIR/ckpt_STEP.bin with STEP zero-padded to 8 digits, so names sort by step.
inline std::string checkpoint_path(const std::string& dir, int64_t step) {
    char name[32];
    snprintf(name, sizeof(name), "ckpt_%08lld.bin", (long long)step);
    return dir + "/" + name;
}

// A checkpoint's header, if it reads and every field is in range (the payload unchecked).
inline bool read_checkpoint_header(const std::string& path, int64_t* h) {
    FILE* f = fopen(path.c_str(), "rb");
    const bool read = f && fread(h, sizeof(int64_t), CHECKPOINT_HEADER_SLOTS, f) == CHECKPOINT_HEADER_SLOTS;
    if (f) fclose(f);
    ModelConfig cfg;
    return read && checkpoint_header_problem(h, &cfg).empty();
}

// The number of optimizer shard files the checkpoint at path promises (slot 26); 0 if it has none or
// its header is bad (loading it then reports why).
inline int64_t optimizer_shard_count(const std::string& path) {
    int64_t h[CHECKPOINT_HEADER_SLOTS];
    return read_checkpoint_header(path, h) ? h[26] : 0;
}

// The run id in a checkpoint's header (slot 28); 0 if unknown (weights only) or unreadable.
inline uint64_t checkpoint_run_id(const std::string& path) {
    int64_t h[CHECKPOINT_HEADER_SLOTS];
    return read_checkpoint_header(path, h) ? (uint64_t)h[CHECKPOINT_RUN_ID_SLOT] : 0;
}

// True when every optimizer shard file the checkpoint promises exists.
inline bool checkpoint_is_complete(const std::string& path) {
    const int64_t shards = optimizer_shard_count(path);
    for (int64_t r = 0; r < shards; r++)
        if (access(optimizer_shard_path(path, r).c_str(), F_OK) != 0) return false;
    return true;
}

inline bool is_checkpoint_name(const std::string& name) {
    return name.size() == 17 && name.rfind("ckpt_", 0) == 0 && name.substr(13) == ".bin" &&
           name.find_first_not_of("0123456789", 5) == 13;
}

// The complete checkpoints in dir (all of them with complete_only false), oldest first.
inline std::vector<std::string> list_checkpoints(const std::string& dir, bool complete_only = true) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (!d) return names;
    while (dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (is_checkpoint_name(name) && (!complete_only || checkpoint_is_complete(dir + "/" + name))) names.push_back(dir + "/" + name);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// Removes a checkpoint and its optimizer shard files.
inline void remove_checkpoint(const std::string& path) {
    const int64_t shards = optimizer_shard_count(path);
    unlink(path.c_str());  // first: without it the shard files are no checkpoint
    for (int64_t r = 0; r < shards; r++) unlink(optimizer_shard_path(path, r).c_str());
}

// Removes all but the newest `keep` complete checkpoints in dir that belong(path) (keep <= 0 keeps
// all), each with its optimizer shard files; never the one at keep_path (just written).
inline void prune_checkpoints(const std::string& dir, int keep, const std::function<bool(const std::string&)>& belongs,
                              const std::string& keep_path = "") {
    if (keep <= 0) return;
    std::vector<std::string> names;
    for (const std::string& path : list_checkpoints(dir))
        if (belongs(path) && path != keep_path) names.push_back(path);
    const size_t others = keep_path.empty() ? keep : keep - 1;  // the just-written one counts as kept
    for (size_t i = 0; i + others < names.size(); i++) remove_checkpoint(names[i]);
}

// The checkpoint -r or -f names, loaded and verified: a file, or the newest checkpoint of a directory
// that loads and verifies. skipped: for each newer one that did not, its error.
struct FoundCheckpoint {
    std::string path;
    Checkpoint ck;
    std::vector<std::string> skipped;
};

inline FoundCheckpoint find_checkpoint(const std::string& path) {
    struct stat st;
    FoundCheckpoint found;
    if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        found.ck = load_checkpoint(path);
        found.path = path;
        return found;
    }
    std::vector<std::string> all = list_checkpoints(path);
    if (all.empty()) throw std::runtime_error("no checkpoint (ckpt_*.bin) in directory '" + path + "'");
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
        try {
            found.ck = load_checkpoint(*it);
            found.path = *it;
            return found;
        } catch (const std::exception& e) {
            found.skipped.push_back(e.what());
        }
    }
    throw std::runtime_error("no checkpoint in '" + path + "' verifies; the newest: " + found.skipped.front());
}
