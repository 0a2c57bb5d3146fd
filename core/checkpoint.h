// Checkpoints: the only code that reads or writes them, shared by the CPU and GPU trainers.
//
// Format (little-endian): a 512-byte header of 64 int64 slots, then float32 arrays.
//   slot 0  magic "MIXLNCKP" (8 ASCII bytes)     slot 14  number of parameters P
//   slot 1  version, 1                           slot 15  optimizer steps completed
//   slot 2  vocab_size                           slot 16  1 if Adam moments follow, else 0
//   slot 3  max_seq_len                          slot 17-19  data position: epoch, shard, sample
//   slot 4  n_layer                              slot 20  trainer RNG state
//   slot 5  n_head                               slot 21  micro-batch B
//   slot 6  d_model                              slot 22  sequence length T
//   slot 7  d_ffn                                slot 23  total batch tokens
//   slot 8  norm scheme (0 Mix-LN, 1 DeepNorm,   slot 24  world size
//           2 the paper code's DeepNorm)
//   slot 9  alpha (IEEE double bits)             slot 25  data seed
//   slot 10 scaled_init   slot 11 scaled_embed   slot 26  optimizer shard files W (0: none)
//   slot 12 rope_theta (double bits)             slots 27-63  0
//   slot 13 norm_eps (double bits)
//   then params[P] (fp32 master weights, in the layout of core/config.h), then, if slot 16 is 1,
//   Adam's m[P] and v[P].
//
// ZeRO-1 on W > 1 ranks: each rank holds the moments of its slice of the parameters only, so rank r
// writes them to ckpt_STEP.rankR.bin beside ckpt_STEP.bin (optimizer_shard_path), whose slot 16 is
// then 0 and slot 26 is W. An optimizer shard file (little-endian):
//   a 64-byte header of 8 int64 slots
//   slot 0  magic "MIXLNOPT"                     slot 4  world size W
//   slot 1  version, 1                           slot 5  rank r
//   slot 2  parameter count P                    slot 6  begin: the first parameter of the slice
//   slot 3  optimizer steps completed            slot 7  end: one past its last
//   then Adam's m[end - begin] and v[end - begin] (fp32) for parameters [begin, end).
// A checkpoint is complete when ckpt_STEP.bin and the W shard files its slot 26 promises all exist;
// list_checkpoints (and so resuming from a directory) skips incomplete ones.
//
// Every file is written to PATH.tmp, flushed and fsync'ed, then renamed over PATH: a crash or a full
// disk leaves either the old file or the new one, never a torn one.
#pragma once
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>
#include "config.h"
#include "../dataloader.h"

constexpr int CHECKPOINT_VERSION = 1;
constexpr int CHECKPOINT_HEADER_SLOTS = 64;
constexpr int OPTIMIZER_SHARD_HEADER_SLOTS = 8;

// Everything besides weights and moments that a bit-identical resume needs.
struct TrainState {
    int64_t step = 0;
    DataPosition data;
    uint64_t rng_state = 0;
    int64_t micro_batch = 0, seq_len = 0, total_batch = 0, world_size = 1;
    uint64_t data_seed = 0;
    int64_t optimizer_shards = 0;  // W: Adam's moments are in W optimizer shard files (ZeRO-1), not here
};

struct Checkpoint {
    ModelConfig cfg;
    TrainState state;
    std::vector<float> params, m, v;  // m and v empty if the file has no optimizer state
};

// One rank's part of Adam's moments under ZeRO-1: parameters [begin, end) of n_params.
struct OptimizerShard {
    int64_t n_params = 0, step = 0, world_size = 1, rank = 0, begin = 0, end = 0;
    std::vector<float> m, v;  // end - begin each
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

static inline bool write_floats(FILE* f, const float* x, int64_t n) { return fwrite(x, sizeof(float), n, f) == (size_t)n; }

inline void save_checkpoint(const std::string& path, const ModelConfig& cfg, const TrainState& st,
                            const float* params, const float* m, const float* v, int64_t n_params) {
    int64_t h[CHECKPOINT_HEADER_SLOTS] = {0};
    memcpy(&h[0], "MIXLNCKP", 8);
    h[1] = CHECKPOINT_VERSION;
    h[2] = cfg.vocab_size; h[3] = cfg.max_seq_len; h[4] = cfg.n_layer; h[5] = cfg.n_head;
    h[6] = cfg.d_model; h[7] = cfg.d_ffn; h[8] = (int64_t)cfg.norm; h[9] = double_bits(cfg.alpha);
    h[10] = cfg.scaled_init; h[11] = cfg.scaled_embed; h[12] = double_bits(cfg.rope_theta);
    h[13] = double_bits(cfg.norm_eps); h[14] = n_params; h[15] = st.step; h[16] = (m && v) ? 1 : 0;
    h[17] = st.data.epoch; h[18] = st.data.shard; h[19] = st.data.sample; h[20] = (int64_t)st.rng_state;
    h[21] = st.micro_batch; h[22] = st.seq_len; h[23] = st.total_batch; h[24] = st.world_size;
    h[25] = (int64_t)st.data_seed; h[26] = st.optimizer_shards;
    write_file_atomically(path, [&](FILE* f) {
        return fwrite(h, sizeof(h), 1, f) == 1 && write_floats(f, params, n_params) &&
               (!(m && v) || (write_floats(f, m, n_params) && write_floats(f, v, n_params)));
    });
}

inline Checkpoint load_checkpoint(const std::string& path) {
    auto fail = [&](const std::string& what) { return std::runtime_error("checkpoint '" + path + "': " + what); };
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) throw fail(std::string("cannot open: ") + strerror(errno));
    int64_t h[CHECKPOINT_HEADER_SLOTS];
    if (fread(h, sizeof(h), 1, f) != 1) { fclose(f); throw fail("truncated header"); }
    if (memcmp(&h[0], "MIXLNCKP", 8) != 0) { fclose(f); throw fail("bad magic: not a mixln checkpoint"); }
    if (h[1] != CHECKPOINT_VERSION) { fclose(f); throw fail("unsupported version " + std::to_string(h[1])); }
    if (!norm_scheme_name(h[8])) { fclose(f); throw fail("unknown norm scheme " + std::to_string(h[8]) + " in slot 8 (0, 1 or 2)"); }
    Checkpoint ck;
    ModelConfig& c = ck.cfg;
    c.vocab_size = (int)h[2]; c.max_seq_len = (int)h[3]; c.n_layer = (int)h[4]; c.n_head = (int)h[5];
    c.d_model = (int)h[6]; c.d_ffn = (int)h[7]; c.norm = (NormScheme)h[8]; c.alpha = bits_double(h[9]);
    c.scaled_init = h[10] != 0; c.scaled_embed = h[11] != 0; c.rope_theta = bits_double(h[12]); c.norm_eps = bits_double(h[13]);
    const int64_t n = h[14];
    if (n != make_param_layout(c).total) { fclose(f); throw fail("parameter count does not match its model config (corrupt header)"); }
    TrainState& s = ck.state;
    s.step = h[15]; s.data = DataPosition{(uint64_t)h[17], (uint64_t)h[18], (uint64_t)h[19]};
    s.rng_state = (uint64_t)h[20]; s.micro_batch = h[21]; s.seq_len = h[22]; s.total_batch = h[23];
    s.world_size = h[24]; s.data_seed = (uint64_t)h[25]; s.optimizer_shards = h[26];
    const bool has_opt = h[16] != 0;
    ck.params.resize(n);
    bool ok = fread(ck.params.data(), sizeof(float), n, f) == (size_t)n;
    if (ok && has_opt) {
        ck.m.resize(n); ck.v.resize(n);
        ok = fread(ck.m.data(), sizeof(float), n, f) == (size_t)n && fread(ck.v.data(), sizeof(float), n, f) == (size_t)n;
    }
    const bool trailing = ok && fgetc(f) != EOF;
    fclose(f);
    if (!ok) throw fail("truncated: fewer floats than the header promises");
    if (trailing) throw fail("unexpected bytes after the data (corrupt or not a checkpoint)");
    return ck;
}

// Rank r's optimizer shard file of the checkpoint at path: ckpt_STEP.bin -> ckpt_STEP.rankR.bin.
inline std::string optimizer_shard_path(const std::string& checkpoint, int64_t rank) {
    const std::string stem = checkpoint.size() > 4 && checkpoint.substr(checkpoint.size() - 4) == ".bin"
                                 ? checkpoint.substr(0, checkpoint.size() - 4) : checkpoint;
    return stem + ".rank" + std::to_string(rank) + ".bin";
}

inline void save_optimizer_shard(const std::string& path, const OptimizerShard& s) {
    const int64_t n = s.end - s.begin;
    if ((int64_t)s.m.size() != n || (int64_t)s.v.size() != n)
        throw std::runtime_error("checkpoint '" + path + "': the moments do not cover parameters [begin, end)");
    int64_t h[OPTIMIZER_SHARD_HEADER_SLOTS] = {0};
    memcpy(&h[0], "MIXLNOPT", 8);
    h[1] = CHECKPOINT_VERSION; h[2] = s.n_params; h[3] = s.step; h[4] = s.world_size; h[5] = s.rank;
    h[6] = s.begin; h[7] = s.end;
    write_file_atomically(path, [&](FILE* f) {
        return fwrite(h, sizeof(h), 1, f) == 1 && write_floats(f, s.m.data(), n) && write_floats(f, s.v.data(), n);
    });
}

inline OptimizerShard load_optimizer_shard(const std::string& path) {
    auto fail = [&](const std::string& what) { return std::runtime_error("checkpoint '" + path + "': " + what); };
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) throw fail(std::string("cannot open: ") + strerror(errno));
    int64_t h[OPTIMIZER_SHARD_HEADER_SLOTS];
    if (fread(h, sizeof(h), 1, f) != 1) { fclose(f); throw fail("truncated header"); }
    if (memcmp(&h[0], "MIXLNOPT", 8) != 0) { fclose(f); throw fail("bad magic: not a mixln optimizer shard"); }
    if (h[1] != CHECKPOINT_VERSION) { fclose(f); throw fail("unsupported version " + std::to_string(h[1])); }
    OptimizerShard s;
    s.n_params = h[2]; s.step = h[3]; s.world_size = h[4]; s.rank = h[5]; s.begin = h[6]; s.end = h[7];
    if (s.begin < 0 || s.begin > s.end || s.end > s.n_params) { fclose(f); throw fail("bad parameter range (corrupt header)"); }
    const int64_t n = s.end - s.begin;
    s.m.resize(n); s.v.resize(n);
    const bool ok = fread(s.m.data(), sizeof(float), n, f) == (size_t)n && fread(s.v.data(), sizeof(float), n, f) == (size_t)n;
    const bool trailing = ok && fgetc(f) != EOF;
    fclose(f);
    if (!ok) throw fail("truncated: fewer floats than the header promises");
    if (trailing) throw fail("unexpected bytes after the data (corrupt or not an optimizer shard)");
    return s;
}

// Checkpoint files are DIR/ckpt_STEP.bin with STEP zero-padded to 8 digits, so names sort by step.
inline std::string checkpoint_path(const std::string& dir, int64_t step) {
    char name[32];
    snprintf(name, sizeof(name), "ckpt_%08lld.bin", (long long)step);
    return dir + "/" + name;
}

// The number of optimizer shard files the checkpoint at path promises (slot 26); 0 if it has none or
// its header cannot be read (loading it then reports why).
inline int64_t optimizer_shard_count(const std::string& path) {
    int64_t h[CHECKPOINT_HEADER_SLOTS];
    FILE* f = fopen(path.c_str(), "rb");
    const bool ok = f && fread(h, sizeof(h), 1, f) == 1 && memcmp(&h[0], "MIXLNCKP", 8) == 0;
    if (f) fclose(f);
    return ok ? h[26] : 0;
}

// True when every optimizer shard file the checkpoint promises exists.
inline bool checkpoint_is_complete(const std::string& path) {
    const int64_t shards = optimizer_shard_count(path);
    for (int64_t r = 0; r < shards; r++)
        if (access(optimizer_shard_path(path, r).c_str(), F_OK) != 0) return false;
    return true;
}

// The complete checkpoints in dir, oldest first.
inline std::vector<std::string> list_checkpoints(const std::string& dir) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (!d) return names;
    while (dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() == 17 && name.rfind("ckpt_", 0) == 0 && name.substr(13) == ".bin" &&
            checkpoint_is_complete(dir + "/" + name))
            names.push_back(dir + "/" + name);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// Removes all but the newest `keep` complete checkpoints in dir (keep <= 0 keeps all), each with its
// optimizer shard files.
inline void prune_checkpoints(const std::string& dir, int keep) {
    if (keep <= 0) return;
    std::vector<std::string> names = list_checkpoints(dir);
    for (size_t i = 0; i + keep < names.size(); i++) {
        const int64_t shards = optimizer_shard_count(names[i]);
        unlink(names[i].c_str());  // first: without it the shard files are no checkpoint
        for (int64_t r = 0; r < shards; r++) unlink(optimizer_shard_path(names[i], r).c_str());
    }
}
