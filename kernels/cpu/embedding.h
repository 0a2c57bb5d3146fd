// CPU reference: token embedding lookup.  out (N, C) = scale * wte[tokens[n]],  wte (V, C).
// scale is 1, or sqrt(C) for the paper's Appendix B "Scaled Embed" (Takase et al., 2023).
#pragma once

template <typename real>
void embedding_forward(real* out, const int* tokens, const real* wte, int N, int C, real scale) {
    for (int n = 0; n < N; n++) {
        const real* row = wte + (long)tokens[n] * C;
        for (int c = 0; c < C; c++) out[(long)n * C + c] = scale * row[c];
    }
}

// dwte[tokens[n]] += scale * dout[n]; rows of repeated tokens add up.
template <typename real>
void embedding_backward(real* dwte, const real* dout, const int* tokens, int N, int C, real scale) {
    for (int n = 0; n < N; n++) {
        real* row = dwte + (long)tokens[n] * C;
        for (int c = 0; c < C; c++) row[c] += scale * dout[(long)n * C + c];
    }
}
