// Data-parallel logic on the CPU: launcher environments, ZeRO-1's gradient buckets and each rank's
// slices of them for 1 to 64 ranks (including sizes that do not divide evenly), and a simulated multi-rank step where N
// ranks with micro-batch B produce the same update as one rank with micro-batch N*B.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../core/distributed.h"
#include "../core/model_cpu.h"
#include "../dataloader.h"

static void clear_launcher_env() {
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                          "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"})
        unsetenv(v);
}

TEST_CASE("the rank and world size come from torchrun, mpirun or Slurm variables") {
    clear_launcher_env();
    DistributedEnv e = detect_distributed_env();
    CHECK(e.world_size == 1);
    CHECK(e.launcher == "none");

    setenv("SLURM_PROCID", "5", 1); setenv("SLURM_NTASKS", "8", 1); setenv("SLURM_LOCALID", "1", 1);
    e = detect_distributed_env();
    CHECK((e.launcher == "slurm" && e.rank == 5 && e.world_size == 8 && e.local_rank == 1));

    setenv("OMPI_COMM_WORLD_RANK", "2", 1); setenv("OMPI_COMM_WORLD_SIZE", "4", 1);  // mpirun inside Slurm wins
    e = detect_distributed_env();
    CHECK((e.launcher == "mpirun" && e.rank == 2 && e.world_size == 4 && e.local_rank == 2));

    setenv("RANK", "3", 1); setenv("WORLD_SIZE", "4", 1); setenv("LOCAL_RANK", "3", 1);
    e = detect_distributed_env();
    CHECK((e.launcher == "torchrun" && e.rank == 3 && e.local_rank == 3));

    auto error = [] { try { detect_distributed_env(); } catch (const std::exception& ex) { return std::string(ex.what()); } return std::string(); };
    setenv("RANK", "4", 1);
    CHECK(error().find("not below world size") != std::string::npos);
    setenv("RANK", "x", 1);
    CHECK(error().find("RANK='x'") != std::string::npos);
    unsetenv("WORLD_SIZE"); setenv("RANK", "0", 1);
    CHECK(error().find("WORLD_SIZE is not set") != std::string::npos);
    clear_launcher_env();
}

// Checks a plan of buckets of the given sizes on `world` ranks against the rules of core/distributed.h.
static void check_bucket_plan(const std::vector<long>& sizes, int world) {
    const BucketPlan plan = make_bucket_plan(sizes, world);
    long n = 0;
    for (long s : sizes) n += s;
    REQUIRE(plan.buckets.size() == sizes.size());
    CHECK(plan.padded_total == plan.owned_total * world);
    // The buckets tile the layout; their padded regions tile the padded buffers, each at least as long
    // as its bucket and less than one aligned block per rank longer: no padding reaches another bucket.
    long begin = 0, padded = 0, owned = 0;
    for (size_t b = 0; b < sizes.size(); b++) {
        const GradientBucket& g = plan.buckets[b];
        CHECK(g.begin == begin);
        CHECK(g.end == begin + sizes[b]);
        CHECK(g.padded_offset == padded);
        CHECK(g.owned_offset == owned);
        CHECK(g.slice * world >= sizes[b]);
        CHECK(g.slice * world - sizes[b] < (world == 1 ? 1 : world * ZERO_SHARD_ALIGN));
        if (world > 1) CHECK(g.slice % ZERO_SHARD_ALIGN == 0);  // every slice starts 16-byte aligned
        for (long i : {g.begin, g.end - 1}) CHECK(plan.padded_index(i) == g.padded_offset + i - g.begin);
        begin = g.end;
        padded += g.slice * world;
        owned += g.slice;
    }
    CHECK(padded == plan.padded_total);
    CHECK(owned == plan.owned_total);
    // Every parameter owned by exactly one rank; each rank's pieces lie inside its slices of the
    // buffers, and its packed moments are its pieces back to back.
    std::vector<int> owners(n, 0);
    for (int r = 0; r < world; r++) {
        long packed = 0;
        for (const OwnedPiece& p : plan.owned_pieces(r)) {
            const GradientBucket& g = plan.buckets[plan.bucket_of(p.plain)];
            CHECK(p.plain == g.begin + r * g.slice);
            CHECK(p.owned == g.owned_offset);
            CHECK(p.count <= g.slice);
            CHECK(p.plain + p.count <= g.end);
            CHECK(p.packed == packed);
            packed += p.count;
            for (long i = p.plain; i < p.plain + p.count; i++) owners[i]++;
        }
        CHECK(range_total(plan.owned_ranges(r)) == packed);
    }
    CHECK(std::count(owners.begin(), owners.end(), 1) == n);
}

TEST_CASE("ZeRO-1 buckets: each rank owns an aligned slice of every bucket, every parameter exactly once") {
    const std::vector<std::vector<long>> layouts = {{1}, {7, 1, 1000}, {64, 64, 64}, {1001, 123457, 65, 5}, {130, 3, 129}};
    for (const std::vector<long>& sizes : layouts)
        for (int world : {1, 2, 3, 4, 5, 7, 8, 16, 64}) {
            INFO("buckets " << sizes.size() << " (first " << sizes[0] << "), world " << world);
            check_bucket_plan(sizes, world);
        }
}

TEST_CASE("ZeRO-1 buckets on one rank are the plain layout, owned whole") {
    const BucketPlan plan = make_bucket_plan({10, 33, 33, 7}, 1);
    CHECK(plan.padded_total == 83);
    CHECK(plan.owned_total == 83);
    for (long i = 0; i < 83; i++) CHECK(plan.padded_index(i) == i);
    CHECK(plan.owned_ranges(0) == std::vector<ParamRange>{{0, 83}});
}

TEST_CASE("ZeRO-1 buckets of a model: the embedding, one per layer block, the final norm with the LM head") {
    ModelConfig cfg;
    cfg.vocab_size = 17; cfg.d_model = 8; cfg.n_head = 2; cfg.d_ffn = 12; cfg.n_layer = 3;
    const ParamLayout layout = make_param_layout(cfg);
    const BucketPlan plan = gradient_bucket_plan(layout, cfg.n_layer, 2);
    REQUIRE(plan.buckets.size() == 5);
    CHECK(plan.buckets[0].begin == layout.at(WTE));
    CHECK(plan.buckets[0].end == layout.at(WTE) + layout.layer_size[WTE]);
    for (int l = 0; l < cfg.n_layer; l++) {
        CHECK(plan.buckets[1 + l].begin == layout.layer_begin(l));
        CHECK(plan.buckets[1 + l].end == layout.layer_begin(l) + layout.layer_stride);
    }
    CHECK(plan.buckets[4].begin == layout.at(NORM_F));
    CHECK(plan.buckets[4].end == layout.total);
    check_bucket_plan({plan.buckets[0].end, layout.layer_stride, layout.layer_stride, layout.layer_stride,
                       layout.total - plan.buckets[4].begin}, 2);
}

// 3 ranks over buckets {100, 200}: slices of 64 and 128. Rank 1 owns [64, 100) and [228, 300), rank 2
// nothing (its slices lie in the padding).
TEST_CASE("ZeRO-1 buckets: pieces move a rank's numbers between the layout, the packed moments and the owned buffers") {
    const BucketPlan plan = make_bucket_plan({100, 200}, 3);
    CHECK(plan.owned_ranges(0) == std::vector<ParamRange>{{0, 64}, {100, 228}});
    CHECK(plan.owned_ranges(1) == std::vector<ParamRange>{{64, 100}, {228, 300}});
    CHECK(plan.owned_ranges(2).empty());
    std::vector<double> plain(300);
    for (int i = 0; i < 300; i++) plain[i] = i;
    const std::vector<OwnedPiece> pieces = plan.owned_pieces(1);
    std::vector<double> owned(plan.owned_total, -1), packed(108), back(300, -1);
    copy_pieces(pieces, &OwnedPiece::plain, plain.data(), &OwnedPiece::owned, owned.data());
    CHECK(owned[0] == 64);
    CHECK(owned[35] == 99);
    CHECK(owned[36] == -1);  // the first slice's padding
    CHECK(owned[64] == 228);
    copy_pieces(pieces, &OwnedPiece::owned, owned.data(), &OwnedPiece::packed, packed.data());
    CHECK(packed[35] == 99);
    CHECK(packed[36] == 228);
    CHECK(packed[107] == 299);
    copy_pieces(pieces, &OwnedPiece::packed, packed.data(), &OwnedPiece::plain, back.data());
    CHECK(std::count(back.begin(), back.end(), -1) == 300 - 108);
    for (const ParamRange& r : plan.owned_ranges(1))
        for (long i = r.begin; i < r.end; i++) CHECK(back[i] == i);

    std::vector<double> padded(plan.padded_total, 0), round_trip(300);
    plain_to_padded(plan, plain.data(), padded.data());
    CHECK(padded[99] == 99);
    CHECK(padded[100] == 0);  // the first bucket's padding, up to 3 x 64
    CHECK(padded[192] == 100);
    padded_to_plain(plan, padded.data(), round_trip.data());
    CHECK(round_trip == plain);
}

// One data-parallel step, simulated: every rank runs the model on its part of the batch, a reference
// all-reduce averages the gradients, each rank updates only its ZeRO-1 slices (one per bucket) with
// its own Adam moments, and an all-gather assembles the new weights.
static std::vector<double> data_parallel_step(int world, int B, int T, const std::string& shards, const ModelConfig& cfg,
                                              const std::vector<double>& params0, int steps) {
    std::vector<CpuModel<double>> ranks(world, CpuModel<double>(cfg));
    std::vector<std::unique_ptr<DataLoader>> loaders;
    for (int r = 0; r < world; r++) loaders.emplace_back(new DataLoader(shards, B, T, r, world, true, 1, cfg.vocab_size));
    const long n = ranks[0].layout.total;
    std::vector<double> params = params0, m(n, 0), v(n, 0);
    std::vector<int> in(B * T), tgt(B * T);
    for (int step = 1; step <= steps; step++) {
        std::vector<double> sum(n, 0);  // the reference all-reduce
        for (int r = 0; r < world; r++) {
            ranks[r].params = params;
            ranks[r].zero_grad();
            loaders[r]->next_batch(in.data(), tgt.data());
            ranks[r].forward(in.data(), tgt.data(), B, T);
            ranks[r].backward();
            for (long i = 0; i < n; i++) sum[i] += ranks[r].grads[i];
        }
        for (long i = 0; i < n; i++) sum[i] *= gradient_average_factor(world);
        std::vector<double> gathered(n);
        const BucketPlan plan = gradient_bucket_plan(ranks[0].layout, cfg.n_layer, world);
        for (int r = 0; r < world; r++)  // each rank updates its slices; the all-gather collects them
            for (const ParamRange& s : plan.owned_ranges(r)) {
                std::vector<double> p(params.begin() + s.begin, params.begin() + s.end);
                adamw_update(p.data(), sum.data() + s.begin, m.data() + s.begin, v.data() + s.begin, s.end - s.begin, step,
                             1e-2, 0.9, 0.999, 1e-8, 0.01, 1.0);
                std::copy(p.begin(), p.end(), gathered.begin() + s.begin);
            }
        params = gathered;
    }
    return params;
}

TEST_CASE("N ranks with micro-batch B give the same update as one rank with micro-batch N*B") {
    char tmpl[] = "/tmp/mixln_dist_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    Rng rng(2);
    std::vector<int> tokens(3000);
    for (int& t : tokens) t = (int)rng.below(17);
    write_shard(dir + "/d.bin", tokens.data(), tokens.size(), 17);
    ModelConfig cfg;
    cfg.vocab_size = 17; cfg.d_model = 8; cfg.n_head = 2; cfg.d_ffn = 12; cfg.n_layer = 2; cfg.alpha = 0.5;
    const ParamLayout layout = make_param_layout(cfg);
    std::vector<float> p0(layout.total);
    init_parameters(p0.data(), cfg, layout, 9);
    const std::vector<double> params0(p0.begin(), p0.end());
    const int B = 2, T = 6;
    for (int world : {2, 3, 5}) {
        INFO("world " << world);
        const std::vector<double> single = data_parallel_step(1, world * B, T, dir + "/d.bin", cfg, params0, 3);
        const std::vector<double> multi = data_parallel_step(world, B, T, dir + "/d.bin", cfg, params0, 3);
        double worst = 0;
        for (long i = 0; i < layout.total; i++) worst = std::max(worst, std::fabs(single[i] - multi[i]));
        CHECK(worst < 1e-10);  // double precision; only the summation order differs
        double moved = 0;
        for (long i = 0; i < layout.total; i++) moved = std::max(moved, std::fabs(single[i] - params0[i]));
        CHECK(moved > 1e-3);  // the step did something
    }
}
