// Token shards and the data loader, shared by the CPU and GPU trainers (plain C++).
//
// Shard format (all little-endian), written by scripts/shard_format.py and write_shard() below:
//   offset 0   char[8]  magic "MIXLNTOK"
//          8   uint32   version, 1
//         12   uint32   token_bytes: 2 (uint16 ids) or 4 (uint32 ids)
//         16   uint64   token_count
//         24   uint32   vocab_size of the tokenizer that wrote the shard (0 if unknown)
//         28   uint32   row_tokens R: 0 for a packed shard, else a padded one (below)
//         32   token_count ids of token_bytes each
//
// Samples of a packed shard (documents back to back): a shard of n tokens holds (n - 1) / T samples;
// sample j is tokens [j*T, j*T + T], whose first T are the inputs and last T the next-token targets.
// A padded shard (the official Mix-LN code's protocol): rows of R = T tokens, each one document
// truncated to R and right-padded with the all-ones id of the token width (0xFFFF, 0xFFFFFFFF), which
// is no token (2-byte padded shards need a vocabulary below 65536); token_count is a multiple of R.
// Sample j is row j: inputs its R ids (padding fed as id 0, which reaches no loss: attention is
// causal), targets the row shifted by one with IGNORE_INDEX where the next id is padding or past the
// row, so the loss leaves out the padding, as the official code's labels of -100 do.
// Each step the loader takes world*B samples; rank r gets samples [r*B, (r+1)*B) of them. A shard's
// leftover samples (fewer than world*B) are skipped. With shuffling, the shard order and each shard's sample order are
// permutations drawn from (seed, epoch), so any position can be restored exactly.
#pragma once
#include <glob.h>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#include "core/rng.h"
#include "kernels/cpu/crossentropy.h"  // IGNORE_INDEX, the target of a padding position

constexpr char SHARD_MAGIC[8] = {'M', 'I', 'X', 'L', 'N', 'T', 'O', 'K'};
constexpr uint32_t SHARD_VERSION = 1;
constexpr long SHARD_HEADER_BYTES = 32;

struct ShardInfo {
    std::string path;
    uint32_t token_bytes;
    uint64_t token_count;
    uint32_t vocab_size;
    uint32_t row_tokens;  // 0: packed; else a padded shard of rows of this many tokens
};

// The stored id of padding in a padded shard: all ones in the token width.
inline uint32_t shard_pad_id(uint32_t token_bytes) { return token_bytes == 2 ? 0xFFFFu : 0xFFFFFFFFu; }

inline std::runtime_error shard_error(const std::string& path, const std::string& what) {
    return std::runtime_error("shard '" + path + "': " + what);
}

// Opens a shard and validates its header against the file's size.
inline ShardInfo read_shard_header(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) throw shard_error(path, std::string("cannot open: ") + strerror(errno));
    unsigned char h[SHARD_HEADER_BYTES];
    const size_t got = fread(h, 1, SHARD_HEADER_BYTES, f);
    fseek(f, 0, SEEK_END);
    const long file_bytes = ftell(f);
    fclose(f);
    if (got < (size_t)SHARD_HEADER_BYTES)
        throw shard_error(path, "truncated: only " + std::to_string(got) + " bytes, less than the 32-byte header");
    if (memcmp(h, SHARD_MAGIC, 8) != 0) throw shard_error(path, "bad magic: not a mixln token shard (expected \"MIXLNTOK\")");
    ShardInfo info;
    uint32_t version;
    memcpy(&version, h + 8, 4);
    memcpy(&info.token_bytes, h + 12, 4);
    memcpy(&info.token_count, h + 16, 8);
    memcpy(&info.vocab_size, h + 24, 4);
    memcpy(&info.row_tokens, h + 28, 4);
    info.path = path;
    if (version != SHARD_VERSION) throw shard_error(path, "unsupported version " + std::to_string(version) + " (this build reads 1)");
    if (info.token_bytes != 2 && info.token_bytes != 4)
        throw shard_error(path, "bad token width " + std::to_string(info.token_bytes) + " bytes (must be 2 or 4)");
    uint64_t expected;  // a token count near 2^64 must not wrap around to a small size
    if (__builtin_mul_overflow(info.token_count, (uint64_t)info.token_bytes, &expected) ||
        __builtin_add_overflow(expected, (uint64_t)SHARD_HEADER_BYTES, &expected))
        throw shard_error(path, "the header's token count " + std::to_string(info.token_count) + " overflows a 64-bit byte size (corrupt header)");
    if (file_bytes < 0) throw shard_error(path, std::string("cannot read its size: ") + strerror(errno));
    if ((uint64_t)file_bytes != expected)
        throw shard_error(path, "size mismatch: the header promises " + std::to_string(info.token_count) + " tokens (" +
                                std::to_string(expected) + " bytes) but the file has " + std::to_string(file_bytes) +
                                " bytes" + ((uint64_t)file_bytes < expected ? " (truncated)" : ""));
    if (info.row_tokens && info.token_count % info.row_tokens)
        throw shard_error(path, "padded rows of " + std::to_string(info.row_tokens) + " tokens, but " +
                                std::to_string(info.token_count) + " tokens are not a whole number of rows");
    return info;
}

// Reads all ids of a shard, checking each is below model_vocab; in a padded shard, padding is -1 and
// must come only at the end of a row.
inline std::vector<int> read_shard_tokens(const ShardInfo& info, int model_vocab) {
    FILE* f = fopen(info.path.c_str(), "rb");
    if (!f) throw shard_error(info.path, std::string("cannot open: ") + strerror(errno));
    std::vector<unsigned char> raw(info.token_count * info.token_bytes);
    fseek(f, SHARD_HEADER_BYTES, SEEK_SET);
    const size_t got = fread(raw.data(), 1, raw.size(), f);
    fclose(f);
    if (got != raw.size()) throw shard_error(info.path, "read failed (file changed or truncated while reading)");
    std::vector<int> tokens(info.token_count);
    for (uint64_t i = 0; i < info.token_count; i++) {
        uint32_t id = 0;
        memcpy(&id, raw.data() + i * info.token_bytes, info.token_bytes);
        if (info.row_tokens && id == shard_pad_id(info.token_bytes)) {
            tokens[i] = -1;
            continue;
        }
        if (info.row_tokens && i % info.row_tokens && tokens[i - 1] == -1)
            throw shard_error(info.path, "row " + std::to_string(i / info.row_tokens) + " has a token after its padding at position " +
                                         std::to_string(i) + " (padding must end a row)");
        if (id >= (uint32_t)model_vocab)
            throw shard_error(info.path, "token id " + std::to_string(id) + " at position " + std::to_string(i) +
                                         " is out of range for the model's vocabulary of " + std::to_string(model_vocab));
        tokens[i] = (int)id;
    }
    return tokens;
}

// Writes a shard (2-byte ids when vocab_size fits in 16 bits, else 4). Throws on any I/O error.
// row_tokens > 0 writes a padded shard of n / row_tokens rows, with -1 in tokens for padding.
inline void write_shard(const std::string& path, const int* tokens, uint64_t n, uint32_t vocab_size, uint32_t row_tokens = 0) {
    const uint32_t token_bytes = vocab_size <= (row_tokens ? 65535u : 65536u) ? 2 : 4;  // the pad id is no token
    unsigned char h[SHARD_HEADER_BYTES] = {0};
    memcpy(h, SHARD_MAGIC, 8);
    memcpy(h + 8, &SHARD_VERSION, 4);
    memcpy(h + 12, &token_bytes, 4);
    memcpy(h + 16, &n, 8);
    memcpy(h + 24, &vocab_size, 4);
    memcpy(h + 28, &row_tokens, 4);
    if (row_tokens && n % row_tokens) throw shard_error(path, "a padded shard must hold whole rows");
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) throw shard_error(path, std::string("cannot create: ") + strerror(errno));
    bool ok = fwrite(h, 1, SHARD_HEADER_BYTES, f) == (size_t)SHARD_HEADER_BYTES;
    for (uint64_t i = 0; ok && i < n; i++) {
        const bool pad = row_tokens && tokens[i] == -1;
        if (!pad && (tokens[i] < 0 || (uint32_t)tokens[i] >= vocab_size)) { fclose(f); throw shard_error(path, "token id out of range while writing"); }
        const uint32_t id = pad ? shard_pad_id(token_bytes) : (uint32_t)tokens[i];
        ok = fwrite(&id, token_bytes, 1, f) == 1;  // little-endian hosts only, like the rest of the project
    }
    if (fclose(f) != 0 || !ok) throw shard_error(path, std::string("write failed: ") + strerror(errno));
}

// A comma-separated list of files and glob patterns, each glob's matches sorted.
inline std::vector<std::string> expand_shard_pattern(const std::string& patterns) {
    std::vector<std::string> files;
    size_t start = 0;
    while (start <= patterns.size()) {
        size_t comma = patterns.find(',', start);
        if (comma == std::string::npos) comma = patterns.size();
        const std::string pattern = patterns.substr(start, comma - start);
        start = comma + 1;
        if (pattern.empty()) continue;
        glob_t g;
        const int rc = glob(pattern.c_str(), 0, nullptr, &g);
        if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) {
            globfree(&g);
            throw std::runtime_error("no shard matches '" + pattern + "' (missing file or empty glob)");
        }
        if (rc != 0) { globfree(&g); throw std::runtime_error("cannot expand '" + pattern + "'"); }
        for (size_t i = 0; i < g.gl_pathc; i++) files.push_back(g.gl_pathv[i]);
        globfree(&g);
    }
    if (files.empty()) throw std::runtime_error("no shard files given");
    return files;
}

// Where the loader is: the next batch is samples [sample, sample + world*B) of the shard at
// shard_order[shard] in epoch `epoch`. Saved in checkpoints.
struct DataPosition {
    uint64_t epoch = 0, shard = 0, sample = 0;
};

class DataLoader {
  public:
    DataLoader(const std::string& patterns, int B, int T, int rank, int world_size, bool shuffle, uint64_t seed, int model_vocab)
        : B_(B), T_(T), rank_(rank), world_(world_size), shuffle_(shuffle), seed_(seed), vocab_(model_vocab) {
        if (rank < 0 || rank >= world_size) throw std::runtime_error("data loader: rank out of range");
        for (const std::string& path : expand_shard_pattern(patterns)) {
            ShardInfo info = read_shard_header(path);
            if (info.row_tokens && info.row_tokens != (uint32_t)T)
                throw shard_error(path, "holds documents padded to " + std::to_string(info.row_tokens) + " tokens, but the sequence length -t is " +
                                        std::to_string(T) + ": use -t " + std::to_string(info.row_tokens) + " or prepare the data with that length");
            if (!shards_.empty() && (info.row_tokens != 0) != padded())
                throw shard_error(path, std::string("is ") + (info.row_tokens ? "padded" : "packed") + " but '" + shards_[0].path +
                                        "' is " + (padded() ? "padded" : "packed") + ": one kind of shard per data set");
            uint64_t need;  // world x B x T (+ 1): each at most 2^31, but their product can wrap
            const bool huge = __builtin_mul_overflow((uint64_t)world_ * (uint64_t)B_, (uint64_t)T_, &need) || need == UINT64_MAX;
            if (!huge && !info.row_tokens) need += 1;
            if (huge || info.token_count < need)
                throw shard_error(path, "has " + std::to_string(info.token_count) + " tokens, fewer than one batch needs (" +
                                        std::to_string(need) + " = world " + std::to_string(world_) + " x B " + std::to_string(B_) +
                                        " x T " + std::to_string(T_) + " + 1)");
            shards_.push_back(info);
        }
        set_position(DataPosition{});
    }

    // Fills inputs and targets, each (B, T), and advances. Returns how many inputs are tokens, not
    // padding (B * T for packed shards).
    uint64_t next_batch(int* inputs, int* targets) {
        const uint64_t step = (uint64_t)world_ * B_;
        if (pos_.sample + step > sample_order_.size()) advance_shard();
        uint64_t real_inputs = 0;
        for (int b = 0; b < B_; b++) {
            const uint64_t j = sample_order_[pos_.sample + (uint64_t)rank_ * B_ + b];
            const int* s = tokens_.data() + j * T_;
            for (int t = 0; t < T_; t++) {
                const int next = t + 1 < T_ || !padded() ? s[t + 1] : -1;  // a padded row's last input has no target
                inputs[b * T_ + t] = s[t] < 0 ? 0 : s[t];
                targets[b * T_ + t] = next < 0 ? IGNORE_INDEX : next;
                real_inputs += s[t] >= 0;
            }
        }
        pos_.sample += step;
        return real_inputs;
    }

    DataPosition position() const { return pos_; }

    void set_position(const DataPosition& p) {
        if (p.shard >= shards_.size()) throw std::runtime_error("data position names shard " + std::to_string(p.shard) +
                                                                " but only " + std::to_string(shards_.size()) + " are given");
        pos_ = p;
        make_shard_order();
        load_current_shard();
        if (pos_.sample > sample_order_.size()) throw std::runtime_error("data position is past the end of its shard");
    }

    void reset() { set_position(DataPosition{}); }

    // Batches in one pass over all shards (each shard's leftover samples skipped).
    uint64_t batches_per_epoch() const {
        uint64_t n = 0;
        for (const ShardInfo& s : shards_) n += samples_in(s.token_count) / ((uint64_t)world_ * B_);
        return n;
    }
    uint64_t total_tokens() const {
        uint64_t n = 0;
        for (const ShardInfo& s : shards_) n += s.token_count;
        return n;
    }
    const std::vector<ShardInfo>& shards() const { return shards_; }
    bool padded() const { return shards_[0].row_tokens != 0; }  // all shards are of one kind

  private:
    int B_, T_, rank_, world_;
    bool shuffle_;
    uint64_t seed_;
    int vocab_;
    std::vector<ShardInfo> shards_;
    std::vector<uint64_t> shard_order_, sample_order_;
    std::vector<int> tokens_;
    DataPosition pos_;

    // Distinct, reproducible streams for the shard order of an epoch and each shard's sample order.
    Rng stream(uint64_t a, uint64_t b) const {
        Rng r(seed_ ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full));
        r.next_u64();
        return r;
    }

    void make_shard_order() {
        shard_order_.resize(shards_.size());
        Rng r = stream(pos_.epoch, ~0ull);
        if (shuffle_) shuffle_indices(shard_order_.data(), shard_order_.size(), r);
        else for (size_t i = 0; i < shard_order_.size(); i++) shard_order_[i] = i;
    }

    void load_current_shard() {
        const uint64_t id = shard_order_[pos_.shard];
        tokens_ = read_shard_tokens(shards_[id], vocab_);
        sample_order_.resize(samples_in(tokens_.size()));
        Rng r = stream(pos_.epoch, id);
        if (shuffle_) shuffle_indices(sample_order_.data(), sample_order_.size(), r);
        else for (size_t i = 0; i < sample_order_.size(); i++) sample_order_[i] = i;
    }

    // Samples in a shard of n tokens: windows of T + 1 overlapping by one, or padded rows of T.
    uint64_t samples_in(uint64_t n) const { return padded() ? n / T_ : (n - 1) / T_; }

    void advance_shard() {
        pos_.sample = 0;
        if (++pos_.shard == shards_.size()) {
            pos_.shard = 0;
            pos_.epoch++;
            make_shard_order();
        }
        load_current_shard();
    }
};
