// CPU reference: the SwiGLU gate (Shazeer, 2020).  out = silu(gate) * up,  silu(g) = g * sigmoid(g).
// gate, up and out are (N, F); the MLP is down(swiglu(gate(x), up(x))).
#pragma once
#include <cmath>

template <typename real>
void swiglu_forward(real* out, const real* gate, const real* up, long n) {
    for (long i = 0; i < n; i++) {
        const real g = gate[i];
        out[i] = g / (real(1) + std::exp(-g)) * up[i];
    }
}

// d silu(g)/dg = s * (1 + g * (1 - s)) with s = sigmoid(g). Accumulates into dgate and dup.
template <typename real>
void swiglu_backward(real* dgate, real* dup, const real* dout, const real* gate, const real* up, long n) {
    for (long i = 0; i < n; i++) {
        const real g = gate[i];
        const real s = real(1) / (real(1) + std::exp(-g));
        dgate[i] += dout[i] * up[i] * s * (real(1) + g * (real(1) - s));
        dup[i] += dout[i] * g * s;
    }
}
