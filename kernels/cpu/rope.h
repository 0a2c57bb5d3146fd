// CPU reference: rotary position embedding (Su et al., 2021) in the "rotate half" convention of
// Hugging Face's LLaMA: in each head, element i pairs with element i + hd/2.
//   angle(t, i) = t * theta^(-2i/hd),  i in [0, hd/2)
//   out[i]        = x[i] * cos - x[i + hd/2] * sin
//   out[i + hd/2] = x[i + hd/2] * cos + x[i] * sin
// x and out are (B, T, NH, hd) = (B, T, C). out may alias x.
#pragma once
#include <cmath>
#include <vector>

// The rotation is orthogonal, so the backward is the same map with the angle negated.
template <typename real>
void rope_rotate(real* out, const real* inp, int B, int T, int NH, int hd, double theta, int direction) {
    const int half = hd / 2;
    #pragma omp parallel
    {
        std::vector<real> c(half), s(half);  // position t's rotation, shared by every sequence and head
        #pragma omp for schedule(static)
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < half; i++) {
                const double angle = t * std::pow(theta, -2.0 * i / hd);
                c[i] = (real)std::cos(angle);
                s[i] = (real)(direction * std::sin(angle));
            }
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++) {
                    const long base = (((long)b * T + t) * NH + h) * hd;
                    for (int i = 0; i < half; i++) {
                        const real x1 = inp[base + i], x2 = inp[base + i + half];
                        out[base + i] = x1 * c[i] - x2 * s[i];
                        out[base + i + half] = x2 * c[i] + x1 * s[i];
                    }
                }
        }
    }
}

template <typename real>
void rope_forward(real* out, const real* inp, int B, int T, int NH, int hd, double theta) {
    rope_rotate(out, inp, B, T, NH, hd, theta, +1);
}

// dinp = R(-angle) dout. Writes (does not accumulate); dinp may alias dout.
template <typename real>
void rope_backward(real* dinp, const real* dout, int B, int T, int NH, int hd, double theta) {
    rope_rotate(dinp, dout, B, T, NH, hd, theta, -1);
}
