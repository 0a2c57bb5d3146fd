// A vocabulary file ("vocab.bin", written next to the token shards by scripts/vocab_format.py) and
// the tokenizer built on it: ids to text and back (plain C++17, header-only, no dependencies).
//
// vocab.bin format (all little-endian):
//   offset 0   char[8]  magic "MIXLNVOC"
//          8   uint32   version, 1
//         12   uint32   vocab_size, 1 .. 2^24
//         16   int32    eot_id: the end-of-text id, or -1 if the tokenizer has none
//         20   vocab_size entries in id order, each a uint32 byte length n followed by the n bytes
//              the id stands for (raw bytes, not necessarily valid UTF-8 on their own)
// The file ends right after the last entry. Special tokens (end-of-text, padding) store their
// names, e.g. "</s>" or "<|endoftext|>", so that they show up when decoded.
#pragma once
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

constexpr char VOCAB_MAGIC[8] = {'M', 'I', 'X', 'L', 'N', 'V', 'O', 'C'};
constexpr uint32_t VOCAB_VERSION = 1;
constexpr size_t VOCAB_HEADER_BYTES = 20;
constexpr uint32_t VOCAB_MAX_SIZE = 1u << 24;

class Tokenizer {
public:
    explicit Tokenizer(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw error(path, std::string("cannot open: ") + strerror(errno));
        const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (data.size() < VOCAB_HEADER_BYTES)
            throw error(path, "truncated: only " + std::to_string(data.size()) + " bytes, less than the 20-byte header");
        if (data.compare(0, 8, VOCAB_MAGIC, 8) != 0) throw error(path, "bad magic: not a mixln vocabulary (expected \"MIXLNVOC\")");
        const uint32_t version = le32(data, 8), size = le32(data, 12);
        eot_ = (int32_t)le32(data, 16);
        if (version != VOCAB_VERSION) throw error(path, "unsupported version " + std::to_string(version) + " (this build reads 1)");
        if (size == 0 || size > VOCAB_MAX_SIZE)
            throw error(path, "bad vocab_size " + std::to_string(size) + " (must be 1 .. 2^24)");
        if (eot_ < -1 || eot_ >= (int64_t)size)
            throw error(path, "eot_id " + std::to_string(eot_) + " is outside the vocabulary of " + std::to_string(size));
        size_t at = VOCAB_HEADER_BYTES;
        pieces_.reserve(size);
        for (uint32_t id = 0; id < size; id++) {
            if (data.size() - at < 4)
                throw error(path, "truncated: the file ends at entry " + std::to_string(id) + " of " + std::to_string(size));
            const uint32_t n = le32(data, at);
            at += 4;
            if (n > data.size() - at)
                throw error(path, "entry " + std::to_string(id) + " has length " + std::to_string(n) + ", past the end of the file (" +
                                  std::to_string(data.size() - at) + " bytes left)");
            pieces_.push_back(data.substr(at, n));
            at += n;
        }
        if (at != data.size()) throw error(path, std::to_string(data.size() - at) + " stray bytes after the last entry");
        // For encoding: each byte string's lowest id (ids can share bytes), and the longest length.
        for (int id = 0; id < (int)size; id++) {
            if (pieces_[id].empty()) continue;
            ids_.emplace(pieces_[id], id);
            if (pieces_[id].size() > max_len_) max_len_ = pieces_[id].size();
        }
    }

    int vocab_size() const { return (int)pieces_.size(); }
    int eot_id() const { return eot_; }

    // The bytes of one id.
    const std::string& piece(int id) const {
        if (id < 0 || id >= vocab_size())
            throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(vocab_size()));
        return pieces_[id];
    }

    // Exact: the concatenation of the ids' bytes (a cut in the middle of a UTF-8 character gives
    // back exactly the bytes written, which a terminal may show as a replacement character).
    std::string decode(const std::vector<int>& ids) const {
        std::string text;
        for (int id : ids) text += piece(id);
        return text;
    }

    // Greedy longest match: from the start, repeatedly take the longest vocabulary entry that the
    // rest of the text begins with. This is exact for the byte tokenizer (every entry is one byte).
    // For BPE and SentencePiece vocabularies it approximates the real tokenizer, which applies its
    // merges (or picks the most likely segmentation) instead, so it can split words differently;
    // the ids still decode back to the same text, which is what prompts need. SentencePiece
    // pieces begin with a space where a word does, so a prompt should start with one too. Text
    // that spells out a special token ("</s>") gets its id. Throws if no entry matches some byte.
    std::vector<int> encode(const std::string& text) const {
        std::vector<int> ids;
        size_t at = 0;
        while (at < text.size()) {
            size_t len = std::min(max_len_, text.size() - at);
            for (; len > 0; len--) {
                auto it = ids_.find(text.substr(at, len));
                if (it != ids_.end()) { ids.push_back(it->second); break; }
            }
            if (len == 0) {
                char hex[8];
                snprintf(hex, sizeof hex, "0x%02x", (unsigned char)text[at]);
                throw std::runtime_error("cannot encode byte " + std::string(hex) + " at offset " + std::to_string(at) +
                                         ": no vocabulary entry starts with it");
            }
            at += len;
        }
        return ids;
    }

private:
    std::vector<std::string> pieces_;
    int eot_ = -1;
    std::unordered_map<std::string, int> ids_;
    size_t max_len_ = 0;

    static std::runtime_error error(const std::string& path, const std::string& what) {
        return std::runtime_error("vocab '" + path + "': " + what);
    }
    static uint32_t le32(const std::string& s, size_t at) {
        const unsigned char* p = (const unsigned char*)s.data() + at;
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    }
};
