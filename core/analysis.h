// The paper's layer-effectiveness measurements (section 2.2), computed from a model's gradients and
// hidden states. Host-side and model-agnostic: the CPU and GPU tools feed them fp32 arrays.
#pragma once
#include <cmath>
#include <vector>
#include "config.h"

// Per-layer gradient norms (paper Fig. 3e and 6): the L2 norm of a layer's attention weights
// (q, k, v, o), of its MLP weights (gate, up, down), and of all its parameters including the norms.
struct LayerGradNorm {
    double attention, mlp, total;
};

inline std::vector<LayerGradNorm> layer_grad_norms(const ModelConfig& cfg, const ParamLayout& layout, const float* grads) {
    auto sum_sq = [&](int tensor, int layer) {
        const float* g = grads + layout.at(tensor, layer);
        double s = 0;
        for (long i = 0; i < layout.layer_size[tensor]; i++) s += (double)g[i] * g[i];
        return s;
    };
    std::vector<LayerGradNorm> out(cfg.n_layer);
    for (int l = 0; l < cfg.n_layer; l++) {
        const double attn = sum_sq(WQ, l) + sum_sq(WK, l) + sum_sq(WV, l) + sum_sq(WO, l);
        const double mlp = sum_sq(WGATE, l) + sum_sq(WUP, l) + sum_sq(WDOWN, l);
        out[l] = {std::sqrt(attn), std::sqrt(mlp), std::sqrt(attn + mlp + sum_sq(NORM_A, l) + sum_sq(NORM_B, l))};
    }
    return out;
}

// Angular distance (paper eq. 6): d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi per token, averaged
// over tokens. Feed it the residual stream at every depth: states[l] is the input of layer l for
// l < L and states[L] the last layer's output, each (N, C). sum[l][n] accumulates over calls;
// mean(l, n) is defined for 1 <= n <= L - l.
struct AngularDistance {
    int L;
    std::vector<double> sum;  // (L + 1) x (L + 1), [l][n]
    long tokens = 0;

    explicit AngularDistance(int n_layer) : L(n_layer), sum((size_t)(n_layer + 1) * (n_layer + 1), 0.0) {}

    void accumulate(const std::vector<const float*>& states, long N, int C) {
        for (long t = 0; t < N; t++) {
            std::vector<double> norm(L + 1);
            for (int l = 0; l <= L; l++) {
                double s = 0;
                for (int c = 0; c < C; c++) s += (double)states[l][t * C + c] * states[l][t * C + c];
                norm[l] = std::sqrt(s);
            }
            for (int l = 0; l < L; l++)
                for (int n = 1; l + n <= L; n++) {
                    double dot = 0;
                    for (int c = 0; c < C; c++) dot += (double)states[l][t * C + c] * states[l + n][t * C + c];
                    double cos = dot / (norm[l] * norm[l + n]);
                    cos = cos > 1 ? 1 : (cos < -1 ? -1 : cos);  // rounding can leave |cos| a hair above 1
                    sum[(size_t)l * (L + 1) + n] += std::acos(cos) / M_PI;
                }
        }
        tokens += N;
    }

    double mean(int l, int n) const { return sum[(size_t)l * (L + 1) + n] / tokens; }
};
