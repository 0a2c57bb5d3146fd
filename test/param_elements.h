// The flat indices of the model's own elements of one stored tensor (core/config.h's layout), the
// padding of the MLP's stored width left out: for tests that look at weights tensor by tensor.
#pragma once
#include <vector>
#include "../core/config.h"

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
