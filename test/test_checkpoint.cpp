// Checkpoints: exact round trip, atomic replacement on a failed write, errors on corrupt files, and
// ZeRO-1's optimizer shard files (round trip, incomplete checkpoints skipped, pruning).
#include <sys/resource.h>
#include <csignal>
#include <fstream>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../core/checkpoint.h"
#include "../core/distributed.h"

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_ckpt_XXXXXX";
    return mkdtemp(tmpl);
}

static ModelConfig small_config() {
    ModelConfig cfg;
    cfg.vocab_size = 50; cfg.n_layer = 3; cfg.n_head = 2; cfg.d_model = 8; cfg.d_ffn = 12; cfg.max_seq_len = 16;
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
    CHECK(ck.cfg.d_ffn == 12);
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
    for (int r = 0; r < ranks; r++) {
        const ZeroShard s = zero_shard(n, r, ranks);
        save_optimizer_shard(optimizer_shard_path(path, r), OptimizerShard{n, step, ranks, r, s.begin, s.end,
                                                                         filled(s.end - s.begin, 10 + r), filled(s.end - s.begin, 20 + r)});
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
    const long n = make_param_layout(small_config()).total;
    const ZeroShard expected = zero_shard(n, 1, 3);
    const OptimizerShard s = load_optimizer_shard(optimizer_shard_path(path, 1));
    CHECK(s.n_params == n);
    CHECK(s.step == 70);
    CHECK(s.world_size == 3);
    CHECK(s.rank == 1);
    CHECK(s.begin == expected.begin);
    CHECK(s.end == expected.end);
    CHECK(s.m == filled(s.end - s.begin, 11));
    CHECK(s.v == filled(s.end - s.begin, 21));

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
