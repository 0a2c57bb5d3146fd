// CPU reference: residual add  out = scale * x + f,  where f is a sublayer's output.
// scale is 1 except in DeepNorm (Wang et al., 2022), which up-weights the residual by (2L)^(1/4).
#pragma once

template <typename real>
void residual_forward(real* out, const real* x, const real* f, long n, real scale) {
    for (long i = 0; i < n; i++) out[i] = scale * x[i] + f[i];
}

// Accumulates: dx += scale * dout,  df += dout.
template <typename real>
void residual_backward(real* dx, real* df, const real* dout, long n, real scale) {
    for (long i = 0; i < n; i++) {
        dx[i] += scale * dout[i];
        df[i] += dout[i];
    }
}
