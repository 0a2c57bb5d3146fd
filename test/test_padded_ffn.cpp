// The v3 parameter layout (core/config.h) and its padded MLP: where each tensor is, that the padding's
// gradients are exactly zero and AdamW keeps it zero, and that the padding changes nothing the model
// computes.
//
// Why the padding's gradients are exactly zero. For a padded unit j (F <= j < Fs), row j of gate and
// up and column j of down hold 0; for every row n of the batch, with x = mlp_in and dout = d mlp_out:
//   gate[n, j] = x[n] . Wgate[j] = 0,  up[n, j] = x[n] . Wup[j] = 0
//   swiglu[n, j] = silu(gate[n, j]) * up[n, j] = silu(0) * 0 = 0
//   d swiglu[n, j] = dout[n] . Wdown[:, j] = 0
//   d up[n, j] = d swiglu[n, j] * silu(gate[n, j]) = 0
//   d gate[n, j] = d swiglu[n, j] * up[n, j] * silu'(gate[n, j]) = 0
//   d Wgate[j] = sum_n d gate[n, j] x[n] = 0,  d Wup[j] = sum_n d up[n, j] x[n] = 0,
//   d Wdown[:, j] = sum_n dout[n] swiglu[n, j] = 0
// and unit j adds swiglu[n, j] * Wdown[:, j] = 0 to the output and d gate[n, j] Wgate[j] + d up[n, j]
// Wup[j] = 0 to d x. Each is a sum of products with an exact zero, so it is exactly 0 in floating point
// too. AdamW then sees g = 0: m and v stay 0, its step m_hat / (sqrt(v_hat) + eps) is 0, and weight
// decay shrinks 0 to 0. (One nonzero in the padding alone is harmless, since silu(g) * 0 = 0; a unit
// whose up row and down column are both nonzero is not: the last test shows that the checks see it.)
#include <algorithm>
#include <cmath>
#include <vector>
#include "catch_compat.h"
#include "model_params.h"
#include "../core/model_cpu.h"

static ModelConfig small_config(int d_ffn) {
    ModelConfig cfg;
    cfg.vocab_size = 11; cfg.d_model = 12; cfg.n_head = 3; cfg.d_ffn = d_ffn; cfg.n_layer = 3; cfg.max_seq_len = 16;
    cfg.alpha = 0.34;  // layer 0 Post-LN, layers 1 and 2 Pre-LN
    return cfg;
}

struct Batch {
    std::vector<int> tokens, targets;
};

static Batch random_batch(int N, int vocab, uint64_t seed) {
    Batch b{std::vector<int>(N), std::vector<int>(N)};
    Rng rng(seed);
    for (int n = 0; n < N; n++) { b.tokens[n] = (int)rng.below(vocab); b.targets[n] = (int)rng.below(vocab); }
    return b;
}

TEST_CASE("the v3 layout: layer blocks back to back, q|k|v and gate|up adjacent, the MLP stored 64-aligned") {
    const ModelConfig cfg = small_config(10);
    const ParamLayout p = make_param_layout(cfg);
    const long V = 11, C = 12, Fs = 64, L = 3;
    CHECK(ffn_stored(cfg) == Fs);
    CHECK(p.at(WTE) == 0);
    CHECK(p.layer_begin(0) == V * C);
    CHECK(p.layer_stride == 4 * C * C + 3 * Fs * C + 2 * C);
    for (int l = 0; l < L; l++) {
        INFO("layer " << l);
        CHECK(p.at(WQ, l) == p.layer_begin(l));
        CHECK(p.at(WK, l) == p.at(WQ, l) + C * C);  // one (3C, C) matrix [q; k; v]
        CHECK(p.at(WV, l) == p.at(WQ, l) + 2 * C * C);
        CHECK(p.at(WO, l) == p.at(WQ, l) + 3 * C * C);
        CHECK(p.at(WGATE, l) == p.at(WQ, l) + 4 * C * C);
        CHECK(p.at(WUP, l) == p.at(WGATE, l) + Fs * C);  // one (2Fs, C) matrix [gate; up]
        CHECK(p.at(WDOWN, l) == p.at(WUP, l) + Fs * C);
        CHECK(p.at(NORM_A, l) == p.at(WDOWN, l) + C * Fs);
        CHECK(p.at(NORM_B, l) == p.at(NORM_A, l) + C);
        CHECK(p.layer_begin(l) + p.layer_stride == p.at(NORM_B, l) + C);
    }
    CHECK(p.at(NORM_F) == p.layer_begin(L));
    CHECK(p.at(LM_HEAD) == p.at(NORM_F) + C);
    CHECK(p.total == p.at(LM_HEAD) + V * C);
    // every stored element belongs to exactly one tensor of one layer
    std::vector<int> owners(p.total, 0);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        for (int l = 0; l < (param_is_per_layer(t) ? L : 1); l++)
            for (long i = 0; i < p.layer_size[t]; i++) owners[p.at(t, l) + i]++;
    CHECK(std::count(owners.begin(), owners.end(), 1) == p.total);
    CHECK(num_model_parameters(cfg) == p.total - L * 3 * (Fs - 10) * C);

    // the presets: 1b's F = 5461 is stored 5504 wide; 130m's 2048 is already aligned
    ModelConfig b;
    b.vocab_size = 32000;
    REQUIRE(apply_model_preset("1b", &b));
    CHECK(ffn_stored(b) == 5504);
    CHECK(num_model_parameters(b) == 1339082752);
    CHECK(make_param_layout(b).total == 1339082752 + 24L * 3 * (5504 - 5461) * 2048);
    REQUIRE(apply_model_preset("130m", &b));
    CHECK(make_param_layout(b).total == num_model_parameters(b));
}

TEST_CASE("init_parameters leaves the MLP's padding zero") {
    const ModelConfig cfg = small_config(10);
    const ParamLayout layout = make_param_layout(cfg);
    std::vector<float> p(layout.total, 7.0f);
    init_parameters(p.data(), cfg, layout, 3);
    CHECK(first_layer_with_nonzero_ffn_padding(p.data(), cfg, layout) == -1);
    long nonzero = 0;
    for (float x : p) nonzero += x != 0;
    CHECK(nonzero == num_model_parameters(cfg));  // and every weight of the model drawn (or 1)
}

TEST_CASE("the padding's gradients are exactly zero, and after AdamW steps with weight decay it is still zero") {
    const ModelConfig cfg = small_config(10);
    CpuModel<double> model(cfg);
    init_with_random_norms(model, 5);
    std::vector<double> m(model.layout.total, 0.0), v(model.layout.total, 0.0);
    const std::vector<double> start = model.params;
    const int B = 2, T = 7;
    for (int step = 1; step <= 5; step++) {
        INFO("step " << step);
        const Batch batch = random_batch(B * T, cfg.vocab_size, 100 + step);
        model.zero_grad();
        model.forward(batch.tokens.data(), batch.targets.data(), B, T);
        model.backward();
        CHECK(first_layer_with_nonzero_ffn_padding(model.grads.data(), cfg, model.layout) == -1);
        adamw_update(model.params.data(), model.grads.data(), m.data(), v.data(), model.layout.total, step, 1e-2, 0.9,
                     0.95, 1e-8, /*weight_decay=*/0.1, 1.0);
        for (const std::vector<double>* x : {&model.params, &m, &v})
            CHECK(first_layer_with_nonzero_ffn_padding(x->data(), cfg, model.layout) == -1);
    }
    // the model's MLP weights did train (the checks above are not of a model that stood still)
    for (int t : {WGATE, WUP, WDOWN}) {
        double moved = 0;
        for (long i : param_elements_all_layers(cfg, model.layout, t)) moved = std::fmax(moved, std::fabs(model.params[i] - start[i]));
        CHECK(moved > 1e-3);
    }
}

// Copies a's weights into b, whose MLP is at least as wide: units a.d_ffn..b.d_ffn-1 of b stay zero.
static void copy_into_wider(CpuModel<double>& b, const CpuModel<double>& a) {
    b.params.assign(b.layout.total, 0.0);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const TensorShape sa = param_shape(a.cfg, t), sb = param_shape(b.cfg, t);
        for (int l = 0; l < (param_is_per_layer(t) ? a.cfg.n_layer : 1); l++)
            for (long r = 0; r < sa.rows; r++)
                for (long c = 0; c < sa.cols; c++)
                    b.params[b.layout.at(t, l) + r * sb.ld + c] = a.params[a.layout.at(t, l) + r * sa.ld + c];
    }
}

// The same weights stored 64 wide (F 60) and 128 wide (F 128, units 60..127 zero): every sum of the
// wider model has the narrower one's terms in the same order plus exact zeros at the end, so the
// logits, the loss and every gradient of the narrower model's weights are the same, bit for bit.
TEST_CASE("the padding changes nothing: the same weights at another padding give the same logits, loss and gradients") {
    CpuModel<double> narrow(small_config(60)), wide(small_config(128));
    REQUIRE(ffn_stored(narrow.cfg) == 64);
    REQUIRE(ffn_stored(wide.cfg) == 128);
    init_with_random_norms(narrow, 9);
    copy_into_wider(wide, narrow);
    const int B = 2, T = 6;
    const Batch batch = random_batch(B * T, narrow.cfg.vocab_size, 4);
    for (CpuModel<double>* model : {&narrow, &wide}) {
        model->zero_grad();
        model->forward(batch.tokens.data(), batch.targets.data(), B, T);
        model->backward();
    }
    CHECK(wide.forward(batch.tokens.data(), batch.targets.data(), B, T) ==
          narrow.forward(batch.tokens.data(), batch.targets.data(), B, T));
    CHECK(wide.logits == narrow.logits);
    long compared = 0, differ = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const TensorShape sn = param_shape(narrow.cfg, t), sw = param_shape(wide.cfg, t);
        for (int l = 0; l < (param_is_per_layer(t) ? narrow.cfg.n_layer : 1); l++)
            for (long r = 0; r < sn.rows; r++)
                for (long c = 0; c < sn.cols; c++, compared++)
                    differ += narrow.grads[narrow.layout.at(t, l) + r * sn.ld + c] != wide.grads[wide.layout.at(t, l) + r * sw.ld + c];
    }
    CHECK(compared == num_model_parameters(narrow.cfg));
    CHECK(differ == 0);
}

// The checks above can fail: a unit of the padding whose up row and down column are nonzero (as a
// layout bug that wrote a weight there would leave) gets nonzero gradients, and the check names its layer.
TEST_CASE("a padded unit with nonzero weights is seen by the padding check") {
    const ModelConfig cfg = small_config(10);
    CpuModel<double> model(cfg);
    init_with_random_norms(model, 5);
    const long C = cfg.d_model, Fs = ffn_stored(cfg), j = 40;  // a padded unit
    for (long c = 0; c < C; c++) model.params[model.layout.at(WUP, 1) + j * C + c] = 0.1;
    for (long r = 0; r < C; r++) model.params[model.layout.at(WDOWN, 1) + r * Fs + j] = 0.1;
    const Batch batch = random_batch(14, cfg.vocab_size, 1);
    model.zero_grad();
    model.forward(batch.tokens.data(), batch.targets.data(), 2, 7);
    model.backward();
    CHECK(first_layer_with_nonzero_ffn_padding(model.grads.data(), cfg, model.layout) == 1);
}
