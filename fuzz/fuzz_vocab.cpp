// libFuzzer target: the vocabulary reader (tokenizer/tokenizer.h) on arbitrary bytes, then encoding
// and decoding with whatever vocabulary it accepts. Seeds: fuzz/corpus/vocab (fuzz/make_seeds.py).
#include "fuzz_input.h"
#include <memory>
#include "../tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = input_as_file(data, size);
    std::unique_ptr<Tokenizer> tok;
    try {
        tok.reset(new Tokenizer(path));
    } catch (const std::exception& e) {
        require_names(e.what(), path);
        return 0;
    }
    if (tok->eot_id() < -1 || tok->eot_id() >= tok->vocab_size()) abort();
    std::vector<int> ids;
    for (int id = 0; id < tok->vocab_size() && id < 64; id++) ids.push_back(id);
    const std::string text = tok->decode(ids);
    try {
        // encoding is greedy: its ids need not be these, but they decode back to the same bytes
        if (tok->decode(tok->encode(text)) != text) abort();
    } catch (const std::runtime_error&) {  // "cannot encode byte ...": a vocabulary without some byte
    }
    return 0;
}
