// libFuzzer target: the token shard reader and the data loader (dataloader.h) on arbitrary bytes: the
// header check, then a loader of small batches (T = 3) that reads, shuffles and restores positions.
// Seeds: fuzz/corpus/shard (fuzz/make_seeds.py).
#include "fuzz_input.h"
#include "../dataloader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = input_as_file(data, size);
    try {
        read_shard_header(path);
        DataLoader loader(path, 2, 3, 0, 1, /*shuffle=*/true, 7, /*model_vocab=*/300);
        int inputs[6], targets[6];
        for (int i = 0; i < 5; i++) loader.next_batch(inputs, targets);
        for (int i = 0; i < 6; i++)  // a padded shard's padding: input 0, target IGNORE_INDEX
            if (inputs[i] < 0 || inputs[i] >= 300 || (targets[i] != IGNORE_INDEX && (targets[i] < 0 || targets[i] >= 300))) abort();
        const DataPosition p = loader.position();
        loader.reset();
        loader.set_position(p);
    } catch (const std::exception& e) {
        require_names(e.what(), path);
    }
    return 0;
}
