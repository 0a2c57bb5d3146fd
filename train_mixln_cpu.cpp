// train_mixln_cpu: the readable, exact, slow trainer. The reference model of core/model_cpu.h in
// fp32 with AdamW, driven by the same loop and flags as the GPU trainer (core/trainer.h).
//   make train_mixln_cpu && ./train_mixln_cpu -e tiny -i data/kjv/train.bin -j data/kjv/val.bin
#include <cstdio>
#include <thread>
#include "core/model_cpu.h"
#include "core/trainer.h"

struct CpuBackend : TrainerBackend {
    CpuModel<float> model;
    std::vector<float> m, v;  // Adam moments

    explicit CpuBackend(const ModelConfig& cfg) : model(cfg), m(model.layout.total, 0.0f), v(model.layout.total, 0.0f) {}

    std::string description() const override {
        return "device: CPU (fp32 reference kernels, " + std::to_string(std::thread::hardware_concurrency()) + " hardware threads)";
    }
    double peak_flops() const override { return 0; }
    void zero_grad() override { model.zero_grad(); }
    float forward_backward(const int* inputs, const int* targets, int B, int T, float loss_scale) override {
        const float loss = model.forward(inputs, targets, B, T);
        model.backward(loss_scale);
        return loss;
    }
    float forward_loss(const int* inputs, const int* targets, int B, int T) override {
        return model.forward(inputs, targets, B, T);
    }
    void next_token_logits(const int* tokens, int T, float* logits) override {
        model.forward(tokens, nullptr, 1, T);
        std::copy(model.logits.end() - model.cfg.vocab_size, model.logits.end(), logits);
    }
    double grad_norm() override { return global_grad_norm(model.grads.data(), model.layout.total); }
    void adamw_step(double lr, double grad_scale, int t, const TrainOptions& o) override {
        adamw_update(model.params.data(), model.grads.data(), m.data(), v.data(), model.layout.total, t, (float)lr,
                     (float)o.beta1, (float)o.beta2, (float)o.adam_eps, (float)o.weight_decay, (float)grad_scale);
    }
    void read_state(float* params, float* m_out, float* v_out) override {
        std::copy(model.params.begin(), model.params.end(), params);
        std::copy(m.begin(), m.end(), m_out);
        std::copy(v.begin(), v.end(), v_out);
    }
    void read_grads(float* grads) override { std::copy(model.grads.begin(), model.grads.end(), grads); }
    void write_state(const float* params, const float* m_in, const float* v_in) override {
        std::copy(params, params + model.layout.total, model.params.begin());
        if (m_in) std::copy(m_in, m_in + model.layout.total, m.begin()); else std::fill(m.begin(), m.end(), 0.0f);
        if (v_in) std::copy(v_in, v_in + model.layout.total, v.begin()); else std::fill(v.begin(), v.end(), 0.0f);
    }
};

int main(int argc, char** argv) {
    TrainOptions opts;
    try {
        opts = parse_train_options(argc, argv);
        reject_gpu_only_options(opts);
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\nrun with -h for the list of flags\n", e.what());
        return 2;
    }
    if (opts.help) { fputs(train_usage(), stdout); return 0; }
    try {
        return run_training(opts, [](const ModelConfig& cfg) { return std::unique_ptr<TrainerBackend>(new CpuBackend(cfg)); });
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
