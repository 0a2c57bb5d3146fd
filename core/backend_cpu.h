// The CPU reference model behind the training driver's interface (core/trainer.h), with AdamW in the
// same scalar type: float for train_mixln_cpu, double for the GPU trainer's tests.
#pragma once
#include <algorithm>
#include <string>
#include <thread>
#include <vector>
#include "model_cpu.h"
#include "trainer.h"

template <typename real>
struct CpuBackend : TrainerBackend {
    CpuModel<real> model;
    std::vector<real> m, v;  // Adam moments
    StepResult step;         // the step so far: its loss, summed over the micro-batches, and norm

    explicit CpuBackend(const ModelConfig& cfg) : model(cfg), m(model.layout.total, real(0)), v(model.layout.total, real(0)) {}

    std::string description() const override {
        return std::string("device: CPU (") + (sizeof(real) == 4 ? "fp32" : "fp64") + " reference kernels, " +
               std::to_string(std::thread::hardware_concurrency()) + " hardware threads)";
    }
    double peak_flops() const override { return 0; }
    void zero_grad() override {
        model.zero_grad();
        step = StepResult{};
    }
    void forward_backward(const int* inputs, const int* targets, int B, int T, float loss_scale, bool) override {
        const float loss = (float)model.forward(inputs, targets, B, T);
        model.backward((real)loss_scale);
        step.loss += (double)loss * loss_scale;
    }
    float forward_loss(const int* inputs, const int* targets, int B, int T) override {
        return (float)model.forward(inputs, targets, B, T);
    }
    void next_token_logits(const int* tokens, int T, float* logits) override {
        model.forward(tokens, nullptr, 1, T);
        std::copy(model.logits.end() - model.cfg.vocab_size, model.logits.end(), logits);
    }
    void optimizer_step(double lr, int t, const TrainOptions& o) override {
        step.grad_norm = global_grad_norm(model.grads.data(), model.layout.total);
        step.skipped = update_skipped(step.grad_norm);
        if (step.skipped) return;  // a norm of inf or NaN: nothing changes
        adamw_update(model.params.data(), model.grads.data(), m.data(), v.data(), model.layout.total, t, (real)lr,
                     (real)o.beta1, (real)o.beta2, (real)o.adam_eps, (real)o.weight_decay,
                     (real)grad_clip_scale(step.grad_norm, o.grad_clip));
    }
    void reduce_gradients(bool stop) override { step.stop = stop; }  // one process: nothing to sum
    StepResult step_result() override { return step; }
    void read_state(float* params, float* m_out, float* v_out) override {
        std::copy(model.params.begin(), model.params.end(), params);
        std::copy(m.begin(), m.end(), m_out);
        std::copy(v.begin(), v.end(), v_out);
    }
    void read_grads(float* grads) override { std::copy(model.grads.begin(), model.grads.end(), grads); }
    void write_state(const float* params, const float* m_in, const float* v_in) override {
        std::copy(params, params + model.layout.total, model.params.begin());
        auto set_moments = [&](std::vector<real>& dst, const float* src) {
            if (src) std::copy(src, src + model.layout.total, dst.begin());
            else std::fill(dst.begin(), dst.end(), real(0));
        };
        set_moments(m, m_in);
        set_moments(v, v_in);
    }
};
