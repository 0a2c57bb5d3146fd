// The vocabulary file and tokenizer: exact decoding, greedy encoding for a byte vocabulary and a
// small BPE-like one, the byte layout shared with scripts/vocab_format.py, and a clear error for
// each kind of bad file.
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>
#include "catch_compat.h"
#include "../tokenizer/tokenizer.h"

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_test_XXXXXX";
    return mkdtemp(tmpl);
}

static std::string error_of(const std::function<void()>& f) {
    try { f(); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

static void put32(std::string& out, uint32_t x) {
    for (int i = 0; i < 4; i++) out += (char)(x >> (8 * i) & 0xff);
}

// The bytes of a vocab.bin holding pieces (ids in order) with the given end-of-text id.
static std::string vocab_bytes(const std::vector<std::string>& pieces, int eot) {
    std::string out(VOCAB_MAGIC, 8);
    put32(out, VOCAB_VERSION);
    put32(out, (uint32_t)pieces.size());
    put32(out, (uint32_t)eot);
    for (const std::string& p : pieces) { put32(out, (uint32_t)p.size()); out += p; }
    return out;
}

static std::string write_file(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
}

static std::vector<std::string> byte_pieces() {
    std::vector<std::string> pieces;
    for (int b = 0; b < 256; b++) pieces.push_back(std::string(1, (char)b));
    return pieces;
}

TEST_CASE("the byte vocabulary encodes each byte to its value and decodes exactly") {
    const Tokenizer tok(write_file(temp_dir() + "/vocab.bin", vocab_bytes(byte_pieces(), -1)));
    CHECK(tok.vocab_size() == 256);
    CHECK(tok.eot_id() == -1);
    const std::string text = "Grüße, 世界!\n\tend";
    const std::vector<int> ids = tok.encode(text);
    REQUIRE(ids.size() == text.size());
    for (size_t i = 0; i < text.size(); i++) CHECK(ids[i] == (unsigned char)text[i]);
    CHECK(tok.decode(ids) == text);
    const std::string raw("\0\xff\xc3 \x80", 5);  // a NUL and invalid UTF-8 round-trip as bytes
    CHECK(tok.decode(tok.encode(raw)) == raw);
    CHECK(tok.encode("").empty());
}

TEST_CASE("a BPE-like vocabulary encodes by greedy longest match and decodes exactly") {
    std::vector<std::string> pieces = byte_pieces();
    const int th = 256, the = 257, sp_the = 258, in = 259, ing = 260, eot = 261;
    for (const char* p : {"th", "the", " the", "in", "ing", "<|endoftext|>"}) pieces.push_back(p);
    pieces.push_back("th");  // a duplicate: encoding picks the lowest id
    const Tokenizer tok(write_file(temp_dir() + "/vocab.bin", vocab_bytes(pieces, eot)));
    CHECK(tok.vocab_size() == 263);
    CHECK(tok.eot_id() == eot);

    // "the" wins over "th"; " thing" has no " th" entry, so a lone space, then "th", "ing"
    CHECK(tok.encode("the thing") == std::vector<int>{the, ' ', th, ing});
    CHECK(tok.encode("in the inn") == std::vector<int>{in, sp_the, ' ', in, 'n'});
    CHECK(tok.decode({the, sp_the, eot, 'x'}) == "the the<|endoftext|>x");
    CHECK(tok.encode("a<|endoftext|>") == std::vector<int>{'a', eot});
    for (const std::string text : {"the thing is nothing", "ingthe  the", "Naïve café — thé"})
        CHECK(tok.decode(tok.encode(text)) == text);
    CHECK(error_of([&] { tok.decode({263}); }).find("outside the vocabulary") != std::string::npos);
}

TEST_CASE("encoding names the byte that no entry covers") {
    const Tokenizer tok(write_file(temp_dir() + "/vocab.bin", vocab_bytes({"a", "b", "ab"}, -1)));
    CHECK(tok.encode("abba") == std::vector<int>{2, 1, 0});
    const std::string e = error_of([&] { tok.encode("abc"); });
    CHECK(e.find("0x63") != std::string::npos);
    CHECK(e.find("offset 2") != std::string::npos);
}

TEST_CASE("the byte layout matches the Python writer") {
    // test/test_scripts.sh checks that scripts/vocab_format.py writes exactly these bytes for
    // the pieces "a", "bc", "" with end-of-text id 1
    const std::string golden =
        "MIXLNVOC" + std::string("\x01\0\0\0" "\x03\0\0\0" "\x01\0\0\0", 12) + std::string("\x01\0\0\0" "a", 5) +
        std::string("\x02\0\0\0" "bc", 6) + std::string("\0\0\0\0", 4);
    CHECK(golden == vocab_bytes({"a", "bc", ""}, 1));
    const Tokenizer tok(write_file(temp_dir() + "/golden.bin", golden));
    CHECK(tok.vocab_size() == 3);
    CHECK(tok.eot_id() == 1);
    CHECK(tok.piece(1) == "bc");
    CHECK(tok.piece(2).empty());
    CHECK(tok.encode("abca") == std::vector<int>{0, 1, 0});  // the empty entry never matches
}

TEST_CASE("bad vocabulary files give an error naming the file and the problem") {
    const std::string dir = temp_dir();
    const std::string good = vocab_bytes({"a", "bc", "def"}, 2);
    auto load = [](const std::string& path) { return error_of([path] { Tokenizer tok(path); }); };
    auto check = [&](const std::string& name, const std::string& bytes, const std::string& problem) {
        const std::string e = load(write_file(dir + "/" + name, bytes));
        CHECK(e.find(name) != std::string::npos);
        CHECK(e.find(problem) != std::string::npos);
    };
    const std::string missing = load(dir + "/missing.bin");
    CHECK(missing.find("missing.bin") != std::string::npos);
    CHECK(missing.find("cannot open") != std::string::npos);

    check("magic.bin", "MIXLNTOK" + good.substr(8), "bad magic");
    check("short.bin", good.substr(0, 12), "truncated");
    check("cut.bin", good.substr(0, good.size() - 2), "past the end");
    check("no_entry.bin", good.substr(0, good.size() - 7), "truncated");  // ends before the last length
    std::string long_entry = good;
    long_entry[20] = 100;  // entry 0 claims 100 bytes
    check("length.bin", long_entry, "past the end");
    check("empty.bin", vocab_bytes({}, -1), "bad vocab_size 0");
    std::string absurd = good;
    absurd[15] = 0x7f;  // vocab_size ~ 2^31
    check("absurd.bin", absurd, "bad vocab_size");
    check("eot.bin", vocab_bytes({"a"}, 1), "eot_id 1");
    check("stray.bin", good + "x", "stray bytes");
    std::string version = good;
    version[8] = 2;
    check("version.bin", version, "unsupported version 2");
    CHECK(load(write_file(dir + "/good.bin", good)) == "(no error)");
}
