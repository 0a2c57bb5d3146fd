// The paper's learning-rate schedule (Appendix A): linear warmup (the first 10% of the steps in the
// paper's text; -u), then cosine annealing down to 10% of the peak at the last step.
#pragma once
#include <cmath>

struct LrSchedule {
    double peak_lr;
    int total_steps;
    int warmup_steps;
    double final_ratio;  // lr at the last step / peak_lr

    // lr for optimizer step `step` (0-based). Warmup starts at peak/warmup rather than at 0, so no
    // step is wasted with a zero learning rate.
    double lr_at(int step) const {
        if (step < warmup_steps) return peak_lr * (step + 1) / warmup_steps;
        const int decay_steps = total_steps - warmup_steps;
        const double progress = decay_steps > 1 ? (double)(step - warmup_steps) / (decay_steps - 1) : 1.0;
        const double cosine = 0.5 * (1.0 + std::cos(M_PI * (progress < 1.0 ? progress : 1.0)));
        return peak_lr * (final_ratio + (1.0 - final_ratio) * cosine);
    }
};

inline LrSchedule make_schedule(double peak_lr, int total_steps, int warmup_steps, double final_ratio) {
    return LrSchedule{peak_lr, total_steps, warmup_steps, final_ratio};
}
