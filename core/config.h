// The model's configuration, the Mix-LN layer assignment, and the parameter layout: shared by the
// CPU reference model, the GPU trainer, checkpoints and the analysis tools.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include "rng.h"

// Which family of normalization placements the model uses.
enum class NormScheme : int {
    MixLN = 0,     // layers [0, floor(alpha*L)) Post-LN, the rest Pre-LN. alpha=0: Pre-LN, alpha=1: Post-LN
    DeepNorm = 1,  // every layer Post-LN, residual scaled by (2L)^(1/4), some weights init with gain (8L)^(-1/4)
    DeepNormPaper = 2,  // the official Mix-LN code's DeepNorm: residual scaled by sqrt(8), Xavier-normal init
};

// The -n names, indexed by NormScheme (slot 8 of a checkpoint); null for an unknown value.
inline const char* norm_scheme_name(long scheme) {
    static const char* names[] = {"mixln", "deepnorm", "deepnorm_paper"};
    return scheme >= 0 && scheme < 3 ? names[scheme] : nullptr;
}

struct ModelConfig {
    int vocab_size = 32000;
    int max_seq_len = 256;
    int n_layer = 12;
    int n_head = 8;
    int d_model = 512;
    int d_ffn = 1368;
    NormScheme norm = NormScheme::MixLN;
    double alpha = 0.25;        // Mix-LN's fraction of Post-LN layers (paper section 3; best value 0.25)
    bool scaled_init = false;   // Appendix B: o and down projections init std 0.02 / sqrt(2L)
    bool scaled_embed = false;  // Appendix B: embeddings multiplied by sqrt(d_model) (Takase et al., 2023)
    double rope_theta = 10000.0;
    double norm_eps = 1e-6;

    int head_dim() const { return d_model / n_head; }
};

// What is wrong with a config (from flags or a checkpoint's header), or "" if nothing: every size
// positive, the hidden size split into heads of an even size (RoPE rotates pairs), alpha in [0, 1],
// a known norm scheme, and positive finite RoPE base and norm epsilon.
inline std::string model_config_problem(const ModelConfig& c) {
    auto below = [](const char* name, long v, long lo) { return std::string(name) + " " + std::to_string(v) + " is below " + std::to_string(lo); };
    if (c.vocab_size < 2) return below("vocab_size", c.vocab_size, 2);
    if (c.max_seq_len < 2) return below("max_seq_len", c.max_seq_len, 2);
    if (c.n_layer < 1) return below("n_layer", c.n_layer, 1);
    if (c.n_head < 1) return below("n_head", c.n_head, 1);
    if (c.d_model < 2) return below("d_model", c.d_model, 2);
    if (c.d_ffn < 1) return below("d_ffn", c.d_ffn, 1);
    if (c.d_model % c.n_head != 0 || c.head_dim() % 2 != 0)
        return "hidden size " + std::to_string(c.d_model) + " must split into " + std::to_string(c.n_head) +
               " heads of an even size (RoPE rotates pairs)";
    if (!norm_scheme_name((long)c.norm)) return "unknown norm scheme " + std::to_string((long)c.norm);
    if (!(c.alpha >= 0.0 && c.alpha <= 1.0)) return "alpha " + std::to_string(c.alpha) + " is outside [0, 1]";
    if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0)) return "rope_theta " + std::to_string(c.rope_theta) + " is not a positive number";
    if (!(std::isfinite(c.norm_eps) && c.norm_eps > 0 && c.norm_eps < 1)) return "norm_eps " + std::to_string(c.norm_eps) + " is outside (0, 1)";
    return "";
}

// The model sizes of the official Mix-LN code's configs (configs/llama_*.json), plus a tiny one for
// tests and demos. Where the paper's Table 4 prints something else, the code is what trained the
// paper's numbers: its 250M is d 768, ffn 2560, 16 heads of 48, 24 layers (247M parameters at vocab
// 32000; Table 4 prints d 1024, which would be 355M), and its 1B has 32 heads and 24 layers (Table 4:
// 24 heads, which do not divide 2048, and 32 layers). 350m is the official llama_350m config, which
// no script of the paper trains.
// Returns false if the name is unknown; leaves vocab, alpha and the norm options untouched.
inline bool apply_model_preset(const char* name, ModelConfig* cfg) {
    struct Preset { const char* name; int d, ffn, heads, layers; };
    static const Preset presets[] = {
        {"tiny", 128, 344, 4, 4},
        {"71m", 512, 1368, 8, 12},
        {"130m", 768, 2048, 12, 12},
        {"250m", 768, 2560, 16, 24},
        {"350m", 1024, 2736, 16, 24},
        {"1b", 2048, 5461, 32, 24},
    };
    for (const Preset& p : presets) {
        if (strcmp(p.name, name) == 0) {
            cfg->d_model = p.d; cfg->d_ffn = p.ffn; cfg->n_head = p.heads; cfg->n_layer = p.layers;
            return true;
        }
    }
    return false;
}

// floor(alpha * L) Post-LN layers for Mix-LN (paper section 3); all L for both DeepNorms. The 1e-9
// guards against alpha*L landing just below an integer in floating point (0.29 * 100 = 28.999999999999996).
inline int num_post_ln_layers(const ModelConfig& cfg) {
    if (cfg.norm != NormScheme::MixLN) return cfg.n_layer;
    const double alpha = cfg.alpha >= 0.0 ? std::min(cfg.alpha, 1.0) : 0.0;  // NaN too: checked configs are in [0, 1]
    return (int)std::floor(alpha * cfg.n_layer + 1e-9);
}

// The one function that decides a layer's ordering: Post-LN (eq. 1) for the first layers, Pre-LN (eq. 2)
// for the rest.
inline bool layer_is_post_ln(const ModelConfig& cfg, int layer) {
    return layer < num_post_ln_layers(cfg);
}

// DeepNorm's residual weight: x_{l+1} = LN(residual_scale * x + F(x)); 1 for plain Post-LN and Pre-LN.
// DeepNet's is (2L)^(1/4); the official Mix-LN code multiplies by sqrt(8) whatever L (DeepNet's value
// for L = 32).
inline double residual_scale(const ModelConfig& cfg) {
    switch (cfg.norm) {
        case NormScheme::DeepNorm: return std::pow(2.0 * cfg.n_layer, 0.25);
        case NormScheme::DeepNormPaper: return std::sqrt(8.0);
        default: return 1.0;
    }
}

inline double embedding_scale(const ModelConfig& cfg) {
    return cfg.scaled_embed ? std::sqrt((double)cfg.d_model) : 1.0;
}

// ----------------------------------------------------------------------------
// Parameter layout (checkpoint format v3): all parameters live in one flat array, layer-major:
//
//   WTE (V, C) | layer 0's block | ... | layer L-1's block | NORM_F (C) | LM_HEAD (V, C)
//   a layer's block:  WQ WK WV (3C, C) | WO (C, C) | WGATE WUP (2Fs, C) | WDOWN (C, Fs) | NORM_A (C) | NORM_B (C)
//
// Why this order: q, k and v are adjacent rows, so at(WQ, l) starts one (3C, C) matrix [q; k; v] and the
// GPU computes all three in one GEMM (and d attn_in from d(q|k|v) in one); gate and up likewise form one
// (2Fs, C) matrix [gate; up]. Each layer's weights (and gradients) are one contiguous range, so ZeRO-1
// can reduce-scatter a layer's gradients as one bucket as soon as its backward is done. The matrices
// come first in the block and the norms last, so every matrix starts at a multiple of C in its block.
//
// Fs = ffn_stored(cfg) is the model's F (cfg.d_ffn) rounded up to a multiple of FFN_ALIGN, so that
// every MLP GEMM's leading dimension is aligned (the 1B preset's F = 5461 is odd). Rows F..Fs-1 of
// gate and up and columns F..Fs-1 of down hold zeros and stay zero: there gate = up = 0, so
// swiglu = silu(0) * 0 = 0 and every gradient reaching those weights is exactly 0 (test/
// test_padded_ffn.cpp proves it), and AdamW's weight decay keeps 0 at 0. The model's math, its
// parameter count (num_model_parameters), its FLOPs and its exported weights are those of F.

enum ParamTensor {
    WTE,      // (V, C) token embedding
    NORM_A,   // (C) per layer: RMSNorm weight before attention (Pre-LN) or after the attention residual (Post-LN)
    WQ,       // (C, C) per layer: query projection, torch.nn.Linear layout (out, in)
    WK,       // (C, C) per layer, right after WQ
    WV,       // (C, C) per layer, right after WK
    WO,       // (C, C) per layer: attention output projection
    NORM_B,   // (C) per layer: RMSNorm weight before the MLP (Pre-LN) or after the MLP residual (Post-LN)
    WGATE,    // (Fs, C) per layer: SwiGLU gate projection, rows F..Fs-1 zero
    WUP,      // (Fs, C) per layer, right after WGATE, rows F..Fs-1 zero
    WDOWN,    // (C, Fs) per layer: MLP down projection, columns F..Fs-1 zero
    NORM_F,   // (C) final RMSNorm, always applied
    LM_HEAD,  // (V, C) untied output projection
    NUM_PARAM_TENSORS
};

inline const char* param_tensor_name(int t) {
    static const char* names[NUM_PARAM_TENSORS] = {"wte", "norm_a", "wq", "wk", "wv", "wo",
                                                   "norm_b", "wgate", "wup", "wdown", "norm_f", "lm_head"};
    return names[t];
}

inline bool param_is_per_layer(int t) { return t != WTE && t != NORM_F && t != LM_HEAD; }

constexpr long FFN_ALIGN = 64;

// The stored MLP width Fs: d_ffn rounded up to a multiple of FFN_ALIGN (1b: 5461 -> 5504).
inline long ffn_stored(const ModelConfig& cfg) { return (cfg.d_ffn + FFN_ALIGN - 1) / FFN_ALIGN * FFN_ALIGN; }

// One layer's tensor t (or the whole tensor, if not per layer) as the model sees it, a rows x cols
// matrix (a norm weight is 1 x C), stored row-major with row stride ld (> cols only for WDOWN's padding).
struct TensorShape {
    long rows, cols, ld;
};

inline TensorShape param_shape(const ModelConfig& cfg, int t) {
    const long V = cfg.vocab_size, C = cfg.d_model, F = cfg.d_ffn;
    switch (t) {
        case WTE: case LM_HEAD: return {V, C, C};
        case NORM_A: case NORM_B: case NORM_F: return {1, C, C};
        case WGATE: case WUP: return {F, C, C};
        case WDOWN: return {C, F, ffn_stored(cfg)};
        default: return {C, C, C};  // WQ, WK, WV, WO
    }
}

struct ParamLayout {
    long layer_size[NUM_PARAM_TENSORS];  // stored elements of one layer's tensor t (the whole tensor if not per layer)
    long base[NUM_PARAM_TENSORS];        // where tensor t starts: of layer 0, if it is per layer
    long layer_stride;                   // elements of one layer's block
    long total;                          // stored elements, padding included

    long layer_begin(int layer) const { return base[WQ] + layer * layer_stride; }
    long at(int tensor, int layer = 0) const { return base[tensor] + (param_is_per_layer(tensor) ? layer * layer_stride : 0); }
};

// V*C + L * (4C^2 + 3FC + 2C) + C + V*C for an MLP width F; throws if it overflows 64 bits.
inline long parameter_count(const ModelConfig& cfg, long F) {
    const long V = cfg.vocab_size, C = cfg.d_model, L = cfg.n_layer;
    long block, layers, total;
    // C, F <= 2^31 after model_config_problem, so 4C^2 + 3FC + 2C < 2^65 needs its own checks too.
    if (__builtin_mul_overflow(4 * C + 3 * F + 2, C, &block) || __builtin_mul_overflow(block, L, &layers) ||
        __builtin_add_overflow(layers, 2 * V * C + C, &total))
        throw std::runtime_error("the model's parameter count overflows 64 bits (vocab " + std::to_string(V) + ", d " +
                                 std::to_string(C) + ", ffn " + std::to_string(F) + ", " + std::to_string(L) + " layers)");
    return total;
}

// The model's parameter count N, without the padding: what docs/model.md's presets table and MFU count.
inline long num_model_parameters(const ModelConfig& cfg) { return parameter_count(cfg, cfg.d_ffn); }

// Throws if the stored parameter count of a config does not fit in 64 bits.
inline ParamLayout make_param_layout(const ModelConfig& cfg) {
    const long V = cfg.vocab_size, C = cfg.d_model, Fs = ffn_stored(cfg);
    ParamLayout layout;
    layout.total = parameter_count(cfg, Fs);
    const int block_order[] = {WQ, WK, WV, WO, WGATE, WUP, WDOWN, NORM_A, NORM_B};
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const TensorShape s = param_shape(cfg, t);
        layout.layer_size[t] = (t == WGATE || t == WUP ? Fs : s.rows) * s.ld;
    }
    long at = V * C;  // after WTE
    layout.base[WTE] = 0;
    for (int t : block_order) { layout.base[t] = at; at += layout.layer_size[t]; }
    layout.layer_stride = at - layout.base[WQ];
    layout.base[NORM_F] = V * C + cfg.n_layer * layout.layer_stride;
    layout.base[LM_HEAD] = layout.base[NORM_F] + C;
    return layout;
}

// The first layer whose MLP padding in x (parameters, gradients or moments in the layout) holds a
// nonzero: rows F..Fs-1 of gate and up, columns F..Fs-1 of down; -1 if every one is zero.
template <typename real>
inline int first_layer_with_nonzero_ffn_padding(const real* x, const ModelConfig& cfg, const ParamLayout& layout) {
    const long C = cfg.d_model, F = cfg.d_ffn, Fs = ffn_stored(cfg);
    for (int l = 0; l < cfg.n_layer; l++) {
        for (int t : {WGATE, WUP})
            for (long i = F * C; i < Fs * C; i++)
                if (x[layout.at(t, l) + i] != 0) return l;
        for (long r = 0; r < C; r++)
            for (long c = F; c < Fs; c++)
                if (x[layout.at(WDOWN, l) + r * Fs + c] != 0) return l;
    }
    return -1;
}

// Standard deviation of the normal init of a weight tensor; 0 marks RMSNorm weights, set to 1.
inline double param_init_std(const ModelConfig& cfg, int t) {
    const double L = cfg.n_layer;
    switch (t) {
        case NORM_A: case NORM_B: case NORM_F: return 0.0;
        case WTE: return std::sqrt(0.4);  // as the official Mix-LN code
        default: break;
    }
    if (cfg.norm == NormScheme::DeepNormPaper) {
        // The official Mix-LN code's DeepNorm: torch.nn.init.xavier_normal_, std = gain *
        // sqrt(2 / (fan_in + fan_out)), with gain (8L)^(+1/4) for v, o, gate, up and down (DeepNet's
        // beta is (8L)^(-1/4)) and gain 1 for q and k. It takes precedence over -S, as there.
        const double gain = std::pow(8.0 * L, 0.25), attn_fans = 2.0 * cfg.d_model, mlp_fans = (double)cfg.d_model + cfg.d_ffn;
        switch (t) {
            case WQ: case WK: return std::sqrt(2.0 / attn_fans);
            case WV: case WO: return gain * std::sqrt(2.0 / attn_fans);
            case WGATE: case WUP: case WDOWN: return gain * std::sqrt(2.0 / mlp_fans);
            default: break;
        }
    }
    double std = 0.02;
    if (cfg.scaled_init && (t == WO || t == WDOWN)) std /= std::sqrt(2.0 * L);
    // DeepNorm (Wang et al., 2022, Fig. 2): the value, output and MLP weights get gain beta = (8L)^(-1/4).
    if (cfg.norm == NormScheme::DeepNorm && (t == WV || t == WO || t == WGATE || t == WUP || t == WDOWN))
        std *= std::pow(8.0 * L, -0.25);
    return std;
}

// Fills params (layout.total floats) deterministically from seed. The draws go in the order of the
// layout before v3 (tensor by tensor, each over all layers, each matrix row by row over the model's
// F), so a seed gives the same weights as before; the padding is zero.
inline void init_parameters(float* params, const ModelConfig& cfg, const ParamLayout& layout, uint64_t seed) {
    Rng rng(seed);
    std::fill(params, params + layout.total, 0.0f);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        const double std = param_init_std(cfg, t);
        const TensorShape s = param_shape(cfg, t);
        for (int l = 0; l < (param_is_per_layer(t) ? cfg.n_layer : 1); l++) {
            float* p = params + layout.at(t, l);
            for (long r = 0; r < s.rows; r++)
                for (long c = 0; c < s.cols; c++) p[r * s.ld + c] = std == 0.0 ? 1.0f : (float)(std * rng.normal());
        }
    }
}

// Training FLOPs per token as in the brief: 6 * (N - V*d) + 6 * L * T * d (the embedding lookup is not
// a matmul; the second term is causal attention's QK^T and PV, counted over the full T x T). N is the
// model's parameter count: the padding's multiplications by zero are not the model's work.
inline double flops_per_token(const ModelConfig& cfg, int T) {
    return 6.0 * (double)(num_model_parameters(cfg) - (long)cfg.vocab_size * cfg.d_model) + 6.0 * cfg.n_layer * (double)T * cfg.d_model;
}
