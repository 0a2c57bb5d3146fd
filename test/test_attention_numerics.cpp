// The attention checks (test/attention_checks.h) on the CPU emulation of the kernels' rounding
// (test/attention_emulation.h): they pass the emulated correct kernels with a margin of at least 3x and
// fail each planted bug. The shapes are a cheap subset of `make calibrate-attention`'s sweep (T up to
// 300: one tile, partial tiles, several tiles; every head size).
#include <string>
#include "catch_compat.h"
#include "attention_emulation.h"

using attention_emulation::round_bf16;

static std::string describe(const EmulatedErrors& e) {
    char s[256];
    snprintf(s, sizeof s, "out L2 %.2e elem %.2e, lse %.2e, dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e", e.out.l2,
             e.out.element, e.lse, e.dq.l2, e.dq.element, e.dk.l2, e.dk.element, e.dv.l2, e.dv.element);
    return s;
}

TEST_CASE("bf16 rounding of the emulation is round to nearest even") {
    CHECK(round_bf16(1.0f) == 1.0f);
    CHECK(round_bf16(1.0f + 0x1p-8f) == 1.0f);                  // a tie, to the even 1
    CHECK(round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);    // a tie, to the even 1 + 2^-6
    CHECK(round_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);
    CHECK(round_bf16(-1.0f - 0x1p-8f - 0x1p-20f) == -1.0f - 0x1p-7f);
    CHECK(round_bf16(3.4e38f) == INFINITY);  // past the largest bf16, 3.39e38
    CHECK(std::isnan(round_bf16(NAN)));
}

TEST_CASE("the attention checks pass the emulated kernels with a margin of at least 3x") {
    struct Case { int version; bool bf16; int T, hd; };
    std::vector<Case> cases;
    for (int T : {7, 64, 65, 130, 200, 300})
        for (int hd : {16, 32, 48, 64, 80, 128}) {
            cases.push_back({1, true, T, hd});
            if (T == 65 || T == 200) cases.push_back({1, false, T, hd});
        }
    for (int T : {128, 256})
        for (int hd : {64, 128})
            for (int version : {2, 3}) cases.push_back({version, true, T, hd});
    for (const Case& c : cases) {
        EmulatedKernel kernel;
        kernel.version = c.version;
        kernel.bf16 = c.bf16;
        const EmulatedErrors e = emulated_errors(kernel, AttentionReference(c.T, c.hd, 7 * c.T + c.hd, c.bf16));
        INFO("version " << c.version << (c.bf16 ? " bf16" : " fp32") << " T=" << c.T << " hd=" << c.hd << ": "
                        << describe(e));
        CHECK(e.excess(c.bf16 ? ATTENTION_BOUNDS_BF16 : ATTENTION_BOUNDS_FP32) <= 1.0 / 3);
    }
}

// Each bug must miss the bounds by 2x or more, not by a hair that a lucky draw could close.
TEST_CASE("the attention checks fail planted bugs by 2x or more") {
    const AttentionBug bugs[] = {AttentionBug::mask_off_by_one, AttentionBug::missing_scale, AttentionBug::wrong_lse,
                                 AttentionBug::dropped_partial_tile};
    const char* names[] = {"mask off by one at a tile edge", "1/sqrt(hd) missing", "lse with log2",
                           "last partial tile dropped"};
    // T = 200: three full tiles of 64 (six of 32 in fp32) and a partial one of 8.
    for (bool bf16 : {true, false})
        for (int hd : {32, 64, 128}) {
            const AttentionReference ref(200, hd, 11 + hd, bf16);
            for (int i = 0; i < 4; i++) {
                EmulatedKernel kernel;
                kernel.bf16 = bf16;
                kernel.bug = bugs[i];
                const EmulatedErrors e = emulated_errors(kernel, ref);
                INFO(names[i] << (bf16 ? ", bf16" : ", fp32") << " hd=" << hd << ": " << describe(e));
                CHECK(e.excess(bf16 ? ATTENTION_BOUNDS_BF16 : ATTENTION_BOUNDS_FP32) >= 2.0);
            }
        }
    // Versions 2 and 3 (T a multiple of 128): the bugs that do not need a partial tile.
    const AttentionReference ref(256, 64, 13, true);
    for (int version : {2, 3})
        for (int i = 0; i < 3; i++) {
            EmulatedKernel kernel;
            kernel.version = version;
            kernel.bug = bugs[i];
            const EmulatedErrors e = emulated_errors(kernel, ref);
            INFO(names[i] << ", version " << version << ": " << describe(e));
            CHECK(e.excess(ATTENTION_BOUNDS_BF16) >= 2.0);
        }
}
