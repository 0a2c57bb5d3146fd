// analyze_mixln_cpu: the paper's layer measurements on a model at initialization or from a
// checkpoint, with the CPU reference model. Takes the trainers' flags (model, data, -b, -t, -m, -o,
// -f CHECKPOINT) plus -A with a comma-separated list of:
//   grad   per-layer gradient norms over -m batches of -i      -> OUT/grad_norms.csv    (Fig. 3e, 6)
//   angle  angular distance between layer inputs, -m batches   -> OUT/angular_distance.csv (eq. 6, Fig. 3a/b, 5)
//   prune  val loss with each single layer removed, -m batches of -j (else -i) -> OUT/pruning.csv (eq. 7)
// Without -f the model is freshly initialized from -s, as in the paper's "at initialization" plots;
// with -f, -t and -b default to the checkpoint's training values (a differing one is noted).
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>
#include "core/analysis.h"
#include "core/memory.h"
#include "core/model_cpu.h"
#include "core/trainer.h"

struct AnalysisRun {
    TrainOptions o;
    std::set<std::string> what;
};

static AnalysisRun parse_analysis_options(int argc, char** argv) {
    AnalysisRun run;
    std::vector<char*> rest = {argv[0]};
    std::string what = "grad,angle,prune";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-A") == 0) {
            if (i + 1 >= argc) throw std::runtime_error("-A needs a value");
            what = argv[++i];
        } else {
            rest.push_back(argv[i]);
        }
    }
    std::stringstream ss(what);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item != "grad" && item != "angle" && item != "prune")
            throw std::runtime_error("-A: unknown measurement '" + item + "' (grad, angle, prune)");
        run.what.insert(item);
    }
    run.o = parse_train_options((int)rest.size(), rest.data());
    reject_gpu_only_options(run.o);
    if (run.o.val_tokens) throw std::runtime_error("-m: analyze_mixln_cpu counts batches; give -m N without a suffix");
    return run;
}

static FILE* open_csv(const std::string& path, const char* header) {
    FILE* f = fopen(path.c_str(), "w");
    if (!f) throw std::runtime_error("cannot write '" + path + "': " + strerror(errno));
    fprintf(f, "%s\n", header);
    return f;
}

// With a checkpoint, -t and -b default to the sequence length and micro-batch it was trained with; a
// given value that differs is used, with a note (a longer -t measures positions it never trained on).
static void take_data_flags_from_checkpoint(TrainOptions& o, const Checkpoint& ck) {
    const int64_t trained_t = ck.state.seq_len > 0 ? ck.state.seq_len : ck.cfg.max_seq_len;
    const int64_t trained_b = ck.state.micro_batch;  // 0 in a weights-only checkpoint
    if (!o.given.count('t')) o.seq_len = (int)trained_t;
    else if (o.seq_len != trained_t)
        printf("note: -t %d differs from the sequence length the checkpoint was trained at (%lld)\n", o.seq_len,
               (long long)trained_t);
    if (trained_b > 0 && !o.given.count('b')) o.micro_batch = (int)trained_b;
    else if (trained_b > 0 && o.micro_batch != trained_b)
        printf("note: -b %d differs from the checkpoint's training micro-batch (%lld)\n", o.micro_batch,
               (long long)trained_b);
}

static int analyze(AnalysisRun& run) {
    TrainOptions& o = run.o;
    const std::unique_ptr<FoundCheckpoint> found = load_start_checkpoint(o, /*lead=*/true);
    const Checkpoint* ck = found ? &found->ck : nullptr;
    if (ck) take_data_flags_from_checkpoint(o, *ck);
    const ModelConfig cfg = resolve_model_config(o, ck);
    check_cpu_memory(cfg, o.micro_batch, o.seq_len);
    CpuModel<float> model(cfg);
    if (ck) model.params = ck->params;
    else init_parameters(model.params.data(), cfg, model.layout, o.seed);
    const int B = o.micro_batch, T = o.seq_len, L = cfg.n_layer;
    make_directories(o.out_dir);
    printf("model: %d layers, %d Post-LN%s, %s; %d batches of %d x %d tokens\n", L, num_post_ln_layers(cfg),
           cfg.norm != NormScheme::MixLN ? (std::string(" (-n ") + norm_scheme_name((int)cfg.norm) + ")").c_str() : "", ck ? ("weights of " + o.init_from).c_str() : "at initialization",
           o.val_batches, B, T);
    std::vector<int> in((size_t)B * T), tgt((size_t)B * T);

    if (run.what.count("grad")) {
        DataLoader data(o.train_files, B, T, 0, 1, false, 0, cfg.vocab_size);
        model.zero_grad();
        for (int i = 0; i < o.val_batches; i++) {
            data.next_batch(in.data(), tgt.data());
            model.forward(in.data(), tgt.data(), B, T);
            model.backward(1.0f / o.val_batches);
        }
        FILE* f = open_csv(o.out_dir + "/grad_norms.csv", "layer,post_ln,attention,mlp,total");
        const std::vector<LayerGradNorm> norms = layer_grad_norms(cfg, model.layout, model.grads.data());
        for (int l = 0; l < L; l++) {
            fprintf(f, "%d,%d,%.9g,%.9g,%.9g\n", l, (int)layer_is_post_ln(cfg, l), norms[l].attention, norms[l].mlp, norms[l].total);
            printf("grad norm layer %2d (%s): attention %.4e  mlp %.4e  total %.4e\n", l,
                   layer_is_post_ln(cfg, l) ? "Post-LN" : "Pre-LN ", norms[l].attention, norms[l].mlp, norms[l].total);
        }
        fclose(f);
    }

    if (run.what.count("angle")) {
        DataLoader data(o.train_files, B, T, 0, 1, false, 0, cfg.vocab_size);
        AngularDistance distance(L);
        for (int i = 0; i < o.val_batches; i++) {
            data.next_batch(in.data(), tgt.data());
            model.forward(in.data(), nullptr, B, T);
            std::vector<const float*> states;
            for (int l = 0; l < L; l++) states.push_back(model.acts[l].x.data());
            states.push_back(model.final_in.data());
            distance.accumulate(states, (long)B * T, cfg.d_model);
        }
        FILE* f = open_csv(o.out_dir + "/angular_distance.csv", "layer,n,distance");
        for (int l = 0; l < L; l++)
            for (int n = 1; l + n <= L; n++) fprintf(f, "%d,%d,%.9g\n", l, n, distance.mean(l, n));
        fclose(f);
        printf("angular distance to the next layer:");
        for (int l = 0; l < L; l++) printf(" %.3f", distance.mean(l, 1));
        printf("  (over %ld tokens)\n", distance.tokens);
    }

    if (run.what.count("prune")) {
        DataLoader data(o.val_files.empty() ? o.train_files : o.val_files, B, T, 0, 1, false, 0, cfg.vocab_size);
        auto mean_loss = [&](int skip) {
            data.reset();
            double sum = 0;
            for (int i = 0; i < o.val_batches; i++) {
                data.next_batch(in.data(), tgt.data());
                sum += model.forward(in.data(), tgt.data(), B, T, skip);
            }
            return sum / o.val_batches;
        };
        const double base = mean_loss(-1);
        FILE* f = open_csv(o.out_dir + "/pruning.csv", "layer,loss,ppl,delta_loss,delta_ppl");
        fprintf(f, "none,%.9g,%.9g,0,0\n", base, std::exp(base));
        printf("pruning: full model loss %.4f (ppl %.2f)\n", base, std::exp(base));
        for (int l = 0; l < L; l++) {
            const double loss = mean_loss(l);
            fprintf(f, "%d,%.9g,%.9g,%.9g,%.9g\n", l, loss, std::exp(loss), loss - base, std::exp(loss) - std::exp(base));
            printf("pruning layer %2d: loss %.4f  delta %+.4f  (ppl %+.2f)\n", l, loss, loss - base, std::exp(loss) - std::exp(base));
        }
        fclose(f);
    }
    return 0;
}

int main(int argc, char** argv) {
    AnalysisRun run;
    try {
        run = parse_analysis_options(argc, argv);
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\nrun with -h for the list of flags\n", e.what());
        return 2;
    }
    if (run.o.help) {
        printf("usage: analyze_mixln_cpu -i SHARDS [-f CHECKPOINT] [-A grad,angle,prune] [trainer flags]\n%s", train_usage());
        return 0;
    }
    try {
        return analyze(run);
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
