// The register-tiled kernels (kernels/cpu/matmul.h, attention_*_tiled in kernels/cpu/attention.h)
// against the plain loops they replaced, in float, on shapes with full tiles, edge tiles and more
// than one k block; and the tiled attention's backward against finite differences in double.
//
// Tolerance. The tiled and the plain kernels add the same products in a different order. A float sum
// of n terms computed in any order is within gamma_n * sum|terms| of the exact sum, gamma_n =
// n u / (1 - n u), u = 2^-24; so two orders differ by at most 2 gamma_n sum|terms|, and that is the
// bound checked for matmul, element by element. Attention chains three such sums (q.k over hd terms,
// P v or the backward's products over at most T terms, through the softmax, which is 2-Lipschitz in
// the logits): the bound checked is 3 x 2 gamma_n x max|reference| with n = max(T, hd) + 1, normwise.
// Each check is shown to catch a planted bug (a product with one term dropped).
#include <cmath>
#include <vector>
#include "gradcheck.h"
#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/matmul.h"

using FVec = std::vector<float>;

static FVec random_floats(size_t n, Rng& rng) {
    FVec v(n);
    for (float& x : v) x = (float)rng.normal();
    return v;
}

static double gamma_n(long n) {
    const double u = std::ldexp(1.0, -24);
    return n * u / (1 - n * u);
}

// The matmul this project had before the tiled one: one dot product per output, k in order.
// skip_k >= 0 drops that term (the planted bug).
static void naive_matmul_forward(float* out, const float* inp, const float* W, int N, int C, int OC, int skip_k = -1) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float sum = 0;
            for (int c = 0; c < C; c++)
                if (c != skip_k) sum += inp[(long)n * C + c] * W[(long)o * C + c];
            out[(long)n * OC + o] = sum;
        }
}

static void naive_matmul_backward(float* dinp, float* dW, const float* dout, const float* inp, const float* W,
                                  int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            for (int c = 0; c < C; c++) dinp[(long)n * C + c] += dout[(long)n * OC + o] * W[(long)o * C + c];
    for (int o = 0; o < OC; o++)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) dW[(long)o * C + c] += dout[(long)n * OC + o] * inp[(long)n * C + c];
}

// How many elements of a and b differ by more than 2 gamma_n * magnitude[i].
static int order_bound_violations(const FVec& a, const FVec& b, const std::vector<double>& magnitude, long n) {
    int bad = 0;
    for (size_t i = 0; i < a.size(); i++)
        if (std::fabs((double)a[i] - b[i]) > 2 * gamma_n(n) * magnitude[i]) bad++;
    return bad;
}

// sum_k |A(m, k) B(k, j)| for out (M, Ncol) = A @ B, plus |init| where the product accumulates.
static std::vector<double> magnitudes(const FVec& A, long ars, long aks, const FVec& B, long bks, long bjs,
                                      int M, int Ncol, int K, const FVec* init) {
    std::vector<double> s((size_t)M * Ncol);
    for (int m = 0; m < M; m++)
        for (int j = 0; j < Ncol; j++) {
            double sum = init ? std::fabs((*init)[(size_t)m * Ncol + j]) : 0;
            for (int k = 0; k < K; k++) sum += std::fabs((double)A[m * ars + k * aks] * B[k * bks + j * bjs]);
            s[(size_t)m * Ncol + j] = sum;
        }
    return s;
}

TEST_CASE("tiled matmul agrees with the naive loops to summation order, in float") {
    Rng rng(11);
    // (N, C, OC): a single edge tile; full tiles with edges; C and N over one k block (GEMM_KC)
    const int shapes[][3] = {{5, 7, 3}, {37, 64, 45}, {50, 300, 70}, {300, 16, 33}};
    for (const auto& s : shapes) {
        const int N = s[0], C = s[1], OC = s[2];
        CAPTURE(N, C, OC);
        const FVec inp = random_floats((size_t)N * C, rng), W = random_floats((size_t)OC * C, rng);
        const FVec dout = random_floats((size_t)N * OC, rng);
        const FVec dinp0 = random_floats((size_t)N * C, rng), dW0 = random_floats((size_t)OC * C, rng);

        FVec out((size_t)N * OC), ref((size_t)N * OC), dropped((size_t)N * OC);
        matmul_forward(out.data(), inp.data(), W.data(), N, C, OC);
        naive_matmul_forward(ref.data(), inp.data(), W.data(), N, C, OC);
        naive_matmul_forward(dropped.data(), inp.data(), W.data(), N, C, OC, /*skip_k=*/C / 2);
        const std::vector<double> mag = magnitudes(inp, C, 1, W, 1, C, N, OC, C, nullptr);
        CHECK(order_bound_violations(out, ref, mag, C) == 0);
        CHECK(order_bound_violations(dropped, ref, mag, C) > N * OC / 2);  // the check catches a lost term

        FVec dinp = dinp0, dW = dW0, dinp_ref = dinp0, dW_ref = dW0;
        matmul_backward(dinp.data(), dW.data(), dout.data(), inp.data(), W.data(), N, C, OC);
        naive_matmul_backward(dinp_ref.data(), dW_ref.data(), dout.data(), inp.data(), W.data(), N, C, OC);
        CHECK(order_bound_violations(dinp, dinp_ref, magnitudes(dout, OC, 1, W, C, 1, N, C, OC, &dinp0), OC + 1) == 0);
        CHECK(order_bound_violations(dW, dW_ref, magnitudes(dout, 1, OC, inp, C, 1, OC, C, N, &dW0), N + 1) == 0);
    }
}

static double max_abs(const FVec& v) {
    double m = 0;
    for (float x : v) m = std::fmax(m, std::fabs(x));
    return m;
}

static double max_abs_diff(const FVec& a, const FVec& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); i++) m = std::fmax(m, std::fabs((double)a[i] - b[i]));
    return m;
}

TEST_CASE("tiled attention agrees with the reference attention to summation order, in float") {
    Rng rng(12);
    const int shapes[][4] = {{2, 5, 8, 2}, {2, 37, 64, 2}, {1, 70, 128, 4}, {2, 29, 96, 2}};  // B, T, C, NH
    for (const auto& s : shapes) {
        const int B = s[0], T = s[1], C = s[2], NH = s[3], N = B * T;
        CAPTURE(B, T, C, NH);
        const double tol_rel = 3 * 2 * gamma_n(std::max(T, C / NH) + 1);
        const FVec q = random_floats((size_t)N * C, rng), k = random_floats((size_t)N * C, rng);
        const FVec v = random_floats((size_t)N * C, rng), dout = random_floats((size_t)N * C, rng);
        FVec out(N * C), out_ref(N * C), probs((size_t)B * NH * T * T), probs_ref((size_t)B * NH * T * T);
        attention_forward_tiled(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        attention_forward(out_ref.data(), probs_ref.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        CHECK(max_abs_diff(out, out_ref) <= tol_rel * max_abs(out_ref));

        FVec dq(N * C, 0), dk(N * C, 0), dv(N * C, 0), dq_ref(N * C, 0), dk_ref(N * C, 0), dv_ref(N * C, 0);
        attention_backward_tiled(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), probs_ref.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        CHECK(max_abs_diff(dq, dq_ref) <= tol_rel * max_abs(dq_ref));
        CHECK(max_abs_diff(dk, dk_ref) <= tol_rel * max_abs(dk_ref));
        CHECK(max_abs_diff(dv, dv_ref) <= tol_rel * max_abs(dv_ref));

        // The planted bug: P v without its first term (every sequence's v[0] taken as 0).
        FVec v_dropped = v;
        for (int b = 0; b < B; b++) std::fill_n(v_dropped.begin() + (size_t)b * T * C, C, 0.0f);
        FVec out_bug(N * C);
        attention_forward_tiled(out_bug.data(), probs.data(), q.data(), k.data(), v_dropped.data(), B, T, C, NH);
        CHECK(max_abs_diff(out_bug, out_ref) > tol_rel * max_abs(out_ref));
    }
}

TEST_CASE("tiled attention backward matches finite differences in double") {
    const int B = 2, T = 15, C = 12, NH = 3, N = B * T;  // T over one row tile
    Rng rng(13);
    std::vector<double> q = random_vector(N * C, rng), k = random_vector(N * C, rng), v = random_vector(N * C, rng);
    const std::vector<double> R = random_vector(N * C, rng);
    std::vector<double> out(N * C), probs((size_t)B * NH * T * T);
    auto loss = [&] {
        attention_forward_tiled(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
        return weighted_sum(out, R);
    };
    loss();
    std::vector<double> dq(N * C, 0), dk(N * C, 0), dv(N * C, 0);
    attention_backward_tiled(dq.data(), dk.data(), dv.data(), R.data(), probs.data(), q.data(), k.data(), v.data(), B, T, C, NH);
    CHECK_GRADIENT(loss, q, dq);
    CHECK_GRADIENT(loss, k, dk);
    CHECK_GRADIENT(loss, v, dv);
}
