// Finite-difference gradient checking in double precision, shared by the CPU reference tests.
#pragma once
#include <cmath>
#include <functional>
#include <vector>
#include "catch_compat.h"
#include "../core/rng.h"

inline std::vector<double> random_vector(size_t n, Rng& rng, double scale = 1.0) {
    std::vector<double> v(n);
    for (double& x : v) x = scale * rng.normal();
    return v;
}

// Central differences with step h: the truncation error is O(h^2 f''') ~ 1e-10 and the rounding error
// O(eps_double * |f| / h) ~ 1e-11 for O(1) inputs, so rtol 1e-6 / atol 1e-8 has a wide margin while any
// wrong term in a backward (an O(1) relative error) fails by orders of magnitude.
struct GradCheckTolerance {
    double h = 1e-5, rtol = 1e-6, atol = 1e-8;
};

// Compares analytic[i] with (f(x + h e_i) - f(x - h e_i)) / 2h for every i; x is restored.
// Returns the worst ratio |fd - analytic| / (atol + rtol * max(|fd|, |analytic|)); <= 1 passes.
inline double gradcheck_worst(const std::function<double()>& f, std::vector<double>& x,
                              const std::vector<double>& analytic, GradCheckTolerance tol = {}) {
    double worst = 0;
    for (size_t i = 0; i < x.size(); i++) {
        const double saved = x[i];
        x[i] = saved + tol.h; const double fp = f();
        x[i] = saved - tol.h; const double fm = f();
        x[i] = saved;
        const double fd = (fp - fm) / (2 * tol.h);
        const double err = std::fabs(fd - analytic[i]) / (tol.atol + tol.rtol * std::fmax(std::fabs(fd), std::fabs(analytic[i])));
        if (err > worst) worst = err;
    }
    return worst;
}

#define CHECK_GRADIENT(f, x, analytic) CHECK(gradcheck_worst(f, x, analytic) <= 1.0)

// sum_i out[i] * weights[i]: a scalar whose gradient with respect to out is `weights`.
inline double weighted_sum(const std::vector<double>& out, const std::vector<double>& weights) {
    double s = 0;
    for (size_t i = 0; i < out.size(); i++) s += out[i] * weights[i];
    return s;
}
