// libFuzzer target: the checkpoint and optimizer shard readers (core/checkpoint.h) on arbitrary bytes.
// They must refuse bad input with an exception naming the file, never crash, overflow or allocate
// more than the file holds. Seeds: fuzz/corpus/checkpoint (fuzz/make_seeds.py).
#include "fuzz_input.h"
#include "../core/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = input_as_file(data, size);
    try {
        const Checkpoint ck = load_checkpoint(path);
        // a checkpoint that loads is usable: its layout and layer assignment are in range
        const ParamLayout layout = make_param_layout(ck.cfg);
        if ((int64_t)ck.params.size() != layout.total || num_post_ln_layers(ck.cfg) > ck.cfg.n_layer) abort();
    } catch (const std::exception& e) {
        require_names(e.what(), path);
    }
    try {
        const OptimizerShard s = load_optimizer_shard(path);
        if ((int64_t)s.m.size() != range_total(s.ranges) || s.v.size() != s.m.size()) abort();
    } catch (const std::exception& e) {
        require_names(e.what(), path);
    }
    return 0;
}
