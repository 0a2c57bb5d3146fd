// Token shards and the data loader: round trips, batching, shuffling, the rank partition, exact
// position restore, and a clear error for each kind of bad input.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <fstream>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../dataloader.h"

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_test_XXXXXX";
    return mkdtemp(tmpl);
}

static std::vector<int> sequence(int n, int vocab, uint64_t seed) {
    Rng rng(seed);
    std::vector<int> v(n);
    for (int& x : v) x = (int)rng.below(vocab);
    return v;
}

static std::string error_of(const std::function<void()>& f) {
    try { f(); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

TEST_CASE("shards round-trip with 2- and 4-byte ids") {
    const std::string dir = temp_dir();
    for (uint32_t vocab : {300u, 100000u}) {
        const std::vector<int> tokens = sequence(1000, (int)vocab, vocab);
        const std::string path = dir + "/s.bin";
        write_shard(path, tokens.data(), tokens.size(), vocab);
        const ShardInfo info = read_shard_header(path);
        CHECK(info.token_bytes == (vocab <= 65536 ? 2u : 4u));
        CHECK(info.token_count == 1000);
        CHECK(info.vocab_size == vocab);
        CHECK(read_shard_tokens(info, (int)vocab) == tokens);
    }
}

TEST_CASE("unshuffled batches are consecutive windows with targets shifted by one") {
    const std::string dir = temp_dir();
    std::vector<int> tokens(200);
    for (int i = 0; i < 200; i++) tokens[i] = i % 97;
    write_shard(dir + "/a.bin", tokens.data(), tokens.size(), 97);
    const int B = 3, T = 5;
    DataLoader dl(dir + "/a.bin", B, T, 0, 1, false, 0, 97);
    std::vector<int> in(B * T), tgt(B * T);
    for (int step = 0; step < 4; step++) {
        dl.next_batch(in.data(), tgt.data());
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const int pos = (step * B + b) * T + t;
                CHECK(in[b * T + t] == tokens[pos]);
                CHECK(tgt[b * T + t] == tokens[pos + 1]);
            }
    }
    CHECK(dl.batches_per_epoch() == (199 / T) / B);
}

// Each batch as the list of starting tokens of its samples (tokens[i] = i makes them unique).
static std::vector<int> sample_starts(DataLoader& dl, int B, int T) {
    std::vector<int> in(B * T), tgt(B * T), starts;
    dl.next_batch(in.data(), tgt.data());
    for (int b = 0; b < B; b++) starts.push_back(in[b * T]);
    return starts;
}

TEST_CASE("shuffling is deterministic per seed and visits every sample once per epoch") {
    const std::string dir = temp_dir();
    std::vector<int> tokens(4 * 60 + 1);
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = (int)i;
    write_shard(dir + "/a.bin", tokens.data(), tokens.size(), 1000);
    const int B = 4, T = 4;  // 60 samples, 15 batches per epoch
    DataLoader a(dir + "/a.bin", B, T, 0, 1, true, 7, 1000), b(dir + "/a.bin", B, T, 0, 1, true, 7, 1000);
    DataLoader c(dir + "/a.bin", B, T, 0, 1, true, 8, 1000);
    std::vector<int> seen, seen_c;
    for (int i = 0; i < 15; i++) {
        std::vector<int> sa = sample_starts(a, B, T);
        CHECK(sa == sample_starts(b, B, T));
        std::vector<int> sc = sample_starts(c, B, T);
        seen.insert(seen.end(), sa.begin(), sa.end());
        seen_c.insert(seen_c.end(), sc.begin(), sc.end());
    }
    CHECK(seen != seen_c);
    std::vector<int> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < 60; i++) CHECK(sorted[i] == i * T);
    // the next epoch is a different permutation
    std::vector<int> next;
    for (int i = 0; i < 15; i++) { std::vector<int> s = sample_starts(a, B, T); next.insert(next.end(), s.begin(), s.end()); }
    CHECK(next != seen);
}

TEST_CASE("ranks partition the batch: N ranks of B equal one rank of N*B, for world sizes 1-8") {
    const std::string dir = temp_dir();
    for (int s = 0; s < 3; s++) {
        std::vector<int> tokens(1000 + 37 * s);
        for (size_t i = 0; i < tokens.size(); i++) tokens[i] = (int)(i + 100000 * s);
        write_shard(dir + "/s" + std::to_string(s) + ".bin", tokens.data(), tokens.size(), 400000);
    }
    const int B = 2, T = 3;
    for (int world = 1; world <= 8; world++) {
        INFO("world " << world);
        DataLoader whole(dir + "/s*.bin", world * B, T, 0, 1, true, 3, 400000);
        std::vector<std::unique_ptr<DataLoader>> ranks;
        for (int r = 0; r < world; r++) ranks.emplace_back(new DataLoader(dir + "/s*.bin", B, T, r, world, true, 3, 400000));
        for (int step = 0; step < 100; step++) {  // crosses shard and epoch boundaries
            std::vector<int> expected = sample_starts(whole, world * B, T), got;
            for (auto& r : ranks) { std::vector<int> s = sample_starts(*r, B, T); got.insert(got.end(), s.begin(), s.end()); }
            REQUIRE(got == expected);
        }
    }
}

TEST_CASE("a saved position restores the exact continuation, across shards and epochs") {
    const std::string dir = temp_dir();
    for (int s = 0; s < 3; s++) {
        std::vector<int> tokens = sequence(300 + 50 * s, 50, s);
        write_shard(dir + "/p" + std::to_string(s) + ".bin", tokens.data(), tokens.size(), 50);
    }
    const int B = 2, T = 8;
    DataLoader a(dir + "/p*.bin", B, T, 0, 1, true, 11, 50);
    std::vector<int> in(B * T), tgt(B * T), in2(B * T), tgt2(B * T);
    for (int warm : {0, 5, 17, 40}) {
        a.reset();
        for (int i = 0; i < warm; i++) a.next_batch(in.data(), tgt.data());
        const DataPosition p = a.position();
        DataLoader b(dir + "/p*.bin", B, T, 0, 1, true, 11, 50);
        b.set_position(p);
        for (int i = 0; i < 30; i++) {
            a.next_batch(in.data(), tgt.data());
            b.next_batch(in2.data(), tgt2.data());
            REQUIRE(in == in2);
            REQUIRE(tgt == tgt2);
        }
    }
}

TEST_CASE("bad shards give an error naming the file and the problem") {
    const std::string dir = temp_dir();
    const std::vector<int> tokens = sequence(500, 100, 1);
    const std::string good = dir + "/good.bin";
    write_shard(good, tokens.data(), tokens.size(), 100);
    auto loader = [](const std::string& p, int vocab = 100) { return [p, vocab] { DataLoader dl(p, 4, 16, 0, 1, true, 0, vocab); }; };

    CHECK(error_of(loader(dir + "/missing.bin")).find("missing.bin") != std::string::npos);
    CHECK(error_of(loader(dir + "/missing.bin")).find("no shard matches") != std::string::npos);
    CHECK(error_of(loader(dir + "/nothing_*.bin")).find("no shard matches") != std::string::npos);

    { std::ofstream f(dir + "/magic.bin", std::ios::binary); f << "NOTASHARD_______________________0000"; }
    const std::string magic = error_of(loader(dir + "/magic.bin"));
    CHECK(magic.find("magic.bin") != std::string::npos);
    CHECK(magic.find("bad magic") != std::string::npos);

    { std::ofstream f(dir + "/short.bin", std::ios::binary); f << "MIXL"; }
    CHECK(error_of(loader(dir + "/short.bin")).find("truncated") != std::string::npos);

    // cut the good shard short by 10 bytes
    {
        std::ifstream in(good, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream f(dir + "/cut.bin", std::ios::binary);
        f.write(bytes.data(), bytes.size() - 10);
    }
    const std::string cut = error_of(loader(dir + "/cut.bin"));
    CHECK(cut.find("cut.bin") != std::string::npos);
    CHECK(cut.find("truncated") != std::string::npos);

    const std::vector<int> few = sequence(60, 100, 2);  // 4 x 16 + 1 = 65 needed
    write_shard(dir + "/few.bin", few.data(), few.size(), 100);
    const std::string shorter = error_of(loader(dir + "/few.bin"));
    CHECK(shorter.find("few.bin") != std::string::npos);
    CHECK(shorter.find("fewer than one batch") != std::string::npos);

    const std::string range = error_of(loader(good, 50));  // ids up to 99 for a 50-token model
    CHECK(range.find("good.bin") != std::string::npos);
    CHECK(range.find("out of range") != std::string::npos);

    CHECK(error_of(loader(good)) == "(no error)");
}

TEST_CASE("a token count near 2^64 cannot wrap the size check; the error names the file") {
    const std::string dir = temp_dir();
    // 2^63 + 8 two-byte tokens: 2^64 + 16 bytes wraps to 16, so a 48-byte file looked complete
    const uint64_t count = (1ull << 63) + 8;
    const uint32_t version = 1, width = 2, vocab = 50, reserved = 0;
    std::ofstream f(dir + "/wrap.bin", std::ios::binary);
    f.write("MIXLNTOK", 8);
    f.write((const char*)&version, 4);
    f.write((const char*)&width, 4);
    f.write((const char*)&count, 8);
    f.write((const char*)&vocab, 4);
    f.write((const char*)&reserved, 4);
    f.write("0123456789abcdef", 16);
    f.close();
    const std::string e = error_of([&] { DataLoader(dir + "/wrap.bin", 1, 4, 0, 1, false, 0, 50); });
    CHECK(e.find("shard '" + dir + "/wrap.bin'") == 0);
    CHECK(e.find("overflows a 64-bit byte size") != std::string::npos);
}
