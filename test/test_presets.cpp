// The presets against the official Mix-LN code (github.com/pixeli99/MixLN): model sizes from its
// configs/llama_*.json, parameter counts computed here independently, and the training defaults of
// its scripts/run_*.sh, with the two ways of giving a warmup.
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../core/cli.h"

static TrainOptions parse(std::vector<std::string> args) {
    args.insert(args.begin(), "train");
    args.insert(args.end(), {"-i", "x"});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    return parse_train_options((int)argv.size(), argv.data());
}

static std::string parse_error(const std::vector<std::string>& args) {
    try { parse(args); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

// Hugging Face's LlamaForCausalLM as the official code builds it: embedding and an untied LM head
// (V x d each), per layer q, k, v, o (d x d), gate, up (f x d), down (d x f) and two RMSNorm
// weights, then the final RMSNorm; no biases, RoPE has no parameters.
static long hf_llama_parameters(long V, long d, long f, long L) {
    return 2 * V * d + L * (4 * d * d + 3 * d * f + 2 * d) + d;
}

TEST_CASE("presets are the official configs; their parameter counts at vocab 32000") {
    struct Official { const char* preset; int hidden, intermediate, heads, layers; long parameters; };
    // configs/llama_{71m,130m,250m,350m,1b}.json; the counts are literals, computed once from the
    // formula above in Python, and the names round them (1b: 1.34B)
    const Official official[] = {{"71m", 512, 1368, 8, 12, 70578688},       {"130m", 768, 2048, 12, 12, 134105856},
                                 {"250m", 768, 2560, 16, 24, 247370496},    {"350m", 1024, 2736, 16, 24, 367969280},
                                 {"1b", 2048, 5461, 32, 24, 1339082752}};
    for (const Official& c : official) {
        INFO("preset " << c.preset);
        const TrainOptions o = parse({"-e", c.preset, "-V", "32000"});
        CHECK(o.model.d_model == c.hidden);
        CHECK(o.model.d_ffn == c.intermediate);
        CHECK(o.model.n_head == c.heads);
        CHECK(o.model.n_layer == c.layers);
        CHECK(hf_llama_parameters(32000, c.hidden, c.intermediate, c.layers) == c.parameters);
        CHECK(num_model_parameters(o.model) == c.parameters);
    }
    // The 250M of the paper's Table 4 (d 1024, ffn 2560) would be a 355M model; ours is the code's.
    const TrainOptions table4 = parse({"-e", "250m", "-C", "1024", "-V", "32000"});
    CHECK(num_model_parameters(table4.model) == 354993152);
    CHECK(parse({"-e", "250m"}).model.head_dim() == 48);
}

TEST_CASE("training defaults per preset are the official scripts'") {
    struct Script { const char* preset; double lr; int steps, warmup_steps; };
    const Script scripts[] = {{"71m", 1e-3, 10000, 1000}, {"130m", 1e-3, 20000, 2000}, {"250m", 1e-3, 40000, 4000},
                              {"1b", 5e-4, 100000, 1000}, {"tiny", 5e-3, 2000, 200}};
    for (const Script& s : scripts) {
        INFO("preset " << s.preset);
        const TrainOptions o = parse({"-e", s.preset});
        CHECK(o.lr == Approx(s.lr));
        CHECK(o.steps == s.steps);
        CHECK(warmup_steps(o) == s.warmup_steps);
        CHECK(o.total_batch == 512 * 256);
        CHECK(o.grad_clip == 0.0);
        CHECK(o.weight_decay == 0.0);
    }
    // the 10% warmups scale with -x; 1b's 1000 steps do not
    CHECK(warmup_steps(parse({"-e", "71m", "-x", "500"})) == 50);
    CHECK(warmup_steps(parse({"-e", "1b", "-x", "5000"})) == 1000);
}

TEST_CASE("-u takes a fraction below 1 or a whole number of steps") {
    CHECK(warmup_steps(parse({"-x", "1000", "-u", "0.1"})) == 100);
    CHECK(warmup_steps(parse({"-x", "1000", "-u", "250"})) == 250);
    CHECK(warmup_steps(parse({"-x", "1000", "-u", "1"})) == 1);
    CHECK(warmup_steps(parse({"-x", "1000", "-u", "0"})) == 0);
    CHECK(parse_error({"-u", "1.5"}).find("-u: '1.5' is neither a fraction") == 0);
    CHECK(parse_error({"-u", "-0.1"}).find("-u") == 0);
    CHECK(parse_error({"-x", "100", "-u", "100"}).find("-u: a warmup of 100 steps is not shorter") == 0);
    CHECK(parse_error({"-e", "1b", "-x", "500"}).find("(the preset's) is not shorter than the 500 steps") != std::string::npos);
}
