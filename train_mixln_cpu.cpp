// train_mixln_cpu: the readable, exact, slow trainer. The reference model of core/model_cpu.h in
// fp32 with AdamW, driven by the same loop and flags as the GPU trainer (core/trainer.h).
//   make train_mixln_cpu && ./train_mixln_cpu -e tiny -i data/kjv/train.bin -j data/kjv/val.bin
#include <cstdio>
#include "core/backend_cpu.h"
#include "core/memory.h"
#include "core/trainer.h"

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
        return run_training(opts, [&](const ModelConfig& cfg) {
            const std::pair<int, int> batch = largest_batch(opts, cfg);
            check_cpu_memory(cfg, batch.first, batch.second);
            return std::unique_ptr<TrainerBackend>(new CpuBackend<float>(cfg));
        });
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
