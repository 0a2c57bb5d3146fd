// CPU reference: softmax + cross-entropy over the vocabulary.
//   logits (N, V), targets (N) with IGNORE_INDEX marking positions that carry no loss (padding).
//   loss_n = logsumexp(logits[n]) - logits[n][targets[n]]
#pragma once
#include <cmath>

constexpr int IGNORE_INDEX = -1;

// Writes per-position losses (0 where ignored); returns the mean over the non-ignored positions
// (0 if there are none) and their count in *n_valid.
template <typename real>
real crossentropy_forward(real* losses, const real* logits, const int* targets, int N, int V, int* n_valid) {
    double total = 0;
    int count = 0;
    for (int n = 0; n < N; n++) {
        losses[n] = 0;
        if (targets[n] == IGNORE_INDEX) continue;
        const real* z = logits + (long)n * V;
        real maxval = -INFINITY;
        for (int i = 0; i < V; i++) if (z[i] > maxval) maxval = z[i];
        real sum = 0;
        for (int i = 0; i < V; i++) sum += std::exp(z[i] - maxval);
        losses[n] = maxval + std::log(sum) - z[targets[n]];
        total += losses[n];
        count++;
    }
    *n_valid = count;
    return count ? (real)(total / count) : real(0);
}

// dlogits[n] = dloss * (softmax(logits[n]) - onehot(targets[n])), zero where ignored.
// dloss is d(objective)/d(loss_n), e.g. 1/n_valid for the mean. Writes (does not accumulate).
template <typename real>
void crossentropy_backward(real* dlogits, const real* logits, const int* targets, int N, int V, real dloss) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real* z = logits + (long)n * V;
        real* dz = dlogits + (long)n * V;
        if (targets[n] == IGNORE_INDEX) {
            for (int i = 0; i < V; i++) dz[i] = 0;
            continue;
        }
        real maxval = -INFINITY;
        for (int i = 0; i < V; i++) if (z[i] > maxval) maxval = z[i];
        real sum = 0;
        for (int i = 0; i < V; i++) sum += std::exp(z[i] - maxval);
        for (int i = 0; i < V; i++) dz[i] = dloss * std::exp(z[i] - maxval) / sum;
        dz[targets[n]] -= dloss;
    }
}
