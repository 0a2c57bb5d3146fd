// Checkpoints: exact round trip, atomic replacement on a failed write, errors on corrupt files, and
// ZeRO-1's optimizer shard files (round trip, incomplete checkpoints skipped, pruning).
#include <sys/resource.h>
#include <csignal>
#include <fstream>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../core/checkpoint.h"
#include "../core/crc32.h"
#include "../core/distributed.h"

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_ckpt_XXXXXX";
    return mkdtemp(tmpl);
}

// d_ffn a multiple of FFN_ALIGN: no MLP padding, so any floats (filled below) are a valid payload.
static ModelConfig small_config() {
    ModelConfig cfg;
    cfg.vocab_size = 50; cfg.n_layer = 3; cfg.n_head = 2; cfg.d_model = 8; cfg.d_ffn = 64; cfg.max_seq_len = 16;
    cfg.alpha = 0.33; cfg.scaled_embed = true;
    return cfg;
}

static std::vector<float> filled(long n, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v(n);
    for (float& x : v) x = (float)rng.normal();
    return v;
}

TEST_CASE("a checkpoint round-trips the model, optimizer and training state exactly") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 1), m = filled(n, 2), v = filled(n, 3);
    TrainState st;
    st.step = 1234; st.data = DataPosition{2, 1, 96}; st.rng_state = 0xDEADBEEFCAFEull;
    st.micro_batch = 4; st.seq_len = 16; st.total_batch = 128; st.world_size = 1; st.data_seed = 99;
    const std::string path = checkpoint_path(dir, st.step);
    save_checkpoint(path, cfg, st, p.data(), m.data(), v.data(), n);
    const Checkpoint ck = load_checkpoint(path);
    CHECK(ck.params == p);
    CHECK(ck.m == m);
    CHECK(ck.v == v);
    CHECK(ck.cfg.alpha == cfg.alpha);
    CHECK(ck.cfg.scaled_embed);
    CHECK(!ck.cfg.scaled_init);
    CHECK(ck.cfg.n_layer == 3);
    CHECK(ck.cfg.d_ffn == 64);
    CHECK(ck.state.step == 1234);
    CHECK(ck.state.data.epoch == 2);
    CHECK(ck.state.data.sample == 96);
    CHECK(ck.state.rng_state == st.rng_state);
    CHECK(ck.state.data_seed == 99);
    // weights only
    save_checkpoint(dir + "/w.bin", cfg, st, p.data(), nullptr, nullptr, n);
    const Checkpoint w = load_checkpoint(dir + "/w.bin");
    CHECK(w.params == p);
    CHECK(w.m.empty());
}

TEST_CASE("a write that fails (full disk) leaves the previous checkpoint intact and no temp file") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 4), p2 = filled(n, 5);
    TrainState st;
    const std::string path = dir + "/ckpt.bin";
    save_checkpoint(path, cfg, st, p.data(), p.data(), p.data(), n);
    // Simulate a full disk: files may not grow past 1000 bytes (writes fail with EFBIG).
    struct rlimit old_limit;
    getrlimit(RLIMIT_FSIZE, &old_limit);
    struct rlimit small = old_limit;
    small.rlim_cur = 1000;
    std::signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    std::string error;
    try { save_checkpoint(path, cfg, st, p2.data(), p2.data(), p2.data(), n); } catch (const std::exception& e) { error = e.what(); }
    setrlimit(RLIMIT_FSIZE, &old_limit);
    CHECK(error.find("write failed") != std::string::npos);
    CHECK(error.find("previous checkpoints are untouched") != std::string::npos);
    CHECK(load_checkpoint(path).params == p);
    std::ifstream tmp(path + ".tmp");
    CHECK(!tmp.good());
}

TEST_CASE("corrupt checkpoints are rejected with a clear error") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 6);
    TrainState st;
    const std::string path = dir + "/c.bin";
    save_checkpoint(path, cfg, st, p.data(), p.data(), p.data(), n);
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto error_for = [&](const std::string& content) {
        std::ofstream(dir + "/bad.bin", std::ios::binary) << content;
        try { load_checkpoint(dir + "/bad.bin"); } catch (const std::exception& e) { return std::string(e.what()); }
        return std::string("(no error)");
    };
    CHECK(error_for(bytes.substr(0, bytes.size() - 4)).find("truncated") != std::string::npos);
    CHECK(error_for(bytes + "x").find("unexpected bytes") != std::string::npos);
    CHECK(error_for("JUNK" + bytes.substr(4)).find("bad magic") != std::string::npos);
    CHECK(error_for(bytes.substr(0, 100)).find("truncated header") != std::string::npos);
}

TEST_CASE("pruning keeps the newest checkpoints") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 7);
    TrainState st;
    for (int step : {10, 20, 30, 40, 50}) save_checkpoint(checkpoint_path(dir, step), cfg, st, p.data(), nullptr, nullptr, n);
    prune_checkpoints(dir, 2, [](const std::string&) { return true; });
    const std::vector<std::string> left = list_checkpoints(dir);
    REQUIRE(left.size() == 2);
    CHECK(left[0] == checkpoint_path(dir, 40));
    CHECK(left[1] == checkpoint_path(dir, 50));
}

// ---- ZeRO-1: the optimizer shard files beside a checkpoint ----

// A checkpoint at step whose moments are in `ranks` shard files, as run_training writes it.
static void save_sharded_checkpoint(const std::string& dir, int64_t step, int ranks) {
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    TrainState st;
    st.step = step;
    st.world_size = ranks;
    st.optimizer_shards = ranks;
    const std::string path = checkpoint_path(dir, step);
    const BucketPlan plan = gradient_bucket_plan(make_param_layout(cfg), cfg.n_layer, ranks);
    for (int r = 0; r < ranks; r++) {
        const long owned = range_total(plan.owned_ranges(r));
        save_optimizer_shard(optimizer_shard_path(path, r), OptimizerShard{n, step, ranks, r, plan.owned_ranges(r),
                                                                         filled(owned, 10 + r), filled(owned, 20 + r)});
    }
    save_checkpoint(path, cfg, st, filled(n, 8).data(), nullptr, nullptr, n);
}

static bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST_CASE("an optimizer shard file round-trips; its checkpoint records how many there are") {
    const std::string dir = temp_dir();
    save_sharded_checkpoint(dir, 70, 3);
    const std::string path = checkpoint_path(dir, 70);
    CHECK(optimizer_shard_path(path, 2) == dir + "/ckpt_00000070.rank2.bin");
    const Checkpoint ck = load_checkpoint(path);
    CHECK(ck.state.optimizer_shards == 3);
    CHECK(ck.m.empty());
    const ParamLayout layout = make_param_layout(small_config());
    const std::vector<ParamRange> expected = gradient_bucket_plan(layout, small_config().n_layer, 3).owned_ranges(1);
    const OptimizerShard s = load_optimizer_shard(optimizer_shard_path(path, 1));
    CHECK(s.n_params == layout.total);
    CHECK(s.step == 70);
    CHECK(s.world_size == 3);
    CHECK(s.rank == 1);
    CHECK(s.ranges == expected);
    CHECK(s.m == filled(range_total(expected), 11));
    CHECK(s.v == filled(range_total(expected), 21));

    std::ifstream in(optimizer_shard_path(path, 1), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir + "/bad.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 4);
    std::string error;
    try { load_optimizer_shard(dir + "/bad.bin"); } catch (const std::exception& e) { error = e.what(); }
    CHECK(error.find("truncated") != std::string::npos);
}

TEST_CASE("a checkpoint missing a rank's optimizer shard is not offered for resume; pruning removes shard files") {
    const std::string dir = temp_dir();
    for (int step : {10, 20, 30}) save_sharded_checkpoint(dir, step, 3);
    unlink(optimizer_shard_path(checkpoint_path(dir, 30), 1).c_str());  // as if rank 1 died writing it
    std::vector<std::string> complete = list_checkpoints(dir);
    REQUIRE(complete.size() == 2);
    CHECK(complete.back() == checkpoint_path(dir, 20));

    prune_checkpoints(dir, 1, [](const std::string&) { return true; });
    CHECK(list_checkpoints(dir) == std::vector<std::string>{checkpoint_path(dir, 20)});
    CHECK(!exists(checkpoint_path(dir, 10)));
    for (int r = 0; r < 3; r++) {
        CHECK(!exists(optimizer_shard_path(checkpoint_path(dir, 10), r)));
        CHECK(exists(optimizer_shard_path(checkpoint_path(dir, 20), r)));
    }
    CHECK(exists(checkpoint_path(dir, 30)));  // incomplete: neither listed nor pruned
}

TEST_CASE("the norm scheme round-trips in slot 8, the paper code's DeepNorm as 2; unknown values are refused") {
    const std::string dir = temp_dir();
    ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 7);
    TrainState st;
    for (NormScheme scheme : {NormScheme::MixLN, NormScheme::DeepNorm, NormScheme::DeepNormPaper}) {
        cfg.norm = scheme;
        save_checkpoint(dir + "/n.bin", cfg, st, p.data(), nullptr, nullptr, n);
        std::ifstream in(dir + "/n.bin", std::ios::binary);
        int64_t header[9];
        in.read(reinterpret_cast<char*>(header), sizeof(header));
        CHECK(header[8] == (int64_t)scheme);
        CHECK(load_checkpoint(dir + "/n.bin").cfg.norm == scheme);
    }
    cfg.norm = (NormScheme)3;
    save_checkpoint(dir + "/n.bin", cfg, st, p.data(), nullptr, nullptr, n);
    std::string error = "(no error)";
    try { load_checkpoint(dir + "/n.bin"); } catch (const std::exception& e) { error = e.what(); }
    CHECK(error.find("unknown norm scheme 3 in slot 8") != std::string::npos);
}

// ---- integrity (format version 3): CRC-32, range-checked header, size checked before allocating ----

static std::string file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

static std::string load_error(const std::string& path, const std::string& content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    try { load_checkpoint(path); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

static std::string with_slot(std::string bytes, int slot, int64_t value) {
    memcpy(&bytes[slot * 8], &value, 8);
    return bytes;
}

static const char* const CRC_OF_123456789 = "cbf43926";  // the standard CRC-32 check value

TEST_CASE("CRC-32 is zlib's: the standard check value, and incremental") {
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", crc32_update(0, "123456789", 9));
    CHECK(std::string(hex) == CRC_OF_123456789);
    CHECK(crc32_update(crc32_update(0, "12345", 5), "6789", 4) == crc32_update(0, "123456789", 9));
    const std::string odd(1001, 'q');  // the 8-byte loop and the byte tail agree
    uint32_t bytewise = 0;
    for (char c : odd) bytewise = crc32_update(bytewise, &c, 1);
    CHECK(crc32_update(0, odd.data(), odd.size()) == bytewise);
}

TEST_CASE("a version 3 checkpoint carries the CRC-32 of the file with slot 27 zeroed, and the run id") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    TrainState st;
    st.run_id = 1234567;
    save_checkpoint(dir + "/c.bin", cfg, st, filled(n, 1).data(), filled(n, 2).data(), filled(n, 3).data(), n);
    std::string bytes = file_bytes(dir + "/c.bin");
    int64_t h[64];
    memcpy(h, bytes.data(), 512);
    CHECK(h[1] == 3);
    CHECK(h[28] == 1234567);
    const int64_t stored = h[27];
    memset(&bytes[27 * 8], 0, 8);
    CHECK(stored == (int64_t)crc32_update(0, bytes.data(), bytes.size()));
    CHECK(load_checkpoint(dir + "/c.bin").state.run_id == 1234567);
}

TEST_CASE("corrupted weights are refused by the checksum, naming the file") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    TrainState st;
    save_checkpoint(dir + "/c.bin", cfg, st, filled(n, 1).data(), filled(n, 2).data(), filled(n, 3).data(), n);
    std::string bytes = file_bytes(dir + "/c.bin");
    Rng rng(3);
    for (int i = 0; i < 1000; i++) bytes[512 + rng.below(bytes.size() - 512)] ^= (char)(1 + rng.below(255));
    const std::string e = load_error(dir + "/flipped.bin", bytes);
    CHECK(e.find("flipped.bin") != std::string::npos);
    CHECK(e.find("checksum mismatch") != std::string::npos);
    std::string one = file_bytes(dir + "/c.bin");
    one[600] ^= 1;  // a single bit
    CHECK(load_error(dir + "/bit.bin", one).find("checksum mismatch") != std::string::npos);
}

TEST_CASE("every header field is range-checked before it is used") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();  // d 8, 2 heads
    const long n = make_param_layout(cfg).total;
    TrainState st;
    st.step = 5; st.micro_batch = 2; st.seq_len = 4; st.total_batch = 8; st.world_size = 1;
    save_checkpoint(dir + "/c.bin", cfg, st, filled(n, 1).data(), filled(n, 2).data(), filled(n, 3).data(), n);
    const std::string bytes = file_bytes(dir + "/c.bin");
    const std::string bad = dir + "/bad.bin";
    CHECK(load_error(bad, with_slot(bytes, 5, 0)).find("n_head 0 is below 1") != std::string::npos);  // was SIGFPE
    CHECK(load_error(bad, with_slot(bytes, 5, 3)).find("heads of an even size") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 5, 256)).find("heads of an even size") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 8, 7)).find("unknown norm scheme 7") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 9, double_bits(NAN))).find("alpha") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 9, double_bits(1.5))).find("alpha") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 15, -5)).find("step -5") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 4, 1ll << 40)).find("slot 4") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 24, -1)).find("world size") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 16, 2)).find("slot 16") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 40, 1)).find("slot 40") != std::string::npos);
    CHECK(load_error(bad, with_slot(bytes, 1, 4)).find("unsupported version 4") != std::string::npos);
    // every message names the file
    CHECK(load_error(bad, with_slot(bytes, 5, 0)).find("checkpoint '" + bad + "'") == 0);
}

TEST_CASE("a header claiming a huge model is refused by its size before anything is allocated") {
    const std::string dir = temp_dir();
    ModelConfig big;  // the 250m preset, 32000 vocab: 1.39 GB of weights and moments
    apply_model_preset("250m", &big);
    const long n = make_param_layout(big).total;
    TrainState st;
    int64_t h[64] = {0};
    save_checkpoint(dir + "/tiny.bin", small_config(), st, filled(make_param_layout(small_config()).total, 1).data(), nullptr, nullptr,
                    make_param_layout(small_config()).total);
    memcpy(h, file_bytes(dir + "/tiny.bin").data(), 512);
    h[2] = big.vocab_size; h[4] = big.n_layer; h[5] = big.n_head; h[6] = big.d_model; h[7] = big.d_ffn; h[14] = n; h[16] = 1;
    const std::string header(reinterpret_cast<const char*>(h), 512);
    const std::string e = load_error(dir + "/huge.bin", header);  // before: allocated 1.39 GB, then "truncated"
    CHECK(e.find("truncated: the header promises " + std::to_string(512 + 12 * n) + " bytes but the file has 512") != std::string::npos);
    // sizes whose product overflows 64 bits
    h[2] = INT32_MAX; h[6] = INT32_MAX - 1; h[4] = INT32_MAX; h[5] = 1;
    const std::string overflowing(reinterpret_cast<const char*>(h), 512);
    CHECK(load_error(dir + "/overflow.bin", overflowing).find("overflows 64 bits") != std::string::npos);
}

TEST_CASE("version 1 and 2 checkpoints (the layout before v3) are refused, naming the converter; weights-only ones load for -f") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    TrainState st;
    st.step = 3; st.micro_batch = 2; st.seq_len = 4; st.total_batch = 8;
    save_checkpoint(dir + "/c.bin", cfg, st, filled(n, 1).data(), filled(n, 2).data(), filled(n, 3).data(), n);
    for (int version : {1, 2}) {
        const std::string old = dir + "/v" + std::to_string(version) + ".bin";
        const std::string e = load_error(old, with_slot(file_bytes(dir + "/c.bin"), 1, version));
        INFO(e);
        CHECK(e.find("checkpoint '" + old + "': version " + std::to_string(version) + ": the parameter layout changed in version 3") == 0);
        CHECK(e.find("scripts/upgrade_checkpoint.py") != std::string::npos);
    }

    TrainState weights_only;  // as scripts/import_hf.py writes it: slots 15-28 zero but the CRC
    weights_only.world_size = 0;
    save_checkpoint(dir + "/w.bin", cfg, weights_only, filled(n, 4).data(), nullptr, nullptr, n);
    const Checkpoint w = load_checkpoint(dir + "/w.bin");
    CHECK(w.params == filled(n, 4));
    CHECK(w.state.step == 0);
}

TEST_CASE("an optimizer shard file (version 3) is checksummed and range-checked; versions 1 and 2 are refused") {
    const std::string dir = temp_dir();
    const std::vector<float> m = filled(15, 1), v = filled(15, 2);
    save_optimizer_shard(dir + "/s.bin", OptimizerShard{100, 7, 4, 1, {{20, 30}, {64, 69}}, m, v, 99});
    const std::string bytes = file_bytes(dir + "/s.bin");
    CHECK(bytes.size() == 128 + 2 * 16 + 2 * 15 * 4);
    const OptimizerShard s = load_optimizer_shard(dir + "/s.bin");
    CHECK(s.run_id == 99);
    CHECK(s.ranges == std::vector<ParamRange>{{20, 30}, {64, 69}});
    CHECK(s.m == m);
    CHECK(s.v == v);
    auto error_for = [&](const std::string& content) {
        std::ofstream(dir + "/bad.bin", std::ios::binary | std::ios::trunc) << content;
        try { load_optimizer_shard(dir + "/bad.bin"); } catch (const std::exception& e) { return std::string(e.what()); }
        return std::string("(no error)");
    };
    for (size_t at : {170u, 250u}) {  // a flipped bit in m, then in v
        std::string flipped = bytes;
        flipped[at] ^= 4;
        CHECK(error_for(flipped).find("checksum mismatch") != std::string::npos);
        CHECK(error_for(flipped).find("bad.bin") != std::string::npos);
    }
    CHECK(error_for(with_slot(bytes, 5, 4)).find("rank or world size") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 7, 101)).find("parameter count out of range") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 6, 3)).find("truncated") != std::string::npos);
    CHECK(error_for(with_slot(with_slot(bytes, 2, 1ll << 62), 7, 1ll << 62)).find("sizes overflow 64 bits") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 3, -1)).find("step out of range") != std::string::npos);
    // The ranges (slots 16-19): out of order, empty, past P; or covering other than n parameters.
    CHECK(error_for(with_slot(bytes, 18, 25)).find("range 1 [25, 69) is empty, out of order") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 17, 20)).find("range 0 [20, 20) is empty") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 19, 101)).find("outside [0, P)") != std::string::npos);
    CHECK(error_for(with_slot(bytes, 19, 70)).find("the ranges hold 16 parameters, the header says 15") != std::string::npos);
    for (int old : {1, 2})
        CHECK(error_for(with_slot(bytes, 1, old)).find("optimizer shard version " + std::to_string(old) + " (one slice") != std::string::npos);
    // A rank whose slices all lie in the buckets' padding (many ranks, a small model) owns nothing.
    save_optimizer_shard(dir + "/empty.bin", OptimizerShard{100, 7, 64, 63, {}, {}, {}, 99});
    const OptimizerShard empty = load_optimizer_shard(dir + "/empty.bin");
    CHECK((empty.ranges.empty() && empty.m.empty() && empty.v.empty() && empty.rank == 63));
}

TEST_CASE("pruning keeps only this run's checkpoints and never the one just written") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    const std::vector<float> p = filled(n, 7);
    TrainState other, mine;
    other.run_id = 1;
    mine.run_id = 2;
    for (int step : {4, 6, 8}) save_checkpoint(checkpoint_path(dir, step), cfg, other, p.data(), nullptr, nullptr, n);
    save_checkpoint(checkpoint_path(dir, 1), cfg, mine, p.data(), nullptr, nullptr, n);
    save_checkpoint(checkpoint_path(dir, 2), cfg, mine, p.data(), nullptr, nullptr, n);  // just written
    prune_checkpoints(dir, 1, [](const std::string& c) { return checkpoint_run_id(c) == 2; }, checkpoint_path(dir, 2));
    CHECK(list_checkpoints(dir) == std::vector<std::string>{checkpoint_path(dir, 2), checkpoint_path(dir, 4),
                                                            checkpoint_path(dir, 6), checkpoint_path(dir, 8)});
}

TEST_CASE("resuming from a directory falls back to the newest checkpoint that verifies") {
    const std::string dir = temp_dir();
    const ModelConfig cfg = small_config();
    const long n = make_param_layout(cfg).total;
    TrainState st;
    for (int step : {2, 4, 6}) { st.step = step; save_checkpoint(checkpoint_path(dir, step), cfg, st, filled(n, step).data(), nullptr, nullptr, n); }
    std::string bytes = file_bytes(checkpoint_path(dir, 6));
    bytes[700] ^= 1;
    std::ofstream(checkpoint_path(dir, 6), std::ios::binary | std::ios::trunc) << bytes;
    const FoundCheckpoint found = find_checkpoint(dir);
    CHECK(found.path == checkpoint_path(dir, 4));
    REQUIRE(found.skipped.size() == 1);
    CHECK(found.skipped[0].find("ckpt_00000006.bin") != std::string::npos);
    CHECK(found.skipped[0].find("checksum mismatch") != std::string::npos);
    CHECK(found.ck.params == filled(n, 4));
}

TEST_CASE("the MLP's padding round-trips as zeros; a file with a nonzero there is refused, naming the layer") {
    const std::string dir = temp_dir();
    ModelConfig cfg = small_config();
    cfg.d_ffn = 12;  // stored 64 wide
    const ParamLayout layout = make_param_layout(cfg);
    std::vector<float> p(layout.total);
    init_parameters(p.data(), cfg, layout, 5);
    TrainState st;
    save_checkpoint(dir + "/c.bin", cfg, st, p.data(), nullptr, nullptr, layout.total);
    CHECK(load_checkpoint(dir + "/c.bin").params == p);
    // each padded part of layer 2: a row of up, a column of down
    for (long index : {layout.at(WUP, 2) + 12 * cfg.d_model + 3, layout.at(WDOWN, 2) + 5 * ffn_stored(cfg) + 63}) {
        std::vector<float> bad = p;
        bad[index] = 1e-30f;
        save_checkpoint(dir + "/bad.bin", cfg, st, bad.data(), nullptr, nullptr, layout.total);
        CHECK(load_error(dir + "/bad.bin", file_bytes(dir + "/bad.bin")) ==
              "checkpoint '" + dir + "/bad.bin': layer 2's MLP padding (units 12..63 of gate, up and down) is not zero (corrupt file)");
    }
}
