// The training driver (core/trainer.h) on several ranks, with threads standing in for the processes
// and for NCCL: the CPU reference model behind a backend that sums the gradients over the ranks and
// keeps ZeRO-1's slices of Adam's moments. What the GPU trainer does with NCCL on real
// ranks, the driver does here the same way: N ranks train as one rank with the whole batch, only
// rank 0 writes the logs and the model, each rank writes its optimizer shard file, and a resume with
// the same number of ranks continues bitwise.
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include "catch_compat.h"
#include "../core/backend_cpu.h"

// The collectives, for threads: every rank puts its values in its slot, and after a barrier each
// reads all slots in rank order, so that every rank (and every run) computes the same sums.
class ThreadCollectives {
  public:
    explicit ThreadCollectives(int world) : world_(world), slots_(world) {}

    // x[0, n) summed over the ranks, in place.
    template <typename real>
    void all_reduce_sum(int rank, real* x, long n) {
        slots_[rank].assign(x, x + n);
        barrier();
        for (long i = 0; i < n; i++) x[i] = sum_of_slots<real>(i);
        barrier();  // no rank refills its slot before all have read it
    }

    // x[0, n) summed over the ranks in this rank's ZeRO-1 slices (one per bucket of plan) only, in
    // place; the rest keeps this rank's own values.
    template <typename real>
    void reduce_scatter(int rank, real* x, long n, const BucketPlan& plan) {
        slots_[rank].assign(x, x + n);
        barrier();
        for (const ParamRange& s : plan.owned_ranges(rank))
            for (long i = s.begin; i < s.end; i++) x[i] = sum_of_slots<real>(i);
        barrier();
    }

    // Each rank's ZeRO-1 slices of x[0, n) (one per bucket of plan) from that rank, in place.
    template <typename real>
    void all_gather(int rank, real* x, long n, const BucketPlan& plan) {
        slots_[rank].assign(x, x + n);
        barrier();
        for (int r = 0; r < world_; r++)
            for (const ParamRange& s : plan.owned_ranges(r))
                std::copy(slots_[r].begin() + s.begin, slots_[r].begin() + s.end, x + s.begin);
        barrier();
    }

  private:
    int world_, arrived_ = 0;
    long generation_ = 0;
    std::vector<std::vector<double>> slots_;
    std::mutex mutex_;
    std::condition_variable all_arrived_;

    template <typename real>
    real sum_of_slots(long i) const {
        real sum = 0;
        for (int r = 0; r < world_; r++) sum += (real)slots_[r][i];
        return sum;
    }

    void barrier() {
        std::unique_lock<std::mutex> lock(mutex_);
        const long generation = generation_;
        if (++arrived_ == world_) {
            arrived_ = 0;
            generation_++;
            all_arrived_.notify_all();
        } else {
            all_arrived_.wait(lock, [&] { return generation_ != generation; });
        }
    }
};

// One rank: the reference model with ZeRO-1 over the GPU trainer's gradient buckets (the embedding,
// each layer, the final norm with the LM head), as train_mixln does it: every rank holds all
// weights; reduce_gradients leaves it the summed gradients of its slices (one per bucket) only; the
// gradient norm adds the squares over its slices and sums that over the ranks; Adam's moments and the
// update are its slices' only, and an all-gather then gives every rank the updated slices of the
// others (and, for -y, all summed gradients). In double the ranks match one
// rank tightly; in float (train_mixln_cpu's type) a checkpoint, fp32, holds the state exactly.
template <typename real>
struct RankBackend : CpuBackend<real> {
    using CpuBackend<real>::model;
    using CpuBackend<real>::m;
    using CpuBackend<real>::v;
    ThreadCollectives& net;
    int rank;
    BucketPlan plan;
    std::vector<ParamRange> owned;  // this rank's slices
    int calls = 0, planted_call = 0;  // planted_call > 0: before that optimizer step, one gradient of this rank's is `planted`
    float planted = 0;

    RankBackend(const ModelConfig& cfg, ThreadCollectives& net_, int rank_, int world)
        : CpuBackend<real>(cfg), net(net_), rank(rank_), plan(gradient_bucket_plan(model.layout, cfg.n_layer, world)),
          owned(plan.owned_ranges(rank_)) {}

    void reduce_gradients(bool stop) override {
        net.reduce_scatter(rank, model.grads.data(), model.layout.total, plan);
        double sums[2] = {this->step.loss, stop ? 1.0 : 0.0};
        net.all_reduce_sum(rank, sums, 2);
        this->step.loss = sums[0];
        this->step.stop = sums[1] > 0;
    }
    void read_grads(float* grads) override {
        net.all_gather(rank, model.grads.data(), model.layout.total, plan);
        CpuBackend<real>::read_grads(grads);
    }
    double all_reduce_sum(double x) override {
        net.all_reduce_sum(rank, &x, 1);
        return x;
    }
    std::vector<ParamRange> optimizer_ranges(long) const override { return owned; }
    // The norm adds the squares over this rank's slices and sums that over the ranks; AdamW updates
    // its slices; the all-gather brings the others'.
    void optimizer_step(double lr, int t, const TrainOptions& o) override {
        if (++calls == planted_call) model.grads[owned[0].begin] = planted;  // a test's non-finite gradient, this rank's only
        double squares = 0;
        for (const ParamRange& s : owned)
            for (long i = s.begin; i < s.end; i++) squares += (double)model.grads[i] * model.grads[i];
        net.all_reduce_sum(rank, &squares, 1);
        this->step.grad_norm = std::sqrt(squares);
        this->step.skipped = update_skipped(this->step.grad_norm);
        if (this->step.skipped) return;  // every rank: the norm is the same on all
        const real clip = (real)grad_clip_scale(this->step.grad_norm, o.grad_clip);
        for (const ParamRange& s : owned) {
            const long b = s.begin;
            adamw_update(model.params.data() + b, model.grads.data() + b, m.data() + b, v.data() + b, s.end - b, t,
                         (real)lr, (real)o.beta1, (real)o.beta2, (real)o.adam_eps, (real)o.weight_decay, clip);
        }
        net.all_gather(rank, model.params.data(), model.layout.total, plan);
    }
    // The moments cross the interface packed: the owned ranges' back to back.
    void read_state(float* params, float* m_out, float* v_out) override {
        std::copy(model.params.begin(), model.params.end(), params);
        for (const ParamRange& s : owned) {
            m_out = std::copy(m.begin() + s.begin, m.begin() + s.end, m_out);
            v_out = std::copy(v.begin() + s.begin, v.begin() + s.end, v_out);
        }
    }
    void write_state(const float* params, const float* m_in, const float* v_in) override {
        CpuBackend<real>::write_state(params, nullptr, nullptr);
        if (!m_in || !v_in) return;  // a fresh optimizer
        for (const ParamRange& s : owned) {
            const long n = s.end - s.begin;
            std::copy(m_in, m_in + n, m.begin() + s.begin);
            std::copy(v_in, v_in + n, v.begin() + s.begin);
            m_in += n;
            v_in += n;
        }
    }
};

// run_training on `world` threads standing in for ranks. Returns their exit code (the same on all);
// throws the first rank's error, if one failed.
// planted: before its optimizer step planted.first, rank 1's first owned gradient is set to planted.second.
template <typename real>
static int train_on_ranks(const TrainOptions& o, int world, std::pair<int, float> planted = {0, 0.0f}) {
    ThreadCollectives net(world);
    std::vector<int> status(world, 0);
    std::vector<std::string> errors(world);
    std::vector<std::thread> ranks;
    for (int r = 0; r < world; r++)
        ranks.emplace_back([&, r] {
            DistributedEnv env;
            env.rank = env.local_rank = r;
            env.world_size = world;
            env.launcher = "threads";
            try {
                status[r] = run_training(o, [&](const ModelConfig& cfg) {
                    RankBackend<real>* b = new RankBackend<real>(cfg, net, r, world);
                    if (r == 1) { b->planted_call = planted.first; b->planted = planted.second; }
                    return std::unique_ptr<TrainerBackend>(b);
                }, env);
            } catch (const std::exception& e) {
                errors[r] = e.what();
            }
        });
    for (std::thread& t : ranks) t.join();
    for (int r = 0; r < world; r++)
        if (!errors[r].empty()) throw std::runtime_error("rank " + std::to_string(r) + ": " + errors[r]);
    for (int r = 1; r < world; r++) CHECK(status[r] == status[0]);
    return status[0];
}

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_ranks_XXXXXX";
    return mkdtemp(tmpl);
}

static std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The rows of a CSV file as numbers: log.csv's for split ("train" or "val": step, loss, lr, grad
// norm), or with split "" all but the header (grad_norms.csv).
static std::vector<std::vector<double>> csv_rows(const std::string& csv, const std::string& split) {
    std::istringstream in(read_file(csv));
    std::string line;
    std::getline(in, line);  // the header
    std::vector<std::vector<double>> rows;
    while (std::getline(in, line)) {
        if (!split.empty() && line.find("," + split + ",") == std::string::npos) continue;
        std::vector<double> row;
        std::istringstream fields(line);
        std::string field;
        while (std::getline(fields, field, ','))
            if (field != split) row.push_back(std::atof(field.c_str()));
        rows.push_back(row);
    }
    return rows;
}

// A small model on a noisy repeating pattern over 64 ids, micro-batches of b x 16 tokens, 2
// accumulation steps of `world` ranks per step, 6 steps, a checkpoint and the layers' gradient norms
// every 3.
static TrainOptions options(const std::string& dir, const std::string& out, int b, int world, int val_batches) {
    if (!std::filesystem::exists(dir + "/train.bin")) {
        Rng rng(5);
        std::vector<int> tokens(20000);
        for (size_t i = 0; i < tokens.size(); i++) tokens[i] = rng.uniform() < 0.8 ? (int)(i * 7 % 64) : (int)rng.below(64);
        write_shard(dir + "/train.bin", tokens.data(), tokens.size(), 64);
    }
    std::vector<std::string> args = {"train", "-e", "tiny", "-L", "3", "-C", "32", "-H", "2", "-F", "48", "-a", "0.34",
                                     "-i", dir + "/train.bin", "-j", dir + "/train.bin", "-m", std::to_string(val_batches),
                                     "-v", "3", "-b", std::to_string(b), "-t", "16", "-d", std::to_string(2 * 16 * b * world),
                                     "-x", "6", "-c", "3", "-y", "3", "-k", "0", "-l", "1e-2", "-w", "0.1", "-o", dir + "/" + out};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    return parse_train_options((int)argv.size(), argv.data());
}

TEST_CASE("a step's tokens (-d) must split into micro-batches of every rank") {
    TrainOptions o;
    o.micro_batch = 4; o.seq_len = 16; o.total_batch = 128;
    CHECK(accumulation_steps(o, 2) == 1);
    std::string error;
    try { accumulation_steps(o, 3); } catch (const std::exception& e) { error = e.what(); }
    CHECK(error == "-d 128 is not a multiple of -b x -t x 3 ranks = 192 tokens");
}

TEST_CASE("N ranks train as one rank with the whole batch; rank 0 writes the logs, each rank its optimizer shard") {
    const std::string dir = temp_dir();
    const int b = 2;
    for (const int world : {2, 3}) {
        INFO(world << " ranks");
        const std::string one = "one_" + std::to_string(world), many = "ranks_" + std::to_string(world);
        // One rank evaluates 2 batches of world x b sequences, the ranks 2 x world batches of b: the same sequences.
        REQUIRE(train_on_ranks<double>(options(dir, one, world * b, 1, 2), 1) == 0);
        REQUIRE(train_on_ranks<double>(options(dir, many, b, world, 2 * world), world) == 0);

        // Rows written once, by rank 0; the numbers (9 digits) those of one rank, up to summation order.
        for (const char* split : {"train", "val", ""}) {
            const std::string csv = split[0] ? "/log.csv" : "/grad_norms.csv";
            const std::vector<std::vector<double>> expected = csv_rows(dir + "/" + one + csv, split);
            const std::vector<std::vector<double>> got = csv_rows(dir + "/" + many + csv, split);
            REQUIRE(got.size() == (split == std::string("val") ? 2 : 6));  // 2 x 3 layers of gradient norms
            REQUIRE(expected.size() == got.size());
            for (size_t i = 0; i < got.size(); i++)
                for (size_t j = 0; j < got[i].size(); j++) CHECK(got[i][j] == Approx(expected[i][j]).epsilon(1e-7));
        }

        // ckpt_STEP.bin holds the weights, the shard files the moments; together they are the single rank's.
        const Checkpoint single = load_checkpoint(checkpoint_path(dir + "/" + one, 6));
        const std::string path = checkpoint_path(dir + "/" + many, 6);
        const Checkpoint sharded = load_checkpoint(path);
        CHECK(sharded.state.world_size == world);
        CHECK(sharded.state.optimizer_shards == world);
        CHECK(sharded.m.empty());
        double worst = 0;
        for (size_t i = 0; i < single.params.size(); i++) worst = std::max(worst, (double)std::fabs(single.params[i] - sharded.params[i]));
        std::vector<int> holders(single.params.size(), 0);  // the shard files that hold each parameter's moments
        for (int r = 0; r < world; r++) {
            const OptimizerShard part = load_optimizer_shard(optimizer_shard_path(path, r));
            CHECK(part.rank == r);
            CHECK(part.ranges.size() > 1);  // a slice of several buckets
            long k = 0;  // the moments follow the ranges in order
            for (const ParamRange& s : part.ranges)
                for (long i = s.begin; i < s.end; i++, k++) {
                    holders[i]++;
                    worst = std::max({worst, (double)std::fabs(part.m[k] - single.m[i]), (double)std::fabs(part.v[k] - single.v[i])});
                }
        }
        CHECK(std::count(holders.begin(), holders.end(), 1) == (long)holders.size());
        CHECK(worst < 1e-6);  // fp32 files of a double model: only the last bits of the summation order differ
        CHECK(!std::filesystem::exists(optimizer_shard_path(path, world)));
    }
}

TEST_CASE("resuming with the same number of ranks continues bitwise; another number is refused") {
    const std::string dir = temp_dir();
    const int world = 2;
    REQUIRE(train_on_ranks<float>(options(dir, "straight", 2, world, 2), world) == 0);

    // A fresh directory holding only the step 3 checkpoint: its main file and each rank's shard.
    std::filesystem::create_directories(dir + "/resumed");
    const std::string from = checkpoint_path(dir + "/straight", 3), to = checkpoint_path(dir + "/resumed", 3);
    std::filesystem::copy_file(from, to);
    for (int r = 0; r < world; r++) std::filesystem::copy_file(optimizer_shard_path(from, r), optimizer_shard_path(to, r));
    TrainOptions o = options(dir, "resumed", 2, world, 2);
    o.resume = dir + "/resumed";
    REQUIRE(train_on_ranks<float>(o, world) == 0);
    const std::string straight = checkpoint_path(dir + "/straight", 6), resumed = checkpoint_path(dir + "/resumed", 6);
    CHECK((read_file(resumed) == read_file(straight)));
    for (int r = 0; r < world; r++)
        CHECK((read_file(optimizer_shard_path(resumed, r)) == read_file(optimizer_shard_path(straight, r))));
    const std::vector<std::vector<double>> all = csv_rows(dir + "/straight/log.csv", "train");
    CHECK(csv_rows(dir + "/resumed/log.csv", "train") == std::vector<std::vector<double>>(all.begin() + 3, all.end()));

    TrainOptions three = options(dir, "resumed", 2, 3, 2);
    three.resume = dir + "/resumed";
    std::string error;
    try { train_on_ranks<float>(three, 3); } catch (const std::exception& e) { error = e.what(); }
    CHECK(error.find("on 2 rank(s); resume with the same values") != std::string::npos);
}

TEST_CASE("an inf gradient on one rank skips the update on every rank: the norm is global") {
    const std::string dir = temp_dir();
    const int world = 2;
    REQUIRE(train_on_ranks<float>(options(dir, "straight", 2, world, 2), world) == 0);
    REQUIRE(train_on_ranks<float>(options(dir, "skipped", 2, world, 2), world, {2, std::numeric_limits<float>::infinity()}) == 0);
    const std::string log = read_file(dir + "/skipped/log.csv");
    CHECK(log.find("\n2,skipped,") != std::string::npos);
    CHECK(log.find(",inf\n") != std::string::npos);
    CHECK(csv_rows(dir + "/skipped/log.csv", "train").size() == 5);
    // step 1 as the straight run; the skipped step in the checkpoint's count, no NaN in its weights
    const Checkpoint straight = load_checkpoint(checkpoint_path(dir + "/straight", 3)), skipped = load_checkpoint(checkpoint_path(dir + "/skipped", 3));
    CHECK(skipped.state.skipped_steps == 1);
    CHECK(straight.state.skipped_steps == 0);
    for (float p : skipped.params) REQUIRE(std::isfinite(p));
    CHECK(csv_rows(dir + "/skipped/log.csv", "train")[0] == csv_rows(dir + "/straight/log.csv", "train")[0]);
}
