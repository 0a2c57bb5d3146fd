// Every CPU reference backward against central finite differences in double precision, on random
// inputs of awkward sizes (B=2, T=7, C=12 with 3 heads of 4, F=10, V=11), plus the forward
// properties that pin down each kernel's convention.
#include <cmath>
#include <vector>
#include "gradcheck.h"
#include "../kernels/cpu/adamw.h"
#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/cpu/residual.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"

using Vec = std::vector<double>;
static const int B = 2, T = 7, C = 12, NH = 3, HD = 4, F = 10, V = 11, N = B * T;

TEST_CASE("matmul backward matches finite differences") {
    Rng rng(1);
    Vec inp = random_vector(N * C, rng), W = random_vector(F * C, rng), R = random_vector(N * F, rng);
    Vec out(N * F);
    auto loss = [&] { matmul_forward(out.data(), inp.data(), W.data(), N, C, F); return weighted_sum(out, R); };
    Vec dinp(N * C, 0), dW(F * C, 0);
    matmul_backward(dinp.data(), dW.data(), R.data(), inp.data(), W.data(), N, C, F);
    CHECK_GRADIENT(loss, inp, dinp);
    CHECK_GRADIENT(loss, W, dW);
    // layout: out[n][o] = sum_c inp[n][c] * W[o][c]
    loss();
    double direct = 0;
    for (int c = 0; c < C; c++) direct += inp[3 * C + c] * W[5 * C + c];
    CHECK(out[3 * F + 5] == Approx(direct).epsilon(1e-12));
}

TEST_CASE("matmul backward accumulates into its outputs") {
    Rng rng(2);
    Vec inp = random_vector(N * C, rng), W = random_vector(F * C, rng), R = random_vector(N * F, rng);
    Vec d1(N * C, 0), w1(F * C, 0), d2 = random_vector(N * C, rng), w2 = random_vector(F * C, rng);
    const Vec d2_before = d2, w2_before = w2;
    matmul_backward(d1.data(), w1.data(), R.data(), inp.data(), W.data(), N, C, F);
    matmul_backward(d2.data(), w2.data(), R.data(), inp.data(), W.data(), N, C, F);
    for (int i = 0; i < N * C; i++) CHECK(d2[i] == Approx(d2_before[i] + d1[i]).epsilon(1e-12));
    for (int i = 0; i < F * C; i++) CHECK(w2[i] == Approx(w2_before[i] + w1[i]).epsilon(1e-12));
}

TEST_CASE("rmsnorm forward normalizes rows and its backward matches finite differences") {
    Rng rng(3);
    Vec inp = random_vector(N * C, rng, 3.0), w = random_vector(C, rng), R = random_vector(N * C, rng);
    Vec out(N * C), rstd(N);
    auto loss = [&] { rmsnorm_forward(out.data(), rstd.data(), inp.data(), w.data(), N, C, 1e-6); return weighted_sum(out, R); };
    loss();
    for (int n = 0; n < N; n++) {  // with w = 1 every row would have mean square 1 (up to eps)
        double ms = 0;
        for (int c = 0; c < C; c++) ms += inp[n * C + c] * inp[n * C + c] / C;
        CHECK(rstd[n] == Approx(1.0 / std::sqrt(ms + 1e-6)).epsilon(1e-12));
        CHECK(out[n * C + 7] == Approx(inp[n * C + 7] * rstd[n] * w[7]).epsilon(1e-12));
    }
    Vec dinp(N * C, 0), dw(C, 0);
    rmsnorm_backward(dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), N, C);
    CHECK_GRADIENT(loss, inp, dinp);
    CHECK_GRADIENT(loss, w, dw);
}

TEST_CASE("residual add with a scale matches finite differences") {
    Rng rng(4);
    const double s = 1.7;
    Vec x = random_vector(N * C, rng), f = random_vector(N * C, rng), R = random_vector(N * C, rng), out(N * C);
    auto loss = [&] { residual_forward(out.data(), x.data(), f.data(), N * C, s); return weighted_sum(out, R); };
    Vec dx(N * C, 0), df(N * C, 0);
    residual_backward(dx.data(), df.data(), R.data(), N * C, s);
    CHECK_GRADIENT(loss, x, dx);
    CHECK_GRADIENT(loss, f, df);
}

TEST_CASE("swiglu backward matches finite differences") {
    Rng rng(5);
    Vec gate = random_vector(N * F, rng, 2.0), up = random_vector(N * F, rng), R = random_vector(N * F, rng), out(N * F);
    auto loss = [&] { swiglu_forward(out.data(), gate.data(), up.data(), N * F); return weighted_sum(out, R); };
    loss();
    CHECK(out[9] == Approx(gate[9] / (1 + std::exp(-gate[9])) * up[9]).epsilon(1e-12));
    Vec dgate(N * F, 0), dup(N * F, 0);
    swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), N * F);
    CHECK_GRADIENT(loss, gate, dgate);
    CHECK_GRADIENT(loss, up, dup);
}

TEST_CASE("rope uses the rotate-half convention and its backward matches finite differences") {
    Rng rng(6);
    Vec x = random_vector(N * C, rng), R = random_vector(N * C, rng), out(N * C);
    const double theta = 10000.0;
    auto loss = [&] { rope_forward(out.data(), x.data(), B, T, NH, HD, theta); return weighted_sum(out, R); };
    loss();
    // batch 1, position t=3, head 2, pair (1, 3): angle = 3 * theta^(-2/4)
    const int base = ((1 * T + 3) * NH + 2) * HD;
    const double a = 3 * std::pow(theta, -0.5);
    CHECK(out[base + 1] == Approx(x[base + 1] * std::cos(a) - x[base + 3] * std::sin(a)).epsilon(1e-12));
    CHECK(out[base + 3] == Approx(x[base + 3] * std::cos(a) + x[base + 1] * std::sin(a)).epsilon(1e-12));
    // position 0 is the identity
    for (int i = 0; i < C; i++) CHECK(out[i] == x[i]);
    Vec dx(N * C, 0);
    rope_backward(dx.data(), R.data(), B, T, NH, HD, theta);
    CHECK_GRADIENT(loss, x, dx);
}

TEST_CASE("rope makes q.k depend only on the relative position") {
    Rng rng(7);
    const int TT = 9;
    Vec q = random_vector(HD, rng), k = random_vector(HD, rng);
    Vec qs(TT * HD), ks(TT * HD);
    for (int t = 0; t < TT; t++)
        for (int i = 0; i < HD; i++) { qs[t * HD + i] = q[i]; ks[t * HD + i] = k[i]; }
    rope_forward(qs.data(), qs.data(), 1, TT, 1, HD, 10000.0);
    rope_forward(ks.data(), ks.data(), 1, TT, 1, HD, 10000.0);
    auto dot = [&](int tq, int tk) { double s = 0; for (int i = 0; i < HD; i++) s += qs[tq * HD + i] * ks[tk * HD + i]; return s; };
    CHECK(dot(5, 2) == Approx(dot(8, 5)).epsilon(1e-12));
    CHECK(dot(3, 3) == Approx(dot(0, 0)).epsilon(1e-12));
}

TEST_CASE("causal attention backward matches finite differences") {
    Rng rng(8);
    Vec q = random_vector(N * C, rng), k = random_vector(N * C, rng), v = random_vector(N * C, rng);
    Vec R = random_vector(N * C, rng), out(N * C), probs(B * NH * T * T);
    auto loss = [&] { attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH); return weighted_sum(out, R); };
    loss();
    Vec dq(N * C, 0), dk(N * C, 0), dv(N * C, 0);
    attention_backward(dq.data(), dk.data(), dv.data(), R.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
    CHECK_GRADIENT(loss, q, dq);
    CHECK_GRADIENT(loss, k, dk);
    CHECK_GRADIENT(loss, v, dv);
}

TEST_CASE("attention is causal and its rows are softmax weights") {
    Rng rng(9);
    Vec q = random_vector(N * C, rng), k = random_vector(N * C, rng), v = random_vector(N * C, rng);
    Vec out(N * C), out2(N * C), probs(B * NH * T * T);
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
    for (int r = 0; r < B * NH * T; r++) {
        double sum = 0;
        for (int t2 = 0; t2 < T; t2++) sum += probs[r * T + t2];
        CHECK(sum == Approx(1.0).epsilon(1e-12));
    }
    for (int i = 0; i < C; i++) CHECK(out[i] == Approx(v[i]).epsilon(1e-12));  // t=0 sees only itself
    // changing the last position's key and value leaves every earlier output unchanged
    for (int i = 0; i < C; i++) { k[(T - 1) * C + i] += 1.0; v[(T - 1) * C + i] -= 2.0; }
    attention_forward(out2.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
    for (int i = 0; i < (T - 1) * C; i++) CHECK(out2[i] == out[i]);
}

TEST_CASE("cross-entropy skips ignored positions and its backward matches finite differences") {
    Rng rng(10);
    Vec logits = random_vector(N * V, rng, 2.0), losses(N);
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) targets[n] = (int)rng.below(V);
    targets[2] = targets[9] = IGNORE_INDEX;
    int n_valid = 0;
    auto loss = [&] { return crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V, &n_valid); };
    const double mean = loss();
    CHECK(n_valid == N - 2);
    CHECK(losses[2] == 0.0);
    double direct = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] == IGNORE_INDEX) continue;
        double z = 0;
        for (int i = 0; i < V; i++) z += std::exp(logits[n * V + i]);
        direct += std::log(z) - logits[n * V + targets[n]];
    }
    CHECK(mean == Approx(direct / (N - 2)).epsilon(1e-12));
    Vec dlogits(N * V);
    crossentropy_backward(dlogits.data(), logits.data(), targets.data(), N, V, 1.0 / n_valid);
    for (int i = 0; i < V; i++) CHECK(dlogits[9 * V + i] == 0.0);
    CHECK_GRADIENT(loss, logits, dlogits);
}

TEST_CASE("embedding backward adds up repeated tokens and matches finite differences") {
    Rng rng(11);
    Vec wte = random_vector(V * C, rng), R = random_vector(N * C, rng), out(N * C);
    std::vector<int> tokens(N);
    for (int n = 0; n < N; n++) tokens[n] = (int)rng.below(V);
    tokens[4] = tokens[0];  // a repeated token
    const double scale = std::sqrt((double)C);
    auto loss = [&] { embedding_forward(out.data(), tokens.data(), wte.data(), N, C, scale); return weighted_sum(out, R); };
    Vec dwte(V * C, 0);
    embedding_backward(dwte.data(), R.data(), tokens.data(), N, C, scale);
    CHECK_GRADIENT(loss, wte, dwte);
}

TEST_CASE("AdamW's first step moves each weight by lr * g / (|g| + eps), plus decoupled decay") {
    const int n = 5;
    Vec p = {1.0, -2.0, 0.5, 3.0, -0.25}, g = {0.3, -1e-3, 2.0, 0.0, -5.0}, m(n, 0), v(n, 0);
    const Vec p0 = p;
    const double lr = 0.01, eps = 1e-8, wd = 0.1;
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1, lr, 0.9, 0.999, eps, wd, 1.0);
    for (int i = 0; i < n; i++) {
        // bias correction makes mhat = g and vhat = g^2 at t = 1
        const double expected = p0[i] - lr * (wd * p0[i] + g[i] / (std::fabs(g[i]) + eps));
        CHECK(p[i] == Approx(expected).epsilon(1e-12));
        CHECK(m[i] == Approx(0.1 * g[i]).margin(1e-15));
        CHECK(v[i] == Approx(0.001 * g[i] * g[i]).margin(1e-15));
    }
    // second step: the moments follow their recurrences and bias corrections use t = 2
    const Vec g2 = {-0.1, 0.2, 0.3, 0.4, 0.5};
    const Vec p1 = p, m1 = m, v1 = v;
    adamw_update(p.data(), g2.data(), m.data(), v.data(), n, 2, lr, 0.9, 0.999, eps, 0.0, 1.0);
    for (int i = 0; i < n; i++) {
        const double mi = 0.9 * m1[i] + 0.1 * g2[i], vi = 0.999 * v1[i] + 0.001 * g2[i] * g2[i];
        const double expected = p1[i] - lr * (mi / (1 - 0.81)) / (std::sqrt(vi / (1 - 0.999 * 0.999)) + eps);
        CHECK(p[i] == Approx(expected).epsilon(1e-12));
    }
}

TEST_CASE("global gradient norm and the clipping factor") {
    const Vec g = {3.0, 0.0, -4.0};
    const double norm = global_grad_norm(g.data(), 3);
    CHECK(norm == Approx(5.0).epsilon(1e-15));
    CHECK(grad_clip_scale(norm, 0.0) == 1.0);           // off
    CHECK(grad_clip_scale(norm, 10.0) == 1.0);          // below the threshold
    CHECK(grad_clip_scale(norm, 1.0) == Approx(1.0 / (5.0 + 1e-6)).epsilon(1e-15));
    // the clipped gradient enters Adam scaled: a step with grad_scale s equals a step on s*g
    Vec p1 = {1.0, 1.0, 1.0}, p2 = p1, m1(3, 0), v1(3, 0), m2(3, 0), v2(3, 0);
    const Vec gs = {0.6, 0.0, -0.8};
    adamw_update(p1.data(), g.data(), m1.data(), v1.data(), 3, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, 0.2);
    adamw_update(p2.data(), gs.data(), m2.data(), v2.data(), 3, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, 1.0);
    for (int i = 0; i < 3; i++) CHECK(p1[i] == Approx(p2[i]).epsilon(1e-12));
}
