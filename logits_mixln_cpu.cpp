// logits_mixln_cpu: the CPU reference model's logits for one sequence, so that other implementations
// of the model (an exported Hugging Face one: test/hf_check.py) can be compared with it.
//   ./logits_mixln_cpu CKPT TOKENS OUT
//     CKPT    a checkpoint file
//     TOKENS  a token shard (scripts/shard_format.py): all its n ids are one sequence
//     OUT     written: the logits, float32 (n, vocab_size) row-major, little-endian, no header
#include <cstdio>
#include "core/model_cpu.h"
#include "core/checkpoint.h"

static void write_logits(const std::string& path, const std::vector<float>& logits) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write '" + path + "': " + strerror(errno));
    const bool ok = fwrite(logits.data(), sizeof(float), logits.size(), f) == logits.size();
    if (fclose(f) != 0 || !ok) throw std::runtime_error("write failed: '" + path + "'");
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s CKPT TOKENS OUT  (the logits of the tokens of shard TOKENS, float32 (n, V), to OUT)\n", argv[0]);
        return 2;
    }
    try {
        const Checkpoint ck = load_checkpoint(argv[1]);
        const std::vector<int> tokens = read_shard_tokens(read_shard_header(argv[2]), ck.cfg.vocab_size);
        if (tokens.empty()) throw std::runtime_error(std::string("shard '") + argv[2] + "' holds no tokens");
        CpuModel<float> model(ck.cfg);
        model.params = ck.params;
        model.forward(tokens.data(), nullptr, 1, (int)tokens.size());
        write_logits(argv[3], model.logits);
    } catch (const std::exception& e) {
        fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
