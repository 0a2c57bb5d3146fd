// Test helpers for the model's parameters: the flat indices of the model's own elements of a stored
// tensor (core/config.h's layout, the MLP's padding left out), and a random initialization.
#pragma once
#include <vector>
#include "../core/model_cpu.h"

// Layer l's tensor t (l ignored for a tensor that is not per layer), row by row.
inline std::vector<long> param_elements(const ModelConfig& cfg, const ParamLayout& layout, int t, int l = 0) {
    const TensorShape s = param_shape(cfg, t);
    std::vector<long> idx;
    idx.reserve(s.rows * s.cols);
    for (long r = 0; r < s.rows; r++)
        for (long c = 0; c < s.cols; c++) idx.push_back(layout.at(t, l) + r * s.ld + c);
    return idx;
}

// Tensor t over all layers.
inline std::vector<long> param_elements_all_layers(const ModelConfig& cfg, const ParamLayout& layout, int t) {
    std::vector<long> idx;
    for (int l = 0; l < (param_is_per_layer(t) ? cfg.n_layer : 1); l++) {
        const std::vector<long> layer = param_elements(cfg, layout, t, l);
        idx.insert(idx.end(), layer.begin(), layer.end());
    }
    return idx;
}

// init_parameters' weights with the norm weights drawn around 1 too, so that their gradients are not
// checked only at 1.
template <typename real>
inline void init_with_random_norms(CpuModel<real>& model, uint64_t seed) {
    std::vector<float> p(model.layout.total);
    init_parameters(p.data(), model.cfg, model.layout, seed);
    Rng rng(seed + 1);
    for (int t : {NORM_A, NORM_B, NORM_F})
        for (long i : param_elements_all_layers(model.cfg, model.layout, t)) p[i] = (float)(1.0 + 0.3 * rng.normal());
    model.params.assign(p.begin(), p.end());
}
