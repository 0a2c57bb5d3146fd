// The official Mix-LN code's evaluation protocol: one document per row, truncated and right-padded
// to T, padding out of the loss, and validation over a budget of tokens as the mean of the batches'
// mean losses. Padded shards, the loader's batches of them, and evaluate() against a direct
// computation, document by document, on a hand-made set.
#include <cmath>
#include <functional>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../core/backend_cpu.h"

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_padded_XXXXXX";
    return mkdtemp(tmpl);
}

// Rows of T ids, each a document followed by -1 (padding) up to T.
static std::vector<int> padded_rows(const std::vector<std::vector<int>>& docs, int T) {
    std::vector<int> rows;
    for (const std::vector<int>& d : docs) {
        rows.insert(rows.end(), d.begin(), d.end());
        rows.insert(rows.end(), T - d.size(), -1);
    }
    return rows;
}

static std::string error_of(const std::function<void()>& f) {
    try { f(); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

// Documents of 1 to T ids over a vocabulary of 11 (one is all of T: no padding).
static const int T = 6;
static const std::vector<std::vector<int>> DOCS = {{3, 4, 5, 1},    {7, 1},          {2, 9, 9, 8, 6, 1}, {5, 1},
                                                   {10, 3, 1},      {1},             {4, 4, 2, 7, 1},    {6, 8, 1}};

TEST_CASE("a padded shard round-trips and batches as documents with the padding out of the loss") {
    const std::string dir = temp_dir();
    const std::vector<int> rows = padded_rows(DOCS, T);
    for (uint32_t vocab : {11u, 70000u}) {  // 2- and 4-byte ids
        write_shard(dir + "/p.bin", rows.data(), rows.size(), vocab, T);
        const ShardInfo info = read_shard_header(dir + "/p.bin");
        CHECK(info.row_tokens == (uint32_t)T);
        CHECK(info.token_bytes == (vocab < 65536 ? 2u : 4u));
        CHECK(read_shard_tokens(info, 11) == rows);
    }
    DataLoader dl(dir + "/p.bin", 2, T, 0, 1, false, 0, 11);
    CHECK(dl.padded());
    CHECK(dl.batches_per_epoch() == 4);
    std::vector<int> in(2 * T), tgt(2 * T);
    CHECK(dl.next_batch(in.data(), tgt.data()) == 6);  // documents 0 and 1: 4 + 2 tokens
    const int X = IGNORE_INDEX;
    CHECK(in == std::vector<int>{3, 4, 5, 1, 0, 0, 7, 1, 0, 0, 0, 0});
    CHECK(tgt == std::vector<int>{4, 5, 1, X, X, X, 1, X, X, X, X, X});
    CHECK(dl.next_batch(in.data(), tgt.data()) == 8);  // 6 + 2: a full row has no target for its last id
    CHECK(tgt == std::vector<int>{9, 9, 8, 6, 1, X, 1, X, X, X, X, X});
}

TEST_CASE("padded shards refuse another -t, padding inside a row, and packed shards beside them") {
    const std::string dir = temp_dir();
    const std::vector<int> rows = padded_rows(DOCS, T);
    write_shard(dir + "/p.bin", rows.data(), rows.size(), 11, T);
    CHECK(error_of([&] { DataLoader(dir + "/p.bin", 2, 8, 0, 1, false, 0, 11); })
              .find("holds documents padded to 6 tokens, but the sequence length -t is 8") != std::string::npos);
    std::vector<int> holed = rows;
    holed[T + 3] = 5;  // row 1: 7, 1, -1, 5
    write_shard(dir + "/h.bin", holed.data(), holed.size(), 11, T);
    CHECK(error_of([&] { read_shard_tokens(read_shard_header(dir + "/h.bin"), 11); })
              .find("row 1 has a token after its padding") != std::string::npos);
    std::vector<int> packed(100, 3);
    write_shard(dir + "/k.bin", packed.data(), packed.size(), 11);
    CHECK(error_of([&] { DataLoader(dir + "/p.bin," + dir + "/k.bin", 2, T, 0, 1, false, 0, 11); })
              .find("is packed but") != std::string::npos);
    CHECK(error_of([&] { write_shard(dir + "/x.bin", rows.data(), rows.size() - 1, 11, T); }).find("whole rows") != std::string::npos);
}

TEST_CASE("padded evaluation over a token budget equals a direct computation, document by document") {
    const std::string dir = temp_dir();
    const std::vector<int> rows = padded_rows(DOCS, T);
    write_shard(dir + "/val.bin", rows.data(), rows.size(), 11, T);
    ModelConfig cfg;
    cfg.vocab_size = 11; cfg.d_model = 12; cfg.n_head = 3; cfg.d_ffn = 10; cfg.n_layer = 2; cfg.max_seq_len = T; cfg.alpha = 0.5;
    CpuBackend<double> backend(cfg);
    std::vector<float> params(backend.model.layout.total);
    init_parameters(params.data(), cfg, backend.model.layout, 5);
    backend.write_state(params.data(), nullptr, nullptr);

    // Directly: each document alone, unpadded, its n - 1 next-token losses; a batch's mean is the sum
    // of its documents' losses over their number of targets.
    auto document_loss_sum = [&](const std::vector<int>& d) {
        const int n = (int)d.size();
        if (n < 2) return 0.0;
        const std::vector<int> inputs(d.begin(), d.end() - 1), targets(d.begin() + 1, d.end());
        return backend.model.forward(inputs.data(), targets.data(), 1, n - 1) * (n - 1);
    };
    std::vector<double> batch_mean;  // batches of B = 2 documents
    // The backend hands each batch's mean loss over as a float: a relative rounding of 2^-24 (6e-8);
    // counting the padding or averaging otherwise moves the loss by percents.
    const double LOSS_TOL = 2e-7;
    for (size_t i = 0; i < DOCS.size(); i += 2) {
        const double targets = DOCS[i].size() - 1 + DOCS[i + 1].size() - 1;
        batch_mean.push_back((document_loss_sum(DOCS[i]) + document_loss_sum(DOCS[i + 1])) / targets);
    }
    // Input tokens per batch: 6, 8, 4, 8, so 6, 14, 18, 26 in all. As the official loop, batches are
    // taken until more than the budget were seen, the batch that passes it included: 13 takes two
    // (14 tokens); 14 three (14 is not more than 14); 5 one; 1000 all four.
    struct Case { long budget; int batches; uint64_t tokens; };
    for (const Case& c : {Case{13, 2, 14}, Case{14, 3, 18}, Case{5, 1, 6}, Case{1000, 4, 26}}) {
        INFO("budget " << c.budget);
        DataLoader val(dir + "/val.bin", 2, T, 0, 1, false, 0, 11);
        const Evaluation e = evaluate(backend, val, 0, c.budget, 2, T, DistributedEnv());
        double expected = 0;
        for (int b = 0; b < c.batches; b++) expected += batch_mean[b] / c.batches;
        CHECK(e.batches == c.batches);
        CHECK(e.tokens == c.tokens);
        CHECK(e.loss == Approx(expected).epsilon(LOSS_TOL));
    }
    // by batches, as before
    DataLoader val(dir + "/val.bin", 2, T, 0, 1, false, 0, 11);
    const Evaluation e = evaluate(backend, val, 3, 0, 2, T, DistributedEnv());
    CHECK(e.batches == 3);
    CHECK(e.loss == Approx((batch_mean[0] + batch_mean[1] + batch_mean[2]) / 3).epsilon(LOSS_TOL));
}

TEST_CASE("-m takes batches, or tokens with a K, M or G suffix") {
    auto parse = [](const char* m) {
        std::vector<std::string> args = {"train", "-i", "x", "-m", m};
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(&a[0]);
        return parse_train_options((int)argv.size(), argv.data());
    };
    CHECK(parse("50").val_batches == 50);
    CHECK(parse("50").val_tokens == 0);
    CHECK(parse("10M").val_tokens == 10000000);
    CHECK(parse("2.5K").val_tokens == 2500);
    CHECK(parse("1G").val_tokens == 1000000000);
    CHECK(error_of([&] { parse("0M"); }).find("-m") == 0);
    CHECK(error_of([&] { parse("10X"); }).find("-m") == 0);
    CHECK(error_of([&] { parse("M"); }).find("-m") == 0);
}
