// CPU reference: matmul without bias, the layout of torch.nn.Linear and of the GPU kernels.
//   out (N, OC) = inp (N, C) @ W^T,  with W stored row-major as (OC, C).
// Backward accumulates (+=) into dinp and dW, so gradients of shared inputs add up.
#pragma once

template <typename real>
void matmul_forward(real* out, const real* inp, const real* W, int N, int C, int OC) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            const real* x = inp + (long)n * C;
            const real* w = W + (long)o * C;
            real sum = 0;
            #pragma omp simd reduction(+ : sum)
            for (int c = 0; c < C; c++) sum += x[c] * w[c];
            out[(long)n * OC + o] = sum;
        }
    }
}

// dinp (N, C) += dout (N, OC) @ W;   dW (OC, C) += dout^T @ inp.
template <typename real>
void matmul_backward(real* dinp, real* dW, const real* dout, const real* inp, const real* W,
                     int N, int C, int OC) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        real* dx = dinp + (long)n * C;
        for (int o = 0; o < OC; o++) {
            const real g = dout[(long)n * OC + o];
            const real* w = W + (long)o * C;
            #pragma omp simd
            for (int c = 0; c < C; c++) dx[c] += g * w[c];
        }
    }
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < OC; o++) {
        real* dw = dW + (long)o * C;
        for (int n = 0; n < N; n++) {
            const real g = dout[(long)n * OC + o];
            const real* x = inp + (long)n * C;
            #pragma omp simd
            for (int c = 0; c < C; c++) dw[c] += g * x[c];
        }
    }
}
