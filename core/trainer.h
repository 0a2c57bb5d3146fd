// The training driver shared by the CPU and GPU trainers: options -> model config -> data -> the
// step loop (gradient accumulation, clipping, the paper's schedule, AdamW), validation, logging,
// checkpoints, resume, skipping the update of a step whose gradient norm is not finite, and stopping
// cleanly on a NaN loss, on too many skipped steps in a row, or on a signal. A trainer supplies a
// backend that computes; everything that decides *what* is computed lives here, once. With data
// parallelism every rank (process) runs this loop with its own backend; see run_training.
#pragma once
#include <sys/stat.h>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>
#include "analysis.h"
#include "checkpoint.h"
#include "cli.h"
#include "distributed.h"
#include "run_dir.h"
#include "sample.h"
#include "schedule.h"
#include "../tokenizer/tokenizer.h"
#include "../dataloader.h"

// What a step reports: StepResult, read once per step by step_result().
struct StepResult {
    double loss = 0;       // the whole batch's mean loss (all micro-batches of all ranks)
    double grad_norm = 0;  // the global L2 norm of the summed gradients, before clipping
    bool skipped = false;  // the norm was not finite (update_skipped): the update changed nothing
    bool stop = false;     // a rank was asked to stop (a signal) by the time of its reduce_gradients
};

// What a trainer's model must do. Weights and Adam moments cross this interface as fp32 arrays in
// the layout of core/config.h, whatever precision the backend computes in. With several ranks, the
// calls marked "collective" must be made by every rank, in the same order; a backend of one process
// keeps the defaults of the data-parallel hooks.
//
// A training step is zero_grad, forward_backward per micro-batch, reduce_gradients, optimizer_step,
// then step_result: only step_result waits for the backend's work (a GPU's stream); the calls before
// it may return as soon as their work is queued, so that the host prepares the next batches while
// the device computes.
struct TrainerBackend {
    virtual ~TrainerBackend() = default;
    virtual std::string description() const = 0;
    virtual double peak_flops() const = 0;  // per second, for MFU; 0 if unknown (MFU not printed)
    virtual void zero_grad() = 0;  // the gradients and the step's loss
    // Forward and backward on one micro-batch (B, T): accumulates the gradient of loss_scale * mean
    // loss, and adds loss_scale * mean loss into the step's loss, both kept in the backend (no wait).
    // last_micro marks the step's last micro-batch: a data-parallel backend may start summing each
    // layer's gradients over the ranks during its backward.
    virtual void forward_backward(const int* inputs, const int* targets, int B, int T, float loss_scale,
                                  bool last_micro) = 0;
    virtual float forward_loss(const int* inputs, const int* targets, int B, int T) = 0;  // the mean loss
    // The V logits after the last of T tokens (batch of one).
    virtual void next_token_logits(const int* tokens, int T, float* logits) = 0;
    // After a step's micro-batches: sums the gradients and the step's loss over the ranks (each rank's
    // already carry the factor 1/world of the loss scale), so that optimizer_step, read_grads and
    // step_result see the mean gradient and loss of the whole batch, and with them whether any rank
    // was asked to stop (stop: this one was), so that every rank stops after the same step. Collective.
    virtual void reduce_gradients(bool stop) = 0;
    virtual double all_reduce_sum(double x) { return x; }  // x summed over the ranks. Collective.
    // The parameters whose Adam moments this rank holds, as ascending ranges of the layout: all
    // n_params, unless the backend splits them over the ranks (ZeRO-1: its slice of every gradient
    // bucket, BucketPlan::owned_ranges).
    virtual std::vector<ParamRange> optimizer_ranges(long n_params) const { return {ParamRange{0, n_params}}; }
    // The gradient norm, the clipping factor grad_clip_scale(norm, o.grad_clip) of
    // kernels/cpu/adamw.h, and AdamW step t (1-based) at learning rate lr on the clipped gradients;
    // the gradients themselves stay as they are. If update_skipped(norm) (inf or NaN), it changes
    // nothing (weights, moments) and step_result says so. Collective.
    virtual void optimizer_step(double lr, int t, const TrainOptions& o) = 0;
    // The step's loss (after reduce_gradients), the norm of its optimizer_step (0 before one) and
    // whether that skipped the update: waits for the step's work, the one wait of a step.
    virtual StepResult step_result() = 0;
    // params: all P weights, complete on rank 0 at least (gathered from the ranks' slices); m, v: the
    // moments of the optimizer ranges' parameters, in order. Collective.
    virtual void read_state(float* params, float* m, float* v) = 0;
    virtual void read_grads(float* grads) = 0;  // the reduced gradients, all P, fp32. Collective.
    // params: all P weights; m, v: the moments of the optimizer ranges' parameters, or null for zeros.
    virtual void write_state(const float* params, const float* m, const float* v) = 0;
};

using BackendFactory = std::function<std::unique_ptr<TrainerBackend>(const ModelConfig&)>;

static volatile std::sig_atomic_t g_stop_signal = 0;
static void request_stop(int sig) { g_stop_signal = sig; }

inline void make_directories(const std::string& path) {
    std::string partial;
    std::stringstream ss(path);
    std::string part;
    if (!path.empty() && path[0] == '/') partial = "/";
    while (std::getline(ss, part, '/')) {
        if (part.empty()) continue;
        partial += part + "/";
        if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
            throw std::runtime_error("cannot create directory '" + partial + "': " + strerror(errno));
    }
}

// The model config of a run: from the checkpoint when resuming or fine-tuning (model flags given on
// the command line must agree with it), else from the flags, with the vocabulary of the shards.
inline ModelConfig resolve_model_config(const TrainOptions& o, const Checkpoint* ck) {
    if (!ck) {
        ModelConfig cfg = o.model;
        if (!o.given.count('V')) {
            uint32_t vocab = 0;
            for (const std::string& f : expand_shard_pattern(o.train_files)) vocab = std::max(vocab, read_shard_header(f).vocab_size);
            if (vocab == 0) throw std::runtime_error("the training shards do not record their vocabulary size: set -V");
            cfg.vocab_size = (int)vocab;
        }
        return cfg;
    }
    ModelConfig cfg = ck->cfg;  // max_seq_len: the length it was trained at, unless -t says otherwise
    if (o.given.count('t')) cfg.max_seq_len = o.seq_len;
    const ModelConfig& m = o.model;
    struct Check { char flag; bool differs; };
    const Check checks[] = {{'e', m.n_layer != cfg.n_layer || m.d_model != cfg.d_model || m.n_head != cfg.n_head || m.d_ffn != cfg.d_ffn},
                            {'L', m.n_layer != cfg.n_layer}, {'C', m.d_model != cfg.d_model}, {'H', m.n_head != cfg.n_head},
                            {'F', m.d_ffn != cfg.d_ffn}, {'V', m.vocab_size != cfg.vocab_size}, {'a', m.alpha != cfg.alpha},
                            {'n', m.norm != cfg.norm}, {'S', m.scaled_init != cfg.scaled_init}, {'E', m.scaled_embed != cfg.scaled_embed}};
    for (const Check& c : checks)
        if (o.given.count(c.flag) && c.differs)
            throw std::runtime_error(std::string("-") + c.flag + " disagrees with the checkpoint's model; drop it to use the checkpoint's");
    return cfg;
}

// The checkpoint of -r or -f, verified; for a directory, its newest checkpoint that verifies, saying
// which newer ones did not (on rank 0). Null if neither flag is given.
inline std::unique_ptr<FoundCheckpoint> load_start_checkpoint(const TrainOptions& o, bool lead) {
    const std::string from = !o.resume.empty() ? o.resume : o.init_from;  // the parser allows one of them
    if (from.empty()) return nullptr;
    const char* flag = !o.resume.empty() ? "-r" : "-f";
    std::unique_ptr<FoundCheckpoint> found;
    try {
        found.reset(new FoundCheckpoint(find_checkpoint(from)));
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string(flag) + ": " + e.what());
    }
    if (lead) {
        for (const std::string& why : found->skipped) fprintf(stderr, "warning: %s: skipping %s\n", flag, why.c_str());
        if (!found->skipped.empty()) fprintf(stderr, "%s: falling back to %s, the newest checkpoint that verifies\n", flag, found->path.c_str());
    }
    return found;
}

// The vocabulary -G decodes with when training: -z, else vocab.bin beside the first training shard.
inline std::string training_vocabulary_path(const TrainOptions& o) {
    return !o.vocab_file.empty() ? o.vocab_file : directory_of(expand_shard_pattern(o.train_files)[0]) + "/vocab.bin";
}

// The vocabulary -G decodes with when only evaluating or sampling (-x 0, no training shards): -z,
// else vocab.bin beside the first -j shard, else vocab.bin beside the first training shard of the
// checkpoint's run, as run.txt beside the checkpoint records it (if the record is that run's).
// Throws naming every place it looked.
inline std::string evaluate_or_sample_vocabulary_path(const TrainOptions& o, const std::string& ck_path, const Checkpoint& ck) {
    if (!o.vocab_file.empty()) return o.vocab_file;
    auto exists = [](const std::string& p) { struct stat st; return stat(p.c_str(), &st) == 0; };
    std::string tried;
    if (!o.val_files.empty()) {
        const std::string beside_val = directory_of(expand_shard_pattern(o.val_files)[0]) + "/vocab.bin";
        if (exists(beside_val)) return beside_val;
        tried = "no " + beside_val + " beside -j's shards; ";
    }
    const std::string ck_dir = directory_of(ck_path);
    RunRecord record;
    try { record = read_run_record(ck_dir); } catch (const std::exception&) {}
    std::string train_files;
    for (const auto& f : record.flags) if (f.first == "-i") train_files = f.second;
    if (record.run_id != 0 && record.run_id == ck.state.run_id && !train_files.empty()) {
        const std::string beside_train = directory_of(train_files.substr(0, train_files.find(','))) + "/vocab.bin";
        if (exists(beside_train)) return beside_train;
        tried += "no " + beside_train + " beside the training shards (-i " + train_files + ") that " + run_record_path(ck_dir) + " records";
    } else {
        tried += "no record of the checkpoint's training shards (" + run_record_path(ck_dir) +
                 (record.run_id == 0 ? " is missing or unreadable)" : " is another run's)");
    }
    throw std::runtime_error("-G needs a vocabulary to decode with (-z FILE): " + tried);
}

// The vocabulary at path, for -G. Loaded before the first step, so that a missing or bad file stops
// the run before it trains.
inline std::unique_ptr<Tokenizer> load_sample_vocabulary(const TrainOptions& o, const ModelConfig& cfg, const std::string& vocab) {
    std::unique_ptr<Tokenizer> tok;
    try {
        tok.reset(new Tokenizer(vocab));
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string("-G needs a vocabulary to decode with (-z FILE): ") + e.what());
    }
    if (tok->vocab_size() > cfg.vocab_size)
        throw std::runtime_error("vocabulary '" + vocab + "' has " + std::to_string(tok->vocab_size()) + " tokens, more than the model's " + std::to_string(cfg.vocab_size));
    tok->encode(o.prompt);  // throws if the prompt has a byte the vocabulary cannot encode
    return tok;
}

// The largest batch a run computes on, for a backend to size its memory: -b x -t when training; with
// -x 0, -b sequences of the model's length (-t, else the checkpoint's) to evaluate, or one to sample.
inline std::pair<int, int> largest_batch(const TrainOptions& o, const ModelConfig& cfg) {
    if (o.steps > 0) return {o.micro_batch, o.seq_len};
    return {o.val_files.empty() ? 1 : o.micro_batch, cfg.max_seq_len};
}

// A CSV log whose first column is the step: log.csv ("step,split,loss,lr,grad_norm") and, with -y,
// grad_norms.csv. On resume, the rows past the checkpoint's step (written by the run that died) are
// dropped so the log matches the run.
class CsvLog {
  public:
    CsvLog(const std::string& path, const std::string& header, int64_t resume_step) {
        std::vector<std::string> keep;
        if (resume_step > 0) {
            std::ifstream in(path);
            std::string line;
            while (std::getline(in, line))
                if (line == header || std::atoll(line.c_str()) <= resume_step) keep.push_back(line);
        }
        f_ = fopen(path.c_str(), "w");
        if (!f_) throw std::runtime_error("cannot write '" + path + "': " + strerror(errno));
        if (keep.empty()) keep.push_back(header);
        for (const std::string& l : keep) fprintf(f_, "%s\n", l.c_str());
        fflush(f_);
    }
    ~CsvLog() { fclose(f_); }
    CsvLog(const CsvLog&) = delete;
    CsvLog& operator=(const CsvLog&) = delete;
    void row(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        va_list args;
        va_start(args, fmt);
        vfprintf(f_, fmt, args);
        va_end(args);
        fputc('\n', f_);
        fflush(f_);
    }
  private:
    FILE* f_ = nullptr;
};

inline std::string format_duration(double seconds) {
    char buf[32];
    const long s = (long)seconds;
    if (s >= 3600) snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
    return buf;
}

struct Evaluation {
    double loss;       // the mean of the batches' mean losses
    long batches;
    uint64_t tokens;   // input tokens, padding not counted
};

// The validation loss over the first batches of the validation set: n_batches of them or, with a
// token budget (max_tokens > 0), as many as the official Mix-LN code's evaluate_model takes: batches
// until more than max_tokens input tokens (padding not counted) were seen, the batch that crosses
// the budget included; fewer if the set ends first. The loss is the mean of the batches' mean
// losses, as there (which divides their sum by the number of batches plus one, an off-by-one we do
// not copy). val is the whole set on every rank; rank r computes batches r, r + world, ...: the
// batches of one rank, in parallel. Collective.
inline Evaluation evaluate(TrainerBackend& backend, DataLoader& val, int n_batches, long max_tokens, int B, int T,
                           const DistributedEnv& dist) {
    std::vector<int> in((size_t)B * T), tgt((size_t)B * T);
    val.reset();
    const uint64_t available = val.batches_per_epoch();
    double sum = 0;
    Evaluation e{0, 0, 0};
    while ((uint64_t)e.batches < available && (max_tokens > 0 ? e.tokens <= (uint64_t)max_tokens : e.batches < n_batches)) {
        e.tokens += val.next_batch(in.data(), tgt.data());
        if (e.batches % dist.world_size == dist.rank) sum += backend.forward_loss(in.data(), tgt.data(), B, T);
        e.batches++;
    }
    e.loss = backend.all_reduce_sum(sum) / e.batches;
    return e;
}

// Prints n tokens of text continuing the prompt, decoded with the run's vocabulary.
inline void print_sample(TrainerBackend& backend, const TrainOptions& o, const ModelConfig& cfg, const Tokenizer& tok, Rng& rng) {
    std::vector<int> tokens = tok.encode(o.prompt);
    if (tokens.empty() && tok.eot_id() >= 0) tokens.push_back(tok.eot_id());
    if (tokens.empty()) {  // no prompt and no end-of-text token: start from a newline, or else id 0
        std::vector<int> newline;
        try { newline = tok.encode("\n"); } catch (const std::exception&) {}
        tokens.push_back(newline.empty() ? 0 : newline[0]);
    }
    const size_t prompt_len = tokens.size();
    generate(tokens, o.sample_tokens, cfg.max_seq_len, cfg.vocab_size, o.temperature, rng,
             [&](const int* ctx, int T, float* logits) { backend.next_token_logits(ctx, T, logits); });
    const std::vector<int> continuation(tokens.begin() + prompt_len, tokens.end());
    printf("sample (temperature %g):\n%s%s\n", o.temperature, o.prompt.c_str(), tok.decode(continuation).c_str());
    fflush(stdout);
}

// Runs f on every rank, then tells every rank whether it threw anywhere: if so, all of them throw
// (a rank that failed with its own message), so that none waits for a failed one at the next
// collective. Collective.
inline void on_all_ranks(TrainerBackend& backend, const std::function<void()>& f) {
    std::string error;
    try { f(); } catch (const std::exception& e) { error = e.what(); }
    const double failed_ranks = backend.all_reduce_sum(error.empty() ? 0 : 1);
    if (!error.empty()) throw std::runtime_error(error);
    if (failed_ranks > 0) throw std::runtime_error("stopping: another rank failed (see its message)");
}

// -x 0: the validation loss over -m batches (or tokens) of -j and/or a sample of -G tokens, from the
// weights of -f; the model, and the sequence length unless -t gives one, are the checkpoint's. Writes
// nothing: no directory, log or checkpoint.
inline int evaluate_or_sample(const TrainOptions& o, const FoundCheckpoint& found, const BackendFactory& make_backend,
                              const DistributedEnv& dist) {
    const ModelConfig cfg = resolve_model_config(o, &found.ck);
    const int B = o.micro_batch, T = cfg.max_seq_len;
    std::unique_ptr<Tokenizer> vocab;  // first: a missing vocabulary stops before a long evaluation
    if (o.sample_tokens > 0) vocab = load_sample_vocabulary(o, cfg, evaluate_or_sample_vocabulary_path(o, found.path, found.ck));
    std::unique_ptr<DataLoader> val;
    if (!o.val_files.empty()) val.reset(new DataLoader(o.val_files, B, T, 0, 1, /*shuffle=*/false, 0, cfg.vocab_size));
    std::unique_ptr<TrainerBackend> backend = make_backend(cfg);
    backend->write_state(found.ck.params.data(), nullptr, nullptr);
    const bool lead = dist.rank == 0;
    if (lead) {
        printf("%s\nmodel: %s, %d layers, d %d, %d heads, ffn %d, vocab %d, %.2fM parameters, sequence length %d\n",
               backend->description().c_str(), found.path.c_str(), cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ffn,
               cfg.vocab_size, num_model_parameters(cfg) / 1e6, T);
        fflush(stdout);
    }
    if (val) {
        const Evaluation e = evaluate(*backend, *val, o.val_batches, o.val_tokens, B, T, dist);
        if (lead) printf("val loss %.6f | val ppl %.4f | %ld batches of %d x %d tokens of %s, %.3gM tokens%s\n", e.loss, std::exp(e.loss),
                         e.batches, B, T, o.val_files.c_str(), e.tokens / 1e6, val->padded() ? " (padded documents)" : "");
        fflush(stdout);
    }
    Rng rng(o.seed ^ 0x5EEDull);
    if (lead && vocab) print_sample(*backend, o, cfg, *vocab, rng);
    return 0;
}

// Which run owns the output directory: a new run's fresh id, or the resumed checkpoint's. Checks and
// claims the directory (the rules of core/run_dir.h) on rank 0; every rank gets the id.
struct RunIdentity {
    uint64_t id = 0;
    bool owns_unknown = false;  // resuming a checkpoint without a run id (converted from version 1): the directory's
                                // other checkpoints without one count as this run's
    bool owns(const std::string& checkpoint) const {
        const uint64_t c = checkpoint_run_id(checkpoint);
        return c == id || (owns_unknown && c == 0);
    }
};

inline uint64_t claim_run_directory(const TrainOptions& o, const std::string& ck_path, const Checkpoint* resumed) {
    const uint64_t id = resumed && resumed->state.run_id != 0 ? resumed->state.run_id : new_run_id();
    const RunRecord now = make_run_record(id, o);
    std::vector<uint64_t> ids = {id};
    bool logs_are_ours = false;
    if (resumed) {
        const std::string ck_dir = directory_of(ck_path);
        const RunRecord recorded = read_run_record(ck_dir);
        if (recorded.run_id != 0 && recorded.run_id == resumed->state.run_id) {
            const std::string changes = run_flag_changes(recorded, now);
            if (!changes.empty() && !o.accept_changes)
                throw std::runtime_error("-r: these flags differ from the run's (" + run_record_path(ck_dir) + "): " + changes +
                                         "; resume with the run's values, or add -U 1 if the change is meant");
            if (!changes.empty()) printf("note: -U 1: continuing run %llu with changed flags: %s\n", (unsigned long long)id, changes.c_str());
        } else {
            fprintf(stderr, "note: no record of the flags of %s's run (%s%s): they cannot be compared with this run's\n",
                    ck_path.c_str(), run_record_path(ck_dir).c_str(), recorded.run_id ? " is another run's" : " is missing");
        }
        if (resumed->state.run_id == 0) ids.push_back(0);
        logs_are_ours = same_directory(o.out_dir, ck_dir);
    }
    make_directories(o.out_dir);
    const std::string other = other_run_in(o.out_dir, ids, logs_are_ours);
    if (!other.empty()) {
        if (!o.start_over)
            throw std::runtime_error("-o " + o.out_dir + " holds another run's files (" + other + "): " +
                                     (resumed ? "choose another -o" : "resume that run with -r " + o.out_dir +
                                      ", choose another -o, or start over with -W 1 (deletes them)"));
        remove_run_files(o.out_dir);
        printf("-W 1: deleted the previous run's files from %s (%s)\n", o.out_dir.c_str(), other.c_str());
    }
    write_run_record(o.out_dir, now);
    return id;
}

// ----------------------------------------------------------------------------
// A training run in stages, as llm.c's main loop reads: set-up (the start checkpoint, the model
// config, the data, the backend, its starting state, the output directory), then per step one
// optimizer step, its log lines, validation and checkpointing, then the end of the run. TrainingRun
// holds what the stages share.

struct TrainingRun {
    const TrainOptions& o;
    DistributedEnv dist;
    bool lead;                  // rank 0: prints and writes log.csv, grad_norms.csv and ckpt_STEP.bin
    int B, T, world, accum_steps;
    float loss_scale;           // of each micro-batch's mean loss (core/distributed.h)
    ModelConfig cfg;
    ParamLayout layout;
    std::unique_ptr<Tokenizer> vocab;   // -G's, else null
    std::unique_ptr<DataLoader> train;  // this rank's part of every batch
    std::unique_ptr<DataLoader> val;    // all of it on every rank: evaluate() shares out the batches; null without -j
    std::unique_ptr<TrainerBackend> backend;
    std::vector<ParamRange> owned;      // the parameters whose Adam moments this rank holds
    long owned_count = 0;
    bool sharded_moments = false;       // ZeRO-1 on several ranks
    RunIdentity run;
    std::unique_ptr<CsvLog> log, grad_log;  // rank 0's
    LrSchedule schedule;
    double flops_per_step = 0;
    Rng rng;                            // the sample's
    int64_t start_step = 0;
    int64_t skipped_total = 0;          // steps whose update a non-finite gradient norm skipped, the run's
    int skipped_in_a_row = 0;           // ... of the latest steps, since this process started
    bool checkpoint_deferred = false;   // one was due at a skipped step: written after the next update
    double elapsed_total = 0;           // seconds of the steps after this process's first
    std::vector<int> inputs, targets;   // a micro-batch
    std::vector<float> grads_host;      // -y's copy of the gradients

    TrainingRun(const TrainOptions& options, const DistributedEnv& env)
        : o(options), dist(env), lead(env.rank == 0), B(options.micro_batch), T(options.seq_len), world(env.world_size),
          accum_steps(accumulation_steps(options, env.world_size)),
          // Each rank's gradient is the mean over its own tokens, times 1/world: the sum over the ranks
          // is the mean over the whole batch (core/distributed.h).
          loss_scale((float)gradient_average_factor(env.world_size) / accum_steps),
          rng(options.seed ^ 0x5EEDull), inputs((size_t)B * T), targets((size_t)B * T) {}
};

// Set-up, the model: its config (the checkpoint's, or the flags'), layout and -G's vocabulary.
inline void set_up_model(TrainingRun& r, const Checkpoint* ck) {
    r.cfg = resolve_model_config(r.o, ck);
    r.layout = make_param_layout(r.cfg);
    if (r.o.sample_tokens > 0) r.vocab = load_sample_vocabulary(r.o, r.cfg, training_vocabulary_path(r.o));
}

// Set-up, the data: the training shards (this rank's part of each batch) and the validation set.
inline void set_up_data(TrainingRun& r) {
    const TrainOptions& o = r.o;
    r.train.reset(new DataLoader(o.train_files, r.B, r.T, r.dist.rank, r.world, /*shuffle=*/true, o.seed, r.cfg.vocab_size));
    if (!o.val_files.empty()) r.val.reset(new DataLoader(o.val_files, r.B, r.T, 0, 1, /*shuffle=*/false, 0, r.cfg.vocab_size));
}

// Set-up, the backend and the parameters whose moments it keeps on this rank.
inline void set_up_backend(TrainingRun& r, const BackendFactory& make_backend) {
    r.backend = make_backend(r.cfg);
    r.owned = r.backend->optimizer_ranges(r.layout.total);
    r.owned_count = range_total(r.owned);
    r.sharded_moments = r.owned_count != r.layout.total;
}

// Set-up, -r: the checkpoint's weights, this rank's part of Adam's moments, the data position, the
// RNG, the step and the skipped count, after checking that the flags continue the same run.
inline void resume_from(TrainingRun& r, const Checkpoint& ck, const std::string& ck_path) {
    const TrainOptions& o = r.o;
    const TrainState& s = ck.state;
    if (s.step == 0 && ck.m.empty() && s.optimizer_shards == 0)
        throw std::runtime_error("-r: " + ck_path + " holds weights only (no training state); start from it with -f");
    if (s.micro_batch != r.B || s.seq_len != r.T || s.total_batch != o.total_batch || s.world_size != r.world || s.data_seed != o.seed)
        throw std::runtime_error("-r: the checkpoint was written with -b " + std::to_string(s.micro_batch) + " -t " +
                                 std::to_string(s.seq_len) + " -d " + std::to_string(s.total_batch) + " -s " +
                                 std::to_string(s.data_seed) + " on " + std::to_string(s.world_size) +
                                 " rank(s); resume with the same values so the data order continues exactly");
    if (s.step >= o.steps) throw std::runtime_error("-r: the checkpoint is at step " + std::to_string(s.step) + ", not before -x " + std::to_string(o.steps));
    std::vector<float> m, v;  // this rank's part of Adam's moments
    if (s.optimizer_shards > 0) {
        const std::string part_path = optimizer_shard_path(ck_path, r.dist.rank);
        OptimizerShard part = load_optimizer_shard(part_path);
        if (part.n_params != r.layout.total || part.step != s.step || part.world_size != r.world || part.rank != r.dist.rank ||
            (part.run_id != 0 && part.run_id != s.run_id))
            throw std::runtime_error("-r: '" + part_path + "' does not belong to '" + ck_path + "'");
        if (!r.sharded_moments)
            throw std::runtime_error("-r: the checkpoint keeps Adam's moments split over its ranks (ZeRO-1); resume with -Z 1");
        if (part.ranges != r.owned)
            throw std::runtime_error("-r: '" + part_path + "' holds the moments of other parameters than this rank's ZeRO-1 slices");
        m = std::move(part.m);
        v = std::move(part.v);
    } else if (!ck.m.empty()) {
        for (const ParamRange& p : r.owned) {
            m.insert(m.end(), ck.m.begin() + p.begin, ck.m.begin() + p.end);
            v.insert(v.end(), ck.v.begin() + p.begin, ck.v.begin() + p.end);
        }
    } else {
        throw std::runtime_error("-r: the checkpoint has no optimizer state; use -f to start from its weights");
    }
    r.backend->write_state(ck.params.data(), m.data(), v.data());
    r.train->set_position(s.data);
    r.rng.state = s.rng_state;
    r.start_step = s.step;
    r.skipped_total = s.skipped_steps;
}

// Set-up, the starting state: resumed (-r), the weights of -f with a fresh optimizer, or initialized.
inline void set_up_state(TrainingRun& r, const Checkpoint* ck, const std::string& ck_path) {
    if (ck && !r.o.resume.empty()) {
        resume_from(r, *ck, ck_path);
    } else if (ck) {
        r.backend->write_state(ck->params.data(), nullptr, nullptr);
    } else {
        std::vector<float> params(r.layout.total);
        init_parameters(params.data(), r.cfg, r.layout, r.o.seed);
        r.backend->write_state(params.data(), nullptr, nullptr);
    }
}

// Set-up, the output: the directory belongs to this run (core/run_dir.h): rank 0 checks and claims
// it, and shares the run id, 32 bits at a time (a double sum carries them exactly); every rank
// creates it (each writes its optimizer shard file there); rank 0 opens the logs.
inline void set_up_output(TrainingRun& r, const Checkpoint* ck, const std::string& ck_path) {
    const TrainOptions& o = r.o;
    TrainerBackend& backend = *r.backend;
    r.run.owns_unknown = ck && !o.resume.empty() && ck->state.run_id == 0;
    on_all_ranks(backend, [&] { if (r.lead) r.run.id = claim_run_directory(o, ck_path, o.resume.empty() ? nullptr : ck); });
    r.run.id = (uint64_t)backend.all_reduce_sum((double)(r.run.id >> 32)) << 32 |
               (uint64_t)backend.all_reduce_sum((double)(r.run.id & 0xFFFFFFFFu));
    on_all_ranks(backend, [&] { make_directories(o.out_dir); });
    if (r.lead) {
        r.log.reset(new CsvLog(o.out_dir + "/log.csv", "step,split,loss,lr,grad_norm", r.start_step));
        if (o.grad_norm_interval > 0)
            r.grad_log.reset(new CsvLog(o.out_dir + "/grad_norms.csv", "step,layer,post_ln,attention,mlp,total", r.start_step));
    }
    r.grads_host.resize(o.grad_norm_interval > 0 ? r.layout.total : 0);
}

// Set-up, the run's header lines on the console: device, model, data and schedule.
inline void print_run_header(const TrainingRun& r) {
    if (!r.lead) return;
    const TrainOptions& o = r.o;
    const ModelConfig& cfg = r.cfg;
    printf("%s\n", r.backend->description().c_str());
    printf("model: %d layers (%d Post-LN then %d Pre-LN%s), d %d, %d heads, ffn %d, vocab %d, %.2fM parameters\n",
           cfg.n_layer, num_post_ln_layers(cfg), cfg.n_layer - num_post_ln_layers(cfg), cfg.norm != NormScheme::MixLN ? (std::string("; -n ") + norm_scheme_name((int)cfg.norm)).c_str() : "",
           cfg.d_model, cfg.n_head, cfg.d_ffn, cfg.vocab_size, num_model_parameters(cfg) / 1e6);
    printf("data: %zu train shard(s), %.1fM tokens; batch %ld tokens = %d x %d x %d accumulation steps%s\n",
           r.train->shards().size(), r.train->total_tokens() / 1e6, o.total_batch, r.B, r.T, r.accum_steps,
           r.world > 1 ? (" x " + std::to_string(r.world) + " ranks").c_str() : "");
    printf("schedule: %d steps, peak lr %.3g, warmup %d, cosine to %.3g%s\n", o.steps, o.lr, r.schedule.warmup_steps,
           o.lr * o.final_lr_fraction, r.start_step ? (", resuming at step " + std::to_string(r.start_step)).c_str() : "");
    fflush(stdout);
}

// Set-up, all of it: from the checkpoint of -r or -f (null: none), whose arrays are released once
// they are in the backend.
inline void set_up_training(TrainingRun& r, std::unique_ptr<FoundCheckpoint> found, const BackendFactory& make_backend) {
    const std::string ck_path = found ? found->path : "";
    const Checkpoint* ck = found ? &found->ck : nullptr;
    set_up_model(r, ck);
    set_up_data(r);
    set_up_backend(r, make_backend);
    set_up_state(r, ck, ck_path);
    set_up_output(r, ck, ck_path);
    found.reset();  // the checkpoint's arrays are in the backend now
    r.schedule = make_schedule(r.o.lr, r.o.steps, warmup_steps(r.o), r.o.final_lr_fraction);
    r.flops_per_step = flops_per_token(r.cfg, r.T) * r.o.total_batch;
    print_run_header(r);
}

// One step: the gradients of -d tokens in micro-batches (summed over the ranks), then AdamW at lr,
// which the backend skips if the gradient norm is not finite (counted here). AdamW's step counts the
// updates: a skipped step is not one. Returns the step's result, the step's one wait.
inline StepResult train_step(TrainingRun& r, int64_t step, double lr) {
    TrainerBackend& backend = *r.backend;
    backend.zero_grad();
    for (int micro = 0; micro < r.accum_steps; micro++) {
        r.train->next_batch(r.inputs.data(), r.targets.data());
        backend.forward_backward(r.inputs.data(), r.targets.data(), r.B, r.T, r.loss_scale, micro == r.accum_steps - 1);
    }
    backend.reduce_gradients(g_stop_signal != 0);
    // A non-finite loss stops the run without saving, so this step's update is never kept.
    backend.optimizer_step(lr, (int)(step + 1 - r.skipped_total), r.o);
    const StepResult result = backend.step_result();
    // A skipped update is skipped on every rank: the norm is global.
    r.skipped_in_a_row = result.skipped ? r.skipped_in_a_row + 1 : 0;
    r.skipped_total += result.skipped ? 1 : 0;
    return result;
}

// After step `done` (1-based): -y's per-layer gradient norms (paper Fig. 3e / 6: before clipping, as
// the update leaves the gradients as they are), then rank 0's console line and log.csv row: "train",
// or "skipped" with the norm inf or nan and the running count. t0: when the step began.
inline void log_step(TrainingRun& r, int64_t done, double lr, const StepResult& result, std::chrono::steady_clock::time_point t0) {
    const TrainOptions& o = r.o;
    if (o.grad_norm_interval > 0 && done % o.grad_norm_interval == 0) {
        r.backend->read_grads(r.grads_host.data());
        if (r.lead) {
            const std::vector<LayerGradNorm> norms = layer_grad_norms(r.cfg, r.layout, r.grads_host.data());
            for (int l = 0; l < r.cfg.n_layer; l++)
                r.grad_log->row("%lld,%d,%d,%.9g,%.9g,%.9g", (long long)done, l, (int)layer_is_post_ln(r.cfg, l),
                                norms[l].attention, norms[l].mlp, norms[l].total);
        }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool first = done - 1 == r.start_step;
    if (!first) r.elapsed_total += seconds;  // the first step pays warm-up costs
    const double avg = first ? seconds : r.elapsed_total / (done - 1 - r.start_step);
    if (!r.lead) return;
    const double loss = result.loss, norm = result.grad_norm;
    if (result.skipped) {
        const char* norm_text = std::isnan(norm) ? "nan" : "inf";
        printf("step %6lld/%d | loss %.6f | lr %.3e | norm %s | update skipped: non-finite gradient norm "
               "(%lld skipped so far, %d in a row; the run stops at %d in a row, -N)\n",
               (long long)done, o.steps, loss, lr, norm_text, (long long)r.skipped_total, r.skipped_in_a_row, o.max_skipped_in_a_row);
        r.log->row("%lld,skipped,%.9g,%.9g,%s", (long long)done, loss, lr, norm_text);
    } else {
        char mfu[32] = "";  // per GPU: each computes 1/world of the step
        if (r.backend->peak_flops() > 0)
            snprintf(mfu, sizeof(mfu), " | MFU %.1f%%", 100.0 * r.flops_per_step / r.world / seconds / r.backend->peak_flops());
        printf("step %6lld/%d | loss %.6f | lr %.3e | norm %.4f | %.1f ms | %.0f tok/s%s | ETA %s\n",
               (long long)done, o.steps, loss, lr, norm, 1e3 * seconds, o.total_batch / seconds, mfu,
               format_duration(avg * (o.steps - done)).c_str());
        r.log->row("%lld,train,%.9g,%.9g,%.9g", (long long)done, loss, lr, norm);
    }
    fflush(stdout);
}

// Validation after step `done`: every -v steps (not after the last: end_of_run validates) and at the end.
inline bool validation_due(const TrainOptions& o, int64_t done) { return o.val_interval > 0 && done % o.val_interval == 0 && done < o.steps; }

// The validation loss after step `done`, on the console and in log.csv (collective; nothing without -j).
inline void validate(TrainingRun& r, int64_t done, double lr) {
    if (!r.val) return;
    const Evaluation e = evaluate(*r.backend, *r.val, r.o.val_batches, r.o.val_tokens, r.B, r.T, r.dist);
    if (!r.lead) return;
    printf("step %6lld | val loss %.4f | val ppl %.2f | %ld batches, %.3gM tokens%s\n", (long long)done, e.loss,
           std::exp(e.loss), e.batches, e.tokens / 1e6, r.val->padded() ? " (padded documents)" : "");
    fflush(stdout);
    r.log->row("%lld,val,%.9g,%.9g,0", (long long)done, e.loss, lr);
}

// ckpt_DONE.bin (and with ZeRO-1 each rank's optimizer shard file): the weights, moments, data
// position, RNG and skipped count after step `done`; older ones pruned to -k. Collective.
inline void save_training_checkpoint(TrainingRun& r, int64_t done) {
    const TrainOptions& o = r.o;
    std::vector<float> params(r.layout.total), m(r.owned_count), v(r.owned_count);
    r.backend->read_state(params.data(), m.data(), v.data());
    TrainState s;
    s.step = done; s.data = r.train->position(); s.rng_state = r.rng.state;
    s.micro_batch = r.B; s.seq_len = r.T; s.total_batch = o.total_batch; s.world_size = r.world; s.data_seed = o.seed;
    s.optimizer_shards = r.sharded_moments ? r.world : 0;
    s.run_id = r.run.id;
    s.skipped_steps = r.skipped_total;
    const std::string path = checkpoint_path(o.out_dir, done);
    // The shard files first: ckpt_STEP.bin, written once they all are, completes the checkpoint.
    on_all_ranks(*r.backend, [&] {
        if (r.sharded_moments)
            save_optimizer_shard(optimizer_shard_path(path, r.dist.rank),
                                 OptimizerShard{r.layout.total, done, r.world, r.dist.rank, r.owned, m, v, r.run.id});
    });
    on_all_ranks(*r.backend, [&] {
        if (!r.lead) return;
        save_checkpoint(path, r.cfg, s, params.data(), r.sharded_moments ? nullptr : m.data(),
                        r.sharded_moments ? nullptr : v.data(), r.layout.total);
        prune_checkpoints(o.out_dir, o.keep_checkpoints, [&](const std::string& c) { return r.run.owns(c); }, path);
        printf("saved checkpoint %s\n", path.c_str());
        fflush(stdout);
    });
}

// Checkpointing after step `done`: every -c steps, after the last and when stopping on a signal
// (checkpoint_due). A skipped step writes none: one due then is written after the next update. The
// last step and a signal save anyway: the weights and moments are those of the last update.
inline void checkpoint_if_due(TrainingRun& r, int64_t done, bool skipped, bool stop) {
    const bool due = checkpoint_due(r.o, done, stop);
    if (skipped && done < r.o.steps && !stop) {
        r.checkpoint_deferred |= due;
    } else if (due || r.checkpoint_deferred) {
        save_training_checkpoint(r, done);
        r.checkpoint_deferred = false;
    }
}

// "The last good checkpoint is PATH." (this run's newest), or that there is none yet.
inline std::string last_good_checkpoint(const TrainingRun& r) {
    std::vector<std::string> saved;
    for (const std::string& c : list_checkpoints(r.o.out_dir)) if (r.run.owns(c)) saved.push_back(c);
    return saved.empty() ? "No checkpoint was written yet." : "The last good checkpoint is " + saved.back() + ".";
}

// End of a run that stops early, each with its message (rank 0) and exit code: a non-finite loss (3),
// -N steps in a row skipped (4), a signal (130, after checkpoint_if_due saved).
inline int stop_on_nonfinite_loss(const TrainingRun& r, int64_t done, double loss) {
    if (r.lead)
        fprintf(stderr, "error: the loss is %g at step %lld; stopping without saving. %s\n", loss, (long long)done,
                last_good_checkpoint(r).c_str());
    return 3;
}

inline int stop_on_skipped_steps(const TrainingRun& r, int64_t done) {
    if (r.lead)
        fprintf(stderr, "error: %d steps in a row (%lld to %lld) had a non-finite gradient norm and skipped their "
                "update (-N %d); stopping without saving. %s\n", r.skipped_in_a_row, (long long)(done - r.skipped_in_a_row + 1),
                (long long)done, r.o.max_skipped_in_a_row, last_good_checkpoint(r).c_str());
    return 4;
}

inline int stop_on_signal(const TrainingRun& r, int64_t done) {
    if (r.lead)
        printf("stopped by %s after step %lld; %s\n",
               g_stop_signal ? ("signal " + std::to_string(g_stop_signal)).c_str() : "a signal to another rank",
               (long long)done, r.o.ckpt_interval < 0 ? "no checkpoint saved (-c -1)" : ("resume with -r " + r.o.out_dir).c_str());
    return 130;
}

// The end of a run that trained to -x: the final validation (unless it resumed at -x, so trained no
// step) and -G's sample. Returns 0.
inline int end_of_run(TrainingRun& r) {
    if (r.o.steps > r.start_step) validate(r, r.o.steps, r.schedule.lr_at(r.o.steps - 1));
    if (r.lead && r.vocab) print_sample(*r.backend, r.o, r.cfg, *r.vocab, r.rng);  // no collective: the others may finish
    return 0;
}

// Returns the process exit code: 0 done, 3 stopped on a non-finite loss, 4 stopped after -N steps in a
// row skipped their update (a non-finite gradient norm), 130 stopped by a signal (errors throw; the
// trainers' main turns them into exit code 1).
//
// Data parallelism: every rank runs this with its own backend and its place in dist. Each reads its
// own part of every batch (the data loader's rank partition), so that a step is still -d tokens, and
// the backend sums the gradients over the ranks. Whatever decides the control flow (the loss, the
// gradient norm, a signal, a failed checkpoint write) is summed over the ranks or global first, so
// all of them take the same branch. Only rank 0 prints and writes log.csv, grad_norms.csv and
// ckpt_STEP.bin; with ZeRO-1 each rank writes its optimizer shard file too.
inline int run_training(const TrainOptions& o, const BackendFactory& make_backend,
                        const DistributedEnv& dist = DistributedEnv()) {
    std::unique_ptr<FoundCheckpoint> found = load_start_checkpoint(o, dist.rank == 0);
    if (o.steps == 0) {
        if (!found) throw std::runtime_error("-x 0 (evaluate or sample only) needs the weights of -f CHECKPOINT");
        return evaluate_or_sample(o, *found, make_backend, dist);
    }
    TrainingRun run(o, dist);
    set_up_training(run, std::move(found), make_backend);
    std::signal(SIGINT, request_stop);
    std::signal(SIGTERM, request_stop);
    for (int64_t step = run.start_step; step < o.steps; step++) {
        const auto t0 = std::chrono::steady_clock::now();
        const double lr = run.schedule.lr_at((int)step);
        const StepResult result = train_step(run, step, lr);
        const bool stop = result.stop;  // a signal to any rank before its reduce: all stop after this step
        if (!std::isfinite(result.loss)) return stop_on_nonfinite_loss(run, step + 1, result.loss);
        log_step(run, step + 1, lr, result, t0);
        if (run.skipped_in_a_row >= o.max_skipped_in_a_row) return stop_on_skipped_steps(run, step + 1);
        if (validation_due(o, step + 1)) validate(run, step + 1, lr);
        checkpoint_if_due(run, step + 1, result.skipped, stop);
        if (stop) return stop_on_signal(run, step + 1);
    }
    return end_of_run(run);
}
