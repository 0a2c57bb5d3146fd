// Data-parallel logic on the CPU: launcher environments, ZeRO-1 shard ranges for world sizes 1-8
// (including sizes that do not divide the parameter count), and a simulated multi-rank step where N
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

TEST_CASE("ZeRO-1 shards cover every parameter exactly once, for world sizes 1-8, in 16-byte aligned slices") {
    for (long n : {1L, 7L, 64L, 1000L, 1001L, 123457L}) {
        for (int world = 1; world <= 8; world++) {
            INFO("n=" << n << " world=" << world);
            long covered = 0, expected_begin = 0;
            for (int r = 0; r < world; r++) {
                const ZeroShard s = zero_shard(n, r, world);
                CHECK(s.begin == expected_begin);
                CHECK(s.end >= s.begin);
                CHECK(s.end - s.begin <= s.shard_size);
                CHECK(s.padded_total == s.shard_size * world);
                CHECK(s.padded_total >= n);
                // Padding: less than one aligned block per rank (none on one rank).
                CHECK(s.padded_total - n < (world == 1 ? 1 : world * ZERO_SHARD_ALIGN));
                // Each slice of a flat bf16 buffer (2 bytes per element) starts on a 16-byte boundary.
                CHECK(r * s.shard_size * 2 % 16 == 0);
                covered += s.end - s.begin;
                expected_begin = s.end;
            }
            CHECK(covered == n);
        }
    }
}

// One data-parallel step, simulated: every rank runs the model on its part of the batch, a reference
// all-reduce averages the gradients, each rank updates only its ZeRO-1 slice with its own Adam
// moments, and an all-gather assembles the new weights.
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
        for (int r = 0; r < world; r++) {  // each rank updates its slice; the all-gather collects them
            const ZeroShard s = zero_shard(n, r, world);
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
