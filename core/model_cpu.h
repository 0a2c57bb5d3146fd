// The CPU reference model: LLaMA with Mix-LN, composed from kernels/cpu, templated on the scalar
// type so the tests can run it in double against finite differences and the CPU trainer in float.
// Every GPU result is judged against this file.
#pragma once
#include <vector>
#include "config.h"
#include "../kernels/cpu/adamw.h"
#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/crossentropy.h"
#include "../kernels/cpu/embedding.h"
#include "../kernels/cpu/matmul.h"
#include "../kernels/cpu/residual.h"
#include "../kernels/cpu/rmsnorm.h"
#include "../kernels/cpu/rope.h"
#include "../kernels/cpu/swiglu.h"

// What one layer keeps from its forward for its backward. N = B*T rows.
template <typename real>
struct LayerActivations {
    std::vector<real> x;                 // (N, C) layer input, the residual stream
    std::vector<real> attn_in;           // (N, C) attention input: x (Post-LN) or norm_a(x) (Pre-LN)
    std::vector<real> q, k, v;           // (N, C) projections, q and k after RoPE
    std::vector<real> probs;             // (B, NH, T, T) attention probabilities
    std::vector<real> attn_y;            // (N, C) attention output before the o projection
    std::vector<real> attn_out;          // (N, C) attention sublayer output F(x)
    std::vector<real> norm_a_in, rstd_a; // (N, C), (N) input of norm_a and its 1/rms
    std::vector<real> h;                 // (N, C) residual stream between the two sublayers
    std::vector<real> mlp_in;            // (N, C) MLP input: h (Post-LN) or norm_b(h) (Pre-LN)
    std::vector<real> gate, up, swiglu;  // (N, Fs): the stored MLP width, columns F..Fs-1 zero
    std::vector<real> mlp_out;           // (N, C) MLP sublayer output F(h)
    std::vector<real> norm_b_in, rstd_b; // (N, C), (N)
    std::vector<real> out;               // (N, C) layer output

    void resize(long N, long C, long F, long probs_size) {
        for (std::vector<real>* a : {&x, &attn_in, &q, &k, &v, &attn_y, &attn_out, &norm_a_in, &h,
                                     &mlp_in, &mlp_out, &norm_b_in, &out})
            a->assign(N * C, 0);
        for (std::vector<real>* a : {&gate, &up, &swiglu}) a->assign(N * F, 0);
        rstd_a.assign(N, 0);
        rstd_b.assign(N, 0);
        probs.assign(probs_size, 0);
    }
};

template <typename real>
struct CpuModel {
    ModelConfig cfg;
    ParamLayout layout;
    std::vector<real> params, grads;  // layout.total each
    int B = 0, T = 0;                 // shape of the activations below
    std::vector<LayerActivations<real>> acts;
    std::vector<int> tokens, targets;
    std::vector<real> final_in, final_norm, rstd_f, logits, losses;
    int n_valid = 0;                  // positions of the last forward that carry a loss
    // Backward scratch, reused by every layer.
    std::vector<real> dx, dh, dres, dsub_out, dsub_in, dq, dk, dv, dattn_y, dgate, dup, dswiglu, dlogits, dfinal;

    explicit CpuModel(const ModelConfig& c) : cfg(c), layout(make_param_layout(c)) {
        params.assign(layout.total, 0);
        grads.assign(layout.total, 0);
    }

    real* param(int tensor, int layer = 0) { return params.data() + layout.at(tensor, layer); }
    real* grad(int tensor, int layer = 0) { return grads.data() + layout.at(tensor, layer); }
    void zero_grad() { std::fill(grads.begin(), grads.end(), real(0)); }

    void ensure_activations(int b, int t) {
        if (b == B && t == T) return;
        B = b; T = t;
        const long N = (long)B * T, C = cfg.d_model, F = ffn_stored(cfg), V = cfg.vocab_size;
        acts.resize(cfg.n_layer);
        for (auto& a : acts) a.resize(N, C, F, (long)B * cfg.n_head * T * T);
        for (std::vector<real>* a : {&final_in, &final_norm, &dx, &dh, &dres, &dsub_out, &dsub_in, &dq, &dk, &dv,
                                     &dattn_y, &dfinal})
            a->assign(N * C, 0);
        for (std::vector<real>* a : {&dgate, &dup, &dswiglu}) a->assign(N * F, 0);
        logits.assign(N * V, 0);
        dlogits.assign(N * V, 0);
        rstd_f.assign(N, 0);
        losses.assign(N, 0);
    }

    // ---- sublayers: the F(x) of the paper's eq. 1 and 2 ----

    void attention_sublayer_forward(LayerActivations<real>& a, int l) {
        const int N = B * T, C = cfg.d_model, NH = cfg.n_head, hd = cfg.head_dim();
        matmul_forward(a.q.data(), a.attn_in.data(), param(WQ, l), N, C, C);
        matmul_forward(a.k.data(), a.attn_in.data(), param(WK, l), N, C, C);
        matmul_forward(a.v.data(), a.attn_in.data(), param(WV, l), N, C, C);
        rope_forward(a.q.data(), a.q.data(), B, T, NH, hd, cfg.rope_theta);
        rope_forward(a.k.data(), a.k.data(), B, T, NH, hd, cfg.rope_theta);
        attention_forward_tiled(a.attn_y.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), B, T, C, NH);
        matmul_forward(a.attn_out.data(), a.attn_y.data(), param(WO, l), N, C, C);
    }

    // dout = d attn_out; writes d attn_in into dsub_in.
    void attention_sublayer_backward(LayerActivations<real>& a, int l, const real* dout) {
        const int N = B * T, C = cfg.d_model, NH = cfg.n_head, hd = cfg.head_dim();
        matmul_backward_input(dattn_y.data(), dout, param(WO, l), N, C, C, /*accumulate=*/false);
        matmul_backward_weight(grad(WO, l), dout, a.attn_y.data(), N, C, C);
        attention_backward_tiled(dq.data(), dk.data(), dv.data(), dattn_y.data(), a.probs.data(),
                                 a.q.data(), a.k.data(), a.v.data(), B, T, C, NH);
        rope_backward(dq.data(), dq.data(), B, T, NH, hd, cfg.rope_theta);
        rope_backward(dk.data(), dk.data(), B, T, NH, hd, cfg.rope_theta);
        // d attn_in = dq Wq + dk Wk + dv Wv: the first product writes, the others add
        matmul_backward_input(dsub_in.data(), dq.data(), param(WQ, l), N, C, C, false);
        matmul_backward_input(dsub_in.data(), dk.data(), param(WK, l), N, C, C, true);
        matmul_backward_input(dsub_in.data(), dv.data(), param(WV, l), N, C, C, true);
        matmul_backward_weight(grad(WQ, l), dq.data(), a.attn_in.data(), N, C, C);
        matmul_backward_weight(grad(WK, l), dk.data(), a.attn_in.data(), N, C, C);
        matmul_backward_weight(grad(WV, l), dv.data(), a.attn_in.data(), N, C, C);
    }

    // Over the stored width Fs (core/config.h): the padded rows of gate and up are zero, so are the
    // columns F..Fs-1 of gate, up and swiglu, which meet down's zero columns.
    void mlp_sublayer_forward(LayerActivations<real>& a, int l) {
        const int N = B * T, C = cfg.d_model, F = (int)ffn_stored(cfg);
        matmul_forward(a.gate.data(), a.mlp_in.data(), param(WGATE, l), N, C, F);
        matmul_forward(a.up.data(), a.mlp_in.data(), param(WUP, l), N, C, F);
        swiglu_forward(a.swiglu.data(), a.gate.data(), a.up.data(), (long)N * F);
        matmul_forward(a.mlp_out.data(), a.swiglu.data(), param(WDOWN, l), N, F, C);
    }

    // dout = d mlp_out; writes d mlp_in into dsub_in.
    void mlp_sublayer_backward(LayerActivations<real>& a, int l, const real* dout) {
        const int N = B * T, C = cfg.d_model, F = (int)ffn_stored(cfg);
        matmul_backward_input(dswiglu.data(), dout, param(WDOWN, l), N, F, C, /*accumulate=*/false);
        matmul_backward_weight(grad(WDOWN, l), dout, a.swiglu.data(), N, F, C);
        for (std::vector<real>* d : {&dgate, &dup}) std::fill(d->begin(), d->end(), real(0));
        swiglu_backward(dgate.data(), dup.data(), dswiglu.data(), a.gate.data(), a.up.data(), (long)N * F);
        matmul_backward_input(dsub_in.data(), dgate.data(), param(WGATE, l), N, C, F, false);
        matmul_backward_input(dsub_in.data(), dup.data(), param(WUP, l), N, C, F, true);
        matmul_backward_weight(grad(WGATE, l), dgate.data(), a.mlp_in.data(), N, C, F);
        matmul_backward_weight(grad(WUP, l), dup.data(), a.mlp_in.data(), N, C, F);
    }

    void rmsnorm(std::vector<real>& out, std::vector<real>& rstd, const std::vector<real>& in, int tensor, int l) {
        rmsnorm_forward(out.data(), rstd.data(), in.data(), param(tensor, l), B * T, cfg.d_model, (real)cfg.norm_eps);
    }

    // ---- one layer, forward: the paper's eq. 1 (Post-LN) or eq. 2 (Pre-LN) ----

    void layer_forward(int l) {
        LayerActivations<real>& a = acts[l];
        const long NC = (long)B * T * cfg.d_model;
        if (layer_is_post_ln(cfg, l)) {
            const real s = (real)residual_scale(cfg);  // 1 except for DeepNorm
            // eq. 1: h = LN_a(s*x + Attn(x));  out = LN_b(s*h + MLP(h))
            a.attn_in = a.x;
            attention_sublayer_forward(a, l);
            residual_forward(a.norm_a_in.data(), a.x.data(), a.attn_out.data(), NC, s);
            rmsnorm(a.h, a.rstd_a, a.norm_a_in, NORM_A, l);
            a.mlp_in = a.h;
            mlp_sublayer_forward(a, l);
            residual_forward(a.norm_b_in.data(), a.h.data(), a.mlp_out.data(), NC, s);
            rmsnorm(a.out, a.rstd_b, a.norm_b_in, NORM_B, l);
        } else {
            // eq. 2: h = x + Attn(LN_a(x));  out = h + MLP(LN_b(h))
            a.norm_a_in = a.x;
            rmsnorm(a.attn_in, a.rstd_a, a.norm_a_in, NORM_A, l);
            attention_sublayer_forward(a, l);
            residual_forward(a.h.data(), a.x.data(), a.attn_out.data(), NC, real(1));
            a.norm_b_in = a.h;
            rmsnorm(a.mlp_in, a.rstd_b, a.norm_b_in, NORM_B, l);
            mlp_sublayer_forward(a, l);
            residual_forward(a.out.data(), a.h.data(), a.mlp_out.data(), NC, real(1));
        }
    }

    // The mirror image of layer_forward. d out is in dx on entry; d x is in dx on exit.
    void layer_backward(int l) {
        LayerActivations<real>& a = acts[l];
        const int N = B * T, C = cfg.d_model;
        const long NC = (long)N * C;
        auto zero = [](std::vector<real>& v) { std::fill(v.begin(), v.end(), real(0)); };
        auto accumulate = [](std::vector<real>& dst, const std::vector<real>& src) {
            for (size_t i = 0; i < dst.size(); i++) dst[i] += src[i];
        };
        if (layer_is_post_ln(cfg, l)) {
            const real s = (real)residual_scale(cfg);
            zero(dres);                                       // out = LN_b(norm_b_in)
            rmsnorm_backward(dres.data(), grad(NORM_B, l), dx.data(), a.norm_b_in.data(), param(NORM_B, l), a.rstd_b.data(), N, C);
            zero(dh); zero(dsub_out);                         // norm_b_in = s*h + mlp_out
            residual_backward(dh.data(), dsub_out.data(), dres.data(), NC, s);
            mlp_sublayer_backward(a, l, dsub_out.data());     // mlp_in = h
            accumulate(dh, dsub_in);
            zero(dres);                                       // h = LN_a(norm_a_in)
            rmsnorm_backward(dres.data(), grad(NORM_A, l), dh.data(), a.norm_a_in.data(), param(NORM_A, l), a.rstd_a.data(), N, C);
            zero(dx); zero(dsub_out);                         // norm_a_in = s*x + attn_out
            residual_backward(dx.data(), dsub_out.data(), dres.data(), NC, s);
            attention_sublayer_backward(a, l, dsub_out.data());  // attn_in = x
            accumulate(dx, dsub_in);
        } else {
            zero(dh); zero(dsub_out);                         // out = h + mlp_out
            residual_backward(dh.data(), dsub_out.data(), dx.data(), NC, real(1));
            mlp_sublayer_backward(a, l, dsub_out.data());     // mlp_in = LN_b(h)
            rmsnorm_backward(dh.data(), grad(NORM_B, l), dsub_in.data(), a.norm_b_in.data(), param(NORM_B, l), a.rstd_b.data(), N, C);
            zero(dx); zero(dsub_out);                         // h = x + attn_out
            residual_backward(dx.data(), dsub_out.data(), dh.data(), NC, real(1));
            attention_sublayer_backward(a, l, dsub_out.data());  // attn_in = LN_a(x)
            rmsnorm_backward(dx.data(), grad(NORM_A, l), dsub_in.data(), a.norm_a_in.data(), param(NORM_A, l), a.rstd_a.data(), N, C);
        }
    }

    // ---- the whole model ----

    // tokens, targets: (B, T). targets may be null (inference: logits only). Returns the mean loss over
    // the positions whose target is not IGNORE_INDEX. skip_layer >= 0 runs the model without that layer
    // (identity in its place), for the layer-pruning measurement (paper eq. 7).
    real forward(const int* tok, const int* tgt, int b, int t, int skip_layer = -1) {
        ensure_activations(b, t);
        const int N = B * T, C = cfg.d_model, V = cfg.vocab_size;
        tokens.assign(tok, tok + N);
        embedding_forward(acts[0].x.data(), tok, param(WTE), N, C, (real)embedding_scale(cfg));
        for (int l = 0; l < cfg.n_layer; l++) {
            if (l == skip_layer) acts[l].out = acts[l].x;
            else layer_forward(l);
            (l + 1 < cfg.n_layer ? acts[l + 1].x : final_in) = acts[l].out;
        }
        rmsnorm(final_norm, rstd_f, final_in, NORM_F, 0);
        matmul_forward(logits.data(), final_norm.data(), param(LM_HEAD), N, C, V);
        if (!tgt) return 0;
        targets.assign(tgt, tgt + N);
        return crossentropy_forward(losses.data(), logits.data(), tgt, N, V, &n_valid);
    }

    // Accumulates into grads the gradient of loss_scale * (mean loss of the last forward).
    void backward(real loss_scale = 1) {
        const int N = B * T, C = cfg.d_model, V = cfg.vocab_size;
        const real dloss = n_valid ? loss_scale / n_valid : real(0);
        crossentropy_backward(dlogits.data(), logits.data(), targets.data(), N, V, dloss);
        matmul_backward_input(dfinal.data(), dlogits.data(), param(LM_HEAD), N, C, V, /*accumulate=*/false);
        matmul_backward_weight(grad(LM_HEAD), dlogits.data(), final_norm.data(), N, C, V);
        std::fill(dx.begin(), dx.end(), real(0));
        rmsnorm_backward(dx.data(), grad(NORM_F), dfinal.data(), final_in.data(), param(NORM_F), rstd_f.data(), N, C);
        for (int l = cfg.n_layer - 1; l >= 0; l--) layer_backward(l);
        embedding_backward(grad(WTE), dx.data(), tokens.data(), N, C, (real)embedding_scale(cfg));
    }
};
