// The trainers' command line, llm.c style: "-x value" pairs. One parser for the CPU and GPU
// trainers, so the same command line means the same run on both.
#pragma once
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>
#include "config.h"

struct TrainOptions {
    std::string train_files, val_files;  // -i, -j: files, globs, comma-separated
    std::string out_dir = "out";         // -o
    std::string resume;                  // -r: a checkpoint file, or a directory (its newest checkpoint)
    std::string init_from;               // -f: start from these weights with a fresh optimizer and schedule
    std::string preset = "71m";          // -e
    ModelConfig model;                   // -e, -L, -C, -H, -F, -V, -a, -n, -S, -E
    int micro_batch = 32;                // -b
    int seq_len = 256;                   // -t
    long total_batch = 131072;           // -d, tokens per optimizer step (the paper's 512 x 256)
    double lr = -1;                      // -l, < 0: the preset's (preset_training_defaults)
    double warmup = 0.1;                 // -u, < 1: a fraction of the steps, else a number of steps; the preset's if not given
    double final_lr_fraction = 0.1;      // -q
    double weight_decay = 0.0;           // -w
    double grad_clip = 0.0;              // -g, 0 = off
    int max_skipped_in_a_row = 5;        // -N, steps in a row whose update a non-finite gradient norm skipped: stop
    bool recompute = false;              // -R, rerun each layer's forward in the backward (train_mixln only)
    bool zero1 = true;                   // -Z, on several ranks: 1 = ZeRO-1, 0 = all-reduce (train_mixln only)
    bool cuda_graphs = true;             // -D, replay each micro-batch and update as a CUDA graph (train_mixln only)
    double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
    int steps = -1;                      // -x, < 0: the preset's
    uint64_t seed = 42;                  // -s
    int val_interval = 0;                // -v, 0 = only at the end
    int val_batches = 20;                // -m N
    long val_tokens = 0;                 // -m with a K, M or G suffix: validate over this many input tokens instead
    int ckpt_interval = 0;               // -c, 0 = only at the end, -1 = never (benchmarks)
    int keep_checkpoints = 3;            // -k, 0 = keep all
    int grad_norm_interval = 0;          // -y, 0 = off
    int sample_tokens = 0;               // -G, tokens to generate after training, 0 = none
    std::string prompt;                  // -P
    double temperature = 0.8;            // -T, 0 = greedy
    std::string vocab_file;              // -z, default: vocab.bin beside the first training shard (-x 0: evaluate_or_sample_vocabulary)
    bool start_over = false;             // -W, a new run in a directory holding another run: delete that run's files
    bool accept_changes = false;         // -U, -r with flags that differ from the run's recorded ones: use the new ones
    bool help = false;                   // -h
    std::set<char> given;                // flags set on the command line
};

inline const char* train_usage() {
    return
        "usage: train_mixln[_cpu] -i TRAIN_SHARDS [flags]                     train\n"
        "       train_mixln[_cpu] -f CHECKPOINT -x 0 -j VAL_SHARDS [-b -t -m]   evaluate only\n"
        "       train_mixln[_cpu] -f CHECKPOINT -x 0 -G N [-P -T -z -s -t]      sample only\n"
        "       (-j and -G together: both; see 'evaluate and sample only' below)\n"
        "data\n"
        "  -i FILES   training shards: files or globs, comma-separated (required to train)\n"
        "  -j FILES   validation shards (default: none, no validation)\n"
        "  -o DIR     output directory for checkpoints and log.csv (default out)\n"
        "model\n"
        "  -e NAME    preset: tiny, 71m, 130m, 250m, 350m, 1b (the official code's configs; default 71m)\n"
        "  -L N -C N -H N -F N   override layers, hidden size, heads, MLP size\n"
        "  -V N       vocabulary size (default: the training shards' vocabulary)\n"
        "  -a ALPHA   Mix-LN: the first floor(ALPHA*L) layers are Post-LN, the rest Pre-LN\n"
        "             (0 = Pre-LN, 1 = Post-LN; default 0.25, the paper's choice)\n"
        "  -n NORM    mixln (default), deepnorm (DeepNet's formula) or deepnorm_paper (the official\n"
        "             Mix-LN code's: residual x sqrt(8), Xavier-normal init with gain (8L)^(1/4))\n"
        "  -S 0|1     scaled initialization of o/down projections (paper App. B; default 0)\n"
        "  -E 0|1     scaled embedding, x sqrt(d) (paper App. B; default 0)\n"
        "optimization\n"
        "  -b N       micro-batch size in sequences (default 32)\n"
        "  -t N       sequence length (default 256)\n"
        "  -d N       total batch in tokens per step, by gradient accumulation (default 131072)\n"
        "  -l LR      peak learning rate (default: the official script's, 1e-3; 5e-4 for 1b; tiny 5e-3)\n"
        "  -x N       optimizer steps (default: the official script's, 71m 10000, 130m 20000,\n"
        "             250m and 350m 40000, 1b 100000; tiny 2000)\n"
        "  -u W       warmup: W < 1 is a fraction of the steps (0.1 = 10%), a whole W >= 1 a number\n"
        "             of steps (default 0.1; 1b 1000 steps, as the official scripts)\n"
        "  -q F       final learning rate as a fraction of the peak (default 0.1)\n"
        "  -w WD      AdamW weight decay (default 0)\n"
        "  -g NORM    clip the global gradient norm to NORM (default 0 = off)\n"
        "  -N N       a step whose gradient norm is inf or NaN skips its update: weights, Adam's moments\n"
        "             and AdamW's step count stay as they were, no checkpoint is written at that step,\n"
        "             and log.csv gets a 'skipped' row; N such steps in a row stop the run with exit\n"
        "             code 4 (default 5)\n"
        "  -s SEED    seed for the initialization and the data order (default 42)\n"
        "  -R 0|1     recompute each layer's activations in the backward instead of storing them all:\n"
        "             less GPU memory for a larger -b, about a third more compute (train_mixln only; default 0)\n"
        "  -D 0|1     1: capture a micro-batch's forward and backward, and the update, as CUDA graphs and\n"
        "             replay them; 0: launch every kernel from the host (train_mixln only; default 1,\n"
        "             off on several ranks)\n"
        "several GPUs (train_mixln launched by mpirun, torchrun or srun; see docs/gpu.md, Multi-GPU)\n"
        "  -Z 0|1     1: ZeRO-1, each rank keeps and updates 1/N of the fp32 master weights and Adam\n"
        "             moments (reduce-scatter of the gradients, all-gather of the weights); 0: all-reduce\n"
        "             of the gradients, every rank updates everything (default 1)\n"
        "evaluation and checkpoints\n"
        "  -v N       validate every N steps (default 0 = only at the end)\n"
        "  -m N       validation batches per evaluation (default 20); with a K, M or G suffix\n"
        "             (-m 10M, the paper's) a budget of input tokens, padding not counted: batches\n"
        "             until more than that many were seen, as the official code\n"
        "  -c N       checkpoint every N steps (default 0 = only at the end; -1 = never: a benchmark's\n"
        "             run, which writes no checkpoint, not even when stopped by a signal)\n"
        "  -k N       keep the newest N checkpoints (default 3, 0 = all)\n"
        "  -y N       every N steps, log per-layer gradient norms to OUT/grad_norms.csv (default 0 = off)\n"
        "  -r PATH    resume from a checkpoint, or from the newest one in a directory that verifies\n"
        "  -U 0|1     with -r: 1 continues with flags that differ from the run's (OUT/run.txt; default 0 = refuse)\n"
        "  -W 0|1     1: start a new run in -o even though it holds another run's checkpoints and logs,\n"
        "             deleting them (default 0 = refuse)\n"
        "  -f PATH    start from a checkpoint's weights with a fresh optimizer and schedule\n"
        "sampling\n"
        "  -G N       after training, generate N tokens of text (default 0 = none), each\n"
        "             seeing at most the model's sequence length\n"
        "  -P TEXT    prompt for the sample (default: the end-of-text token, or nothing)\n"
        "  -T TEMP    sampling temperature, 0 = greedy (default 0.8)\n"
        "  -z FILE    vocabulary for decoding (default: vocab.bin beside the first training shard;\n"
        "             with -x 0, see below)\n"
        "evaluate and sample only (-x 0): -f CHECKPOINT -x 0 with -j VAL_SHARDS, -G N, or both\n"
        "  The weights of -f (a file, or a directory's newest checkpoint that verifies); the model's\n"
        "  shape from the checkpoint, and -t's default its sequence length. -j: the loss over -m\n"
        "  batches of -b x -t tokens. -G: N tokens after -P at -T, seeded by -s, decoded with -z, else\n"
        "  vocab.bin beside the first -j shard, else vocab.bin beside the training shards that the\n"
        "  run.txt beside the checkpoint records. Writes nothing. Refused, with the reason: -i, -d,\n"
        "  -r, -o and the other flags of training, of the model and of the output\n"
        "  -h         print this help\n";
}

inline double parse_number(char flag, const char* text) {
    char* end = nullptr;
    errno = 0;
    const double x = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !std::isfinite(x))
        throw std::runtime_error(std::string("-") + flag + ": '" + text + "' is not a number");
    return x;
}

// An integer flag: decimal digits ("4294967297"), or exponent notation with an integral value ("1e3").
// A fraction, or a value outside [min_value, max_value] (the range of the variable it sets), is
// refused: nothing wraps around.
inline int64_t parse_integer(char flag, const char* text, int64_t min_value, int64_t max_value) {
    const std::string range = "[" + std::to_string(min_value) + ", " + std::to_string(max_value) + "]";
    char* end = nullptr;
    errno = 0;
    const long long digits = strtoll(text, &end, 10);
    bool in_range;
    int64_t value = 0;
    if (end != text && *end == '\0') {
        in_range = errno != ERANGE && digits >= min_value && digits <= max_value;
        value = digits;
    } else {
        const double x = parse_number(flag, text);
        if (x != std::floor(x))
            throw std::runtime_error(std::string("-") + flag + ": '" + text + "' must be an integer in " + range);
        in_range = x >= (double)min_value && x <= (double)max_value;
        if (in_range) value = (int64_t)x;
    }
    if (!in_range) throw std::runtime_error(std::string("-") + flag + ": '" + text + "' is outside " + range);
    return value;
}

inline int parse_int(char flag, const char* text, int min_value) { return (int)parse_integer(flag, text, min_value, INT_MAX); }
inline bool parse_bool(char flag, const char* text) { return parse_integer(flag, text, 0, 1) == 1; }

inline double parse_in_range(char flag, const char* text, double lo, double hi) {
    const double x = parse_number(flag, text);
    if (x < lo || x > hi)
        throw std::runtime_error(std::string("-") + flag + ": " + text + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
}

// The CPU tools compute every activation once and store it, in one process: they refuse the GPU
// trainer's -R and -Z.
inline void reject_gpu_only_options(const TrainOptions& o) {
    if (o.recompute) throw std::runtime_error("-R: only train_mixln recomputes activations");
    if (o.given.count('Z')) throw std::runtime_error("-Z: only train_mixln trains on several ranks");
    if (o.given.count('D')) throw std::runtime_error("-D: only train_mixln runs CUDA graphs");
}

// Micro-batches per optimizer step on each of world_size ranks: every step is -d tokens in all, so
// -d must be a multiple of b x t x world_size. Throws naming the numbers if it is not, or if the
// count does not fit the int the step loop counts in.
inline int accumulation_steps(const TrainOptions& o, int world_size) {
    const std::string ranks = world_size > 1 ? " x " + std::to_string(world_size) + " ranks" : std::string();
    long tokens_per_micro_step;
    if (__builtin_mul_overflow((long)o.micro_batch, (long)o.seq_len, &tokens_per_micro_step) ||
        __builtin_mul_overflow(tokens_per_micro_step, (long)world_size, &tokens_per_micro_step))
        throw std::runtime_error("-b " + std::to_string(o.micro_batch) + " x -t " + std::to_string(o.seq_len) + ranks +
                                 " tokens per micro-batch overflows a 64-bit count");
    if (o.total_batch % tokens_per_micro_step != 0)
        throw std::runtime_error("-d " + std::to_string(o.total_batch) + " is not a multiple of -b x -t" + ranks +
                                 " = " + std::to_string(tokens_per_micro_step) + " tokens");
    const long steps = o.total_batch / tokens_per_micro_step;
    if (steps > INT_MAX)
        throw std::runtime_error("-d " + std::to_string(o.total_batch) + " asks for " + std::to_string(steps) +
                                 " accumulation steps of -b x -t" + ranks + " = " + std::to_string(tokens_per_micro_step) +
                                 " tokens; at most " + std::to_string(INT_MAX));
    return (int)steps;
}

// The output directory, without trailing slashes; refuses an empty path or the root (a run writes
// log.csv and checkpoints there, and -W deletes a previous run's files from it).
inline std::string checked_output_dir(const std::string& dir) {
    std::string d = dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    if (d.empty() || d.find_first_not_of('/') == std::string::npos)
        throw std::runtime_error("-o: '" + dir + "' is not a usable output directory (" + (d.empty() ? "empty" : "the root") +
                                 "); name a directory for this run, e.g. -o out/run1");
    return d;
}

// Per preset, the official code's scripts/run_*.sh: peak learning rate, steps and warmup (a fraction
// of the steps below 1, else steps). Their warmups of 1000, 2000 and 4000 steps are 10% of their
// steps; 1b warms up for 1000 steps, 1%. 350m has no script: the 250m one's. tiny (not the paper's)
// keeps the demo's 5e-3. Fills the options the command line left unset.
inline void apply_preset_training_defaults(TrainOptions* o) {
    struct Row { const char* name; double lr; int steps; double warmup; };
    static const Row rows[] = {{"tiny", 5e-3, 2000, 0.1},     {"71m", 1e-3, 10000, 0.1},  {"130m", 1e-3, 20000, 0.1},
                               {"250m", 1e-3, 40000, 0.1},    {"350m", 1e-3, 40000, 0.1}, {"1b", 5e-4, 100000, 1000}};
    for (const Row& r : rows) {
        if (o->preset != r.name) continue;
        if (o->lr < 0) o->lr = r.lr;
        if (o->steps < 0) o->steps = r.steps;
        if (!o->given.count('u')) o->warmup = r.warmup;
    }
}

// -u: a fraction of the steps below 1, else a whole number of steps.
inline double parse_warmup(const char* text) {
    const double w = parse_number('u', text);
    if (w < 0 || (w >= 1 && w != std::floor(w)))
        throw std::runtime_error(std::string("-u: '") + text + "' is neither a fraction in [0, 1) nor a whole number of steps");
    return w;
}

// The warmup of -u in steps; throws if it leaves no step to decay over.
inline int warmup_steps(const TrainOptions& o) {
    if (o.steps == 0) return 0;
    const int steps = o.warmup < 1 ? (int)std::floor(o.warmup * o.steps) : (int)o.warmup;
    if (steps > 0 && steps >= o.steps)
        throw std::runtime_error("-u: a warmup of " + std::to_string(steps) + " steps" + (o.given.count('u') ? "" : " (the preset's)") +
                                 " is not shorter than the " + std::to_string(o.steps) + " steps of -x; set -u");
    return steps;
}

// Whether the step loop saves a checkpoint after step `done`: every -c steps, after the last step and
// when stopped by a signal; never with -c -1.
inline bool checkpoint_due(const TrainOptions& o, int64_t done, bool stopping) {
    if (o.ckpt_interval < 0) return false;
    return (o.ckpt_interval > 0 && done % o.ckpt_interval == 0) || done == o.steps || stopping;
}

// -m: N batches, or with a suffix K, M or G (10^3, 10^6, 10^9) a budget of tokens.
inline void parse_val_budget(const char* text, TrainOptions* o) {
    const std::string s = text;
    const size_t suffix = s.empty() ? std::string::npos : std::string("KMG").find(s.back());
    if (suffix == std::string::npos) {
        o->val_batches = parse_int('m', text, 1);
        o->val_tokens = 0;
        return;
    }
    const double tokens = parse_number('m', s.substr(0, s.size() - 1).c_str()) * std::pow(1e3, suffix + 1);
    if (tokens < 1 || tokens > 9e15) throw std::runtime_error("-m: " + s + " is not a positive number of tokens");
    o->val_tokens = (long)tokens;
}

// -x 0: evaluate (-j) and/or sample (-G) with the weights of -f, nothing else. The model, its shape
// and -t's default come from the checkpoint (resolve_model_config), -G's vocabulary from -z, -j's
// directory or the checkpoint's run (evaluate_or_sample_vocabulary). A flag that has no use there is
// refused, saying why: a user who gives it expects something that would not happen.
inline TrainOptions check_evaluate_or_sample_options(const TrainOptions& o) {
    if (o.init_from.empty())
        throw std::runtime_error(!o.resume.empty() ? "-r: -x 0 continues no run; give the checkpoint to evaluate or sample with -f"
                                                   : "-x 0 (evaluate or sample only) needs the weights of -f CHECKPOINT");
    if (o.val_files.empty() && o.sample_tokens == 0)
        throw std::runtime_error("-x 0 trains nothing: give -j VAL to evaluate or -G N to sample");
    const bool evaluate = !o.val_files.empty(), sample = o.sample_tokens > 0;
    struct Refusal { const char* flags; const char* why; };
    const Refusal refusals[] = {
        {"r", "-x 0 continues no run: the weights to evaluate or sample are those of -f"},
        {"i", "-x 0 trains nothing, so it reads no training shards (-G's vocabulary: -z, else beside -j's shards, "
              "else beside the checkpoint's run's training shards)"},
        {"d", "-x 0 trains nothing: there is no batch to accumulate (-b sets the evaluation's batch)"},
        {"luqwgNRZD", "-x 0 trains nothing: no optimizer, schedule or backward"},
        {"eLCHFVanSE", "-x 0 takes the model from the checkpoint of -f"},
        {"ockyWU", "-x 0 writes nothing: no output directory, log or checkpoint"},
        {"v", "-x 0 evaluates -j once (-m sets how much)"},
    };
    for (const Refusal& r : refusals)
        for (const char* f = r.flags; *f; f++)
            if (o.given.count(*f)) throw std::runtime_error(std::string("-") + *f + ": " + r.why);
    if (!evaluate)
        for (const char f : {'b', 'm'})
            if (o.given.count(f))
                throw std::runtime_error(std::string("-") + f + ": sets the evaluation's " + (f == 'b' ? "batch" : "length") +
                                         ", and there is none: give -j VAL to evaluate (sampling runs one sequence)");
    if (!sample)
        for (const char f : {'P', 'T', 'z', 's'})
            if (o.given.count(f))
                throw std::runtime_error(std::string("-") + f + ": a flag of sampling, and there is none: give -G N to sample");
    return o;
}

// Throws std::runtime_error naming the flag on any bad value.
inline TrainOptions parse_train_options(int argc, char** argv) {
    TrainOptions o;
    // model size flags apply after the preset, whatever their order
    std::string L, C, H, F;
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        if (arg.size() != 2 || arg[0] != '-') throw std::runtime_error("unexpected argument '" + arg + "' (flags look like -x VALUE)");
        const char flag = arg[1];
        if (flag == 'h') { o.help = true; continue; }
        if (i + 1 >= argc) throw std::runtime_error("-" + std::string(1, flag) + " needs a value");
        const char* val = argv[++i];
        o.given.insert(flag);
        switch (flag) {
            case 'i': o.train_files = val; break;
            case 'j': o.val_files = val; break;
            case 'o': o.out_dir = val; break;
            case 'r': o.resume = val; break;
            case 'f': o.init_from = val; break;
            case 'e': o.preset = val; break;
            case 'L': L = val; break;
            case 'C': C = val; break;
            case 'H': H = val; break;
            case 'F': F = val; break;
            case 'V': o.model.vocab_size = parse_int(flag, val, 2); break;
            case 'a': o.model.alpha = parse_in_range(flag, val, 0.0, 1.0); break;
            case 'n': {
                int scheme = 0;
                while (norm_scheme_name(scheme) && strcmp(norm_scheme_name(scheme), val) != 0) scheme++;
                if (!norm_scheme_name(scheme))
                    throw std::runtime_error(std::string("-n: unknown normalization '") + val + "' (mixln, deepnorm or deepnorm_paper)");
                o.model.norm = (NormScheme)scheme;
                break;
            }
            case 'S': o.model.scaled_init = parse_bool(flag, val); break;
            case 'E': o.model.scaled_embed = parse_bool(flag, val); break;
            case 'b': o.micro_batch = parse_int(flag, val, 1); break;
            case 't': o.seq_len = parse_int(flag, val, 2); break;
            case 'd': o.total_batch = parse_integer(flag, val, 1, LONG_MAX); break;
            case 'l': o.lr = parse_number(flag, val); if (o.lr <= 0) throw std::runtime_error("-l: the learning rate must be > 0"); break;
            case 'x': o.steps = parse_int(flag, val, 0); break;
            case 'u': o.warmup = parse_warmup(val); break;
            case 'q': o.final_lr_fraction = parse_in_range(flag, val, 0.0, 1.0); break;
            case 'w': o.weight_decay = parse_in_range(flag, val, 0.0, 1e3); break;
            case 'g': o.grad_clip = parse_in_range(flag, val, 0.0, 1e9); break;
            case 'N': o.max_skipped_in_a_row = parse_int(flag, val, 1); break;
            case 'R': o.recompute = parse_bool(flag, val); break;
            case 'Z': o.zero1 = parse_bool(flag, val); break;
            case 'D': o.cuda_graphs = parse_bool(flag, val); break;
            case 'W': o.start_over = parse_bool(flag, val); break;
            case 'U': o.accept_changes = parse_bool(flag, val); break;
            case 's': o.seed = (uint64_t)parse_integer(flag, val, 0, INT64_MAX); break;
            case 'v': o.val_interval = parse_int(flag, val, 0); break;
            case 'm': parse_val_budget(val, &o); break;
            case 'c': o.ckpt_interval = parse_int(flag, val, -1); break;
            case 'k': o.keep_checkpoints = parse_int(flag, val, 0); break;
            case 'y': o.grad_norm_interval = parse_int(flag, val, 0); break;
            case 'G': o.sample_tokens = parse_int(flag, val, 0); break;
            case 'P': o.prompt = val; break;
            case 'T': o.temperature = parse_in_range(flag, val, 0.0, 100.0); break;
            case 'z': o.vocab_file = val; break;
            default: throw std::runtime_error("unknown flag -" + std::string(1, flag));
        }
    }
    if (o.help) return o;
    if (o.steps == 0) return check_evaluate_or_sample_options(o);
    if (!apply_model_preset(o.preset.c_str(), &o.model))
        throw std::runtime_error("-e: unknown preset '" + o.preset + "' (tiny, 71m, 130m, 250m, 350m, 1b)");
    if (!L.empty()) o.model.n_layer = parse_int('L', L.c_str(), 1);
    if (!C.empty()) o.model.d_model = parse_int('C', C.c_str(), 2);
    if (!H.empty()) o.model.n_head = parse_int('H', H.c_str(), 1);
    if (!F.empty()) o.model.d_ffn = parse_int('F', F.c_str(), 1);
    apply_preset_training_defaults(&o);
    if (o.train_files.empty()) throw std::runtime_error("-i: no training shards given");
    o.model.max_seq_len = o.seq_len;
    const std::string bad_model = model_config_problem(o.model);
    if (!bad_model.empty()) throw std::runtime_error("model flags: " + bad_model);
    accumulation_steps(o, 1);  // the trainer checks again with its number of ranks
    o.out_dir = checked_output_dir(o.out_dir);
    if (!o.resume.empty() && !o.init_from.empty()) throw std::runtime_error("-r and -f exclude each other");
    if (o.start_over && !o.resume.empty()) throw std::runtime_error("-W 1 starts a new run; -r continues one: give one of them");
    if (o.ckpt_interval < 0 && !o.resume.empty())
        throw std::runtime_error("-c -1 saves nothing, so the run continued by -r would lose its progress; "
                                 "give -c N, or start from the checkpoint's weights with -f");
    if (o.ckpt_interval < 0 && o.given.count('k')) throw std::runtime_error("-k: -c -1 writes no checkpoint to keep");
    warmup_steps(o);
    return o;
}
