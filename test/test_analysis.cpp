// The layer measurements against direct computations: angular distance of hand-built vectors, a
// pruned layer equals the model without it, and per-layer gradient norms add up to the global norm.
#include <cmath>
#include <vector>
#include "catch_compat.h"
#include "../core/analysis.h"
#include "../core/model_cpu.h"

TEST_CASE("angular distance of hand-built vectors") {
    // one token, C = 2, states at depths 0..3 (L = 3): angles 0, 90, 180 and 45 degrees from x0
    const std::vector<float> x0 = {1, 0}, x1 = {0, 2}, x2 = {-3, 0}, x3 = {1, 1};
    AngularDistance d(3);
    d.accumulate({x0.data(), x1.data(), x2.data(), x3.data()}, 1, 2);
    CHECK(d.mean(0, 1) == Approx(0.5));
    CHECK(d.mean(0, 2) == Approx(1.0));
    CHECK(d.mean(0, 3) == Approx(0.25));
    CHECK(d.mean(1, 1) == Approx(0.5));
    CHECK(d.mean(2, 1) == Approx(0.75));
    // averaging over tokens: a second token whose states are all equal adds distance 0
    const std::vector<float> y = {2, 5};
    d.accumulate({y.data(), y.data(), y.data(), y.data()}, 1, 2);
    CHECK(d.tokens == 2);
    CHECK(d.mean(0, 1) == Approx(0.25));
    CHECK(d.mean(0, 3) == Approx(0.125).margin(1e-6));  // acos of a rounded 1.0 may be ~1e-4 rad
}

static ModelConfig small(int L, double alpha) {
    ModelConfig cfg;
    cfg.vocab_size = 13; cfg.d_model = 8; cfg.n_head = 2; cfg.d_ffn = 12; cfg.n_layer = L; cfg.alpha = alpha;
    return cfg;
}

// Copies every tensor of `from` into `to`, leaving out layer `skip` of the per-layer tensors.
static void copy_without_layer(CpuModel<double>& to, CpuModel<double>& from, int skip) {
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (!param_is_per_layer(t)) {
            std::copy(from.param(t), from.param(t) + from.layout.layer_size[t], to.param(t));
            continue;
        }
        for (int l = 0, k = 0; l < from.cfg.n_layer; l++) {
            if (l == skip) continue;
            std::copy(from.param(t, l), from.param(t, l) + from.layout.layer_size[t], to.param(t, k++));
        }
    }
}

TEST_CASE("pruning a layer equals running the model without it") {
    struct Case { int L; double alpha; int skip; double alpha_after; };
    // the remaining layers keep their type: Pre-LN model; Mix-LN dropping a Pre-LN layer; dropping the Post-LN one
    const Case cases[] = {{3, 0.0, 1, 0.0}, {3, 0.34, 2, 0.5}, {3, 0.34, 0, 0.0}, {3, 1.0, 1, 1.0}};
    for (const Case& c : cases) {
        INFO("L=" << c.L << " alpha=" << c.alpha << " skip=" << c.skip);
        CpuModel<double> full(small(c.L, c.alpha)), pruned(small(c.L - 1, c.alpha_after));
        std::vector<float> p(full.layout.total);
        init_parameters(p.data(), full.cfg, full.layout, 3);
        full.params.assign(p.begin(), p.end());
        copy_without_layer(pruned, full, c.skip);
        const int B = 2, T = 5;
        std::vector<int> tokens(B * T), targets(B * T);
        Rng rng(4);
        for (int i = 0; i < B * T; i++) { tokens[i] = (int)rng.below(13); targets[i] = (int)rng.below(13); }
        const double skipped = full.forward(tokens.data(), targets.data(), B, T, c.skip);
        const double direct = pruned.forward(tokens.data(), targets.data(), B, T);
        CHECK(skipped == Approx(direct).epsilon(1e-12));
        CHECK(full.forward(tokens.data(), targets.data(), B, T) != Approx(direct).epsilon(1e-6));
    }
}

TEST_CASE("per-layer gradient norms add up to the global gradient norm") {
    const ModelConfig cfg = small(3, 0.34);
    CpuModel<float> model(cfg);
    init_parameters(model.params.data(), cfg, model.layout, 5);
    const int B = 2, T = 6;
    std::vector<int> tokens(B * T), targets(B * T);
    Rng rng(6);
    for (int i = 0; i < B * T; i++) { tokens[i] = (int)rng.below(13); targets[i] = (int)rng.below(13); }
    model.zero_grad();
    model.forward(tokens.data(), targets.data(), B, T);
    model.backward();
    const std::vector<LayerGradNorm> norms = layer_grad_norms(cfg, model.layout, model.grads.data());
    double sum_sq = 0;
    for (const LayerGradNorm& n : norms) {
        sum_sq += n.total * n.total;
        CHECK(n.total >= std::sqrt(n.attention * n.attention + n.mlp * n.mlp) - 1e-12);
    }
    for (int t : {WTE, NORM_F, LM_HEAD}) {
        const double norm = global_grad_norm(model.grad(t), model.layout.layer_size[t]);
        sum_sq += norm * norm;
    }
    CHECK(std::sqrt(sum_sq) == Approx(global_grad_norm(model.grads.data(), model.layout.total)).epsilon(1e-9));
    double direct = 0;  // layer 1's attention by hand
    for (int t : {WQ, WK, WV, WO})
        for (long i = 0; i < model.layout.layer_size[t]; i++) direct += (double)model.grad(t, 1)[i] * model.grad(t, 1)[i];
    CHECK(norms[1].attention == Approx(std::sqrt(direct)).epsilon(1e-12));
}
