// CPU reference: global gradient-norm clipping and the AdamW update (Loshchilov & Hutter, 2019),
// bias-corrected, weight decay decoupled from the gradient, in the order of torch.optim.AdamW.
#pragma once
#include <cmath>

// grad_clip_scale is also the GPU's (kernels/adamw.cuh computes it on the device from the norm).
#ifdef __CUDACC__
#define HOST_AND_DEVICE __host__ __device__
#else
#define HOST_AND_DEVICE
#endif

// sqrt(sum g^2) over all gradients, accumulated in double.
template <typename real>
double global_grad_norm(const real* grads, long n) {
    double ss = 0;
    for (long i = 0; i < n; i++) ss += (double)grads[i] * grads[i];
    return std::sqrt(ss);
}

// The factor torch.nn.utils.clip_grad_norm_ applies: min(1, max_norm / (norm + 1e-6)); 1 when
// clipping is off (max_norm <= 0). The update multiplies each gradient by it.
HOST_AND_DEVICE inline double grad_clip_scale(double norm, double max_norm) {
    if (max_norm <= 0) return 1.0;
    const double s = max_norm / (norm + 1e-6);
    return s < 1.0 ? s : 1.0;
}

// Whether a step with this global gradient norm skips its update: the norm is inf or NaN (a gradient
// is, or their squares overflow). A skipped step changes nothing: not the weights, not Adam's moments,
// and the trainer does not count it as an AdamW step (its bias corrections stay where they were).
// The GPU's update kernel asks the same of the same norm on the device (kernels/adamw.cuh).
HOST_AND_DEVICE inline bool update_skipped(double norm) {
#ifdef __CUDA_ARCH__
    return !isfinite(norm);
#else
    return !std::isfinite(norm);
#endif
}

// One step t (1-based) on n parameters:
//   g = grad_scale * grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (wd * p + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
template <typename real>
void adamw_update(real* params, const real* grads, real* m, real* v, long n, int t, real lr,
                  real beta1, real beta2, real eps, real weight_decay, real grad_scale) {
    const real bc1 = real(1) - (real)std::pow((double)beta1, t);
    const real bc2 = real(1) - (real)std::pow((double)beta2, t);
    for (long i = 0; i < n; i++) {
        const real g = grad_scale * grads[i];
        m[i] = beta1 * m[i] + (real(1) - beta1) * g;
        v[i] = beta2 * v[i] + (real(1) - beta2) * g * g;
        const real mhat = m[i] / bc1, vhat = v[i] / bc2;
        params[i] -= lr * (weight_decay * params[i] + mhat / (std::sqrt(vhat) + eps));
    }
}
