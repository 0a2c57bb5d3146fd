// The CPU reference model: Mix-LN's layer assignment, the two layer orderings, and whole-model
// gradients against finite differences in double precision.
#include <cmath>
#include <vector>
#include "gradcheck.h"
#include "model_params.h"
#include "../core/model_cpu.h"

static ModelConfig tiny_config(double alpha, NormScheme norm = NormScheme::MixLN) {
    ModelConfig cfg;
    cfg.vocab_size = 11; cfg.d_model = 12; cfg.n_head = 3; cfg.d_ffn = 10; cfg.n_layer = 2;
    cfg.max_seq_len = 16; cfg.alpha = alpha; cfg.norm = norm;
    return cfg;
}

TEST_CASE("alpha selects exactly floor(alpha * L) Post-LN layers, the first ones") {
    struct Case { int L; double alpha; int post; };
    const Case cases[] = {{12, 0.0, 0}, {12, 0.25, 3}, {12, 0.33, 3}, {12, 0.417, 5}, {12, 0.5, 6},
                          {12, 1.0, 12}, {24, 0.25, 6}, {24, 0.125, 3}, {24, 0.33, 7}, {24, 0.75, 18},
                          {100, 0.29, 29}, {10, 0.3, 3}, {7, 0.5, 3}};
    for (const Case& c : cases) {
        ModelConfig cfg;
        cfg.n_layer = c.L; cfg.alpha = c.alpha;
        INFO("L=" << c.L << " alpha=" << c.alpha);
        CHECK(num_post_ln_layers(cfg) == c.post);
        for (int l = 0; l < c.L; l++) CHECK(layer_is_post_ln(cfg, l) == (l < c.post));
    }
    ModelConfig deep;
    deep.n_layer = 24; deep.norm = NormScheme::DeepNorm; deep.alpha = 0.0;
    CHECK(num_post_ln_layers(deep) == 24);
    CHECK(residual_scale(deep) == Approx(std::pow(48.0, 0.25)));
}

TEST_CASE("Post-LN layers normalize their output (eq. 1); Pre-LN layers add to the residual (eq. 2)") {
    ModelConfig cfg = tiny_config(0.5);
    cfg.n_layer = 4;  // layers 0, 1 Post-LN; 2, 3 Pre-LN
    CpuModel<double> model(cfg);
    std::vector<float> p(model.layout.total);
    init_parameters(p.data(), cfg, model.layout, 42);  // norm weights 1
    model.params.assign(p.begin(), p.end());
    const int B = 2, T = 5, N = B * T, C = cfg.d_model;
    std::vector<int> tokens(N);
    Rng rng(3);
    for (int& t : tokens) t = (int)rng.below(cfg.vocab_size);
    model.forward(tokens.data(), nullptr, B, T);
    for (int l = 0; l < 4; l++) {
        const auto& a = model.acts[l];
        for (int n = 0; n < N; n++) {
            double ms = 0, diff = 0;
            for (int c = 0; c < C; c++) {
                ms += a.out[n * C + c] * a.out[n * C + c] / C;
                diff += std::fabs(a.out[n * C + c] - (a.h[n * C + c] + a.mlp_out[n * C + c]));
            }
            if (l < 2) CHECK(ms == Approx(1.0).epsilon(1e-4));  // rms 1 up to eps
            else CHECK(diff == Approx(0.0).margin(1e-12));      // out = h + MLP(LN(h))
        }
    }
}

static void check_model_gradients(const ModelConfig& cfg) {
    CpuModel<double> model(cfg);
    init_with_random_norms(model, 7);
    const int B = 2, T = 7, N = B * T;
    std::vector<int> tokens(N), targets(N);
    Rng rng(5);
    for (int n = 0; n < N; n++) { tokens[n] = (int)rng.below(cfg.vocab_size); targets[n] = (int)rng.below(cfg.vocab_size); }
    targets[3] = IGNORE_INDEX;
    model.zero_grad();
    model.forward(tokens.data(), targets.data(), B, T);
    model.backward();
    const std::vector<double> analytic = model.grads;
    auto loss = [&] { return model.forward(tokens.data(), targets.data(), B, T); };
    // per tensor, so a failure names the tensor; over the model's elements (the MLP's zero padding
    // has its own test, test/test_padded_ffn.cpp)
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const std::vector<long> idx = param_elements_all_layers(cfg, model.layout, t);
        std::vector<double> x, g;
        for (long i : idx) { x.push_back(model.params[i]); g.push_back(analytic[i]); }
        auto loss_of_tensor = [&] {
            for (size_t k = 0; k < idx.size(); k++) model.params[idx[k]] = x[k];
            return loss();
        };
        INFO("tensor " << param_tensor_name(t));
        CHECK(gradcheck_worst(loss_of_tensor, x, g) <= 1.0);
        loss_of_tensor();
    }
}

TEST_CASE("whole-model gradients match finite differences: Pre-LN (alpha 0)") { check_model_gradients(tiny_config(0.0)); }
TEST_CASE("whole-model gradients match finite differences: Mix-LN (alpha 0.5)") { check_model_gradients(tiny_config(0.5)); }
TEST_CASE("whole-model gradients match finite differences: Post-LN (alpha 1)") { check_model_gradients(tiny_config(1.0)); }
TEST_CASE("whole-model gradients match finite differences: DeepNorm") { check_model_gradients(tiny_config(0.0, NormScheme::DeepNorm)); }
TEST_CASE("whole-model gradients match finite differences: the paper code's DeepNorm") {
    check_model_gradients(tiny_config(0.0, NormScheme::DeepNormPaper));
}
TEST_CASE("whole-model gradients match finite differences: Mix-LN with scaled init and scaled embed") {
    ModelConfig cfg = tiny_config(0.5);
    cfg.scaled_init = cfg.scaled_embed = true;
    check_model_gradients(cfg);
}

TEST_CASE("gradient accumulation: two half-weighted backwards equal one full backward") {
    const ModelConfig cfg = tiny_config(0.5);
    CpuModel<double> model(cfg);
    init_with_random_norms(model, 11);
    const int B = 2, T = 6, N = B * T;
    std::vector<int> tokens(N), targets(N);
    Rng rng(9);
    for (int n = 0; n < N; n++) { tokens[n] = (int)rng.below(cfg.vocab_size); targets[n] = (int)rng.below(cfg.vocab_size); }
    model.zero_grad();
    model.forward(tokens.data(), targets.data(), B, T);
    model.backward();
    const std::vector<double> once = model.grads;
    model.zero_grad();
    for (int rep = 0; rep < 2; rep++) { model.forward(tokens.data(), targets.data(), B, T); model.backward(0.5); }
    for (long i = 0; i < model.layout.total; i++) CHECK(model.grads[i] == Approx(once[i]).margin(1e-12));
}

TEST_CASE("the float model agrees with the double model") {
    const ModelConfig cfg = tiny_config(0.5);
    CpuModel<double> md(cfg);
    init_with_random_norms(md, 13);
    CpuModel<float> mf(cfg);
    mf.params.assign(md.params.begin(), md.params.end());
    const int B = 2, T = 7, N = B * T;
    std::vector<int> tokens(N), targets(N);
    Rng rng(1);
    for (int n = 0; n < N; n++) { tokens[n] = (int)rng.below(cfg.vocab_size); targets[n] = (int)rng.below(cfg.vocab_size); }
    md.zero_grad(); mf.zero_grad();
    const double ld = md.forward(tokens.data(), targets.data(), B, T);
    const double lf = mf.forward(tokens.data(), targets.data(), B, T);
    md.backward(); mf.backward();
    CHECK(lf == Approx(ld).epsilon(1e-5));
    // fp32 rounding (2^-24 ~ 6e-8) grows through a few dozen operations; 1e-4 of the largest gradient
    double gmax = 0;
    for (double g : md.grads) gmax = std::fmax(gmax, std::fabs(g));
    for (long i = 0; i < md.layout.total; i++) CHECK(std::fabs(mf.grads[i] - md.grads[i]) <= 1e-4 * gmax);
}

// The official code's DeepNorm ("deeppost" in its modeling_llama.py): every layer Post-LN with the
// residual times 2.8284271247461903, and torch.nn.init.xavier_normal_ with gain (8L)^(1/4) for v, o,
// gate, up, down and gain 1 for q, k. The expected values are literals worked out for L = 6,
// d = 128, f = 352: sqrt(2/256), 48^(1/4) sqrt(2/256), 48^(1/4) sqrt(2/480).
TEST_CASE("the paper code's DeepNorm: initialization statistics and residual weight") {
    ModelConfig cfg;
    cfg.vocab_size = 50; cfg.n_layer = 6; cfg.d_model = 128; cfg.n_head = 4; cfg.d_ffn = 352;
    cfg.norm = NormScheme::DeepNormPaper;
    const ParamLayout layout = make_param_layout(cfg);
    std::vector<float> p(layout.total);
    init_parameters(p.data(), cfg, layout, 42);
    struct Expect { int tensor; double std; };
    const Expect expected[] = {{WQ, 0.08838834764831845}, {WK, 0.08838834764831845}, {WV, 0.2326512147755249},
                               {WO, 0.2326512147755249},  {WGATE, 0.1699044244847122}, {WUP, 0.1699044244847122},
                               {WDOWN, 0.1699044244847122}, {WTE, std::sqrt(0.4)}, {LM_HEAD, 0.02}};
    for (const Expect& e : expected) {
        INFO("tensor " << param_tensor_name(e.tensor));
        const std::vector<long> idx = param_elements_all_layers(cfg, layout, e.tensor);
        const long n = (long)idx.size();
        double sum = 0, sum_sq = 0;
        for (long i : idx) { const double x = p[i]; sum += x; sum_sq += x * x; }
        const double mean = sum / n, std = std::sqrt(sum_sq / n - mean * mean);
        // n >= 6400 samples: the sample std is within 1/sqrt(2n) <= 0.9% of the true one (1 sigma)
        CHECK(std == Approx(e.std).epsilon(0.04));
        CHECK(std::fabs(mean) < 5 * e.std / std::sqrt((double)n));
    }
    for (int t : {NORM_A, NORM_B, NORM_F})
        for (long i : param_elements_all_layers(cfg, layout, t)) CHECK(p[i] == 1.0f);
    // The residual weight is sqrt(8) for any depth; DeepNet's formula stays (2L)^(1/4).
    CHECK(residual_scale(cfg) == 2.8284271247461903);
    cfg.n_layer = 24;
    CHECK(residual_scale(cfg) == 2.8284271247461903);
    CHECK(num_post_ln_layers(cfg) == 24);
    cfg.norm = NormScheme::DeepNorm;
    CHECK(residual_scale(cfg) == Approx(std::pow(48.0, 0.25)));
    // and the model applies it: each Post-LN residual sum is sqrt(8) x + F(x)
    ModelConfig tiny = tiny_config(0.0, NormScheme::DeepNormPaper);
    CpuModel<double> model(tiny);
    init_with_random_norms(model, 3);
    const int B = 2, T = 5, NC = B * T * tiny.d_model;
    std::vector<int> tokens(B * T);
    Rng rng(4);
    for (int& t : tokens) t = (int)rng.below(tiny.vocab_size);
    model.forward(tokens.data(), nullptr, B, T);
    for (int l = 0; l < tiny.n_layer; l++) {
        const auto& a = model.acts[l];
        for (int i = 0; i < NC; i++) {
            CHECK(a.norm_a_in[i] == Approx(std::sqrt(8.0) * a.x[i] + a.attn_out[i]).margin(1e-12));
            CHECK(a.norm_b_in[i] == Approx(std::sqrt(8.0) * a.h[i] + a.mlp_out[i]).margin(1e-12));
        }
    }
}
