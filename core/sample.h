// Autoregressive text sampling: greedy (temperature 0) or from softmax(logits / temperature).
#pragma once
#include <cmath>
#include <functional>
#include <vector>
#include "rng.h"

// logits_of(context, T, logits) writes the V next-token logits after the T tokens of context.
using NextTokenLogits = std::function<void(const int* context, int T, float* logits)>;

inline int sample_token(const std::vector<float>& logits, double temperature, Rng& rng) {
    const int V = (int)logits.size();
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    if (temperature <= 0) return best;
    std::vector<double> p(V);
    double sum = 0;
    for (int i = 0; i < V; i++) sum += p[i] = std::exp((logits[i] - logits[best]) / temperature);
    double u = rng.uniform() * sum;
    for (int i = 0; i < V; i++) if ((u -= p[i]) < 0) return i;
    return V - 1;  // u landed on the rounding slack at the end
}

// Extends `tokens` by n_new tokens, each conditioned on at most the last max_context tokens.
inline void generate(std::vector<int>& tokens, int n_new, int max_context, int vocab_size, double temperature,
                     Rng& rng, const NextTokenLogits& logits_of) {
    std::vector<float> logits(vocab_size);
    for (int i = 0; i < n_new; i++) {
        const int T = std::min((int)tokens.size(), max_context);
        logits_of(tokens.data() + tokens.size() - T, T, logits.data());
        tokens.push_back(sample_token(logits, temperature, rng));
    }
}
