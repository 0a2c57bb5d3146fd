// Calibration of the attention checks (test/attention_checks.h): the CPU emulation of each kernel
// version's rounding (test/attention_emulation.h) against the double reference, over T = 7 ... 4096
// and head sizes 16, 32, 48, 64, 80, 128, one random head per shape (two up to T = 1024). Prints each
// metric per shape, then the worst case of each metric and its margin under the bound. CPU only:
//   make calibrate-attention            (build/calibrate_attention; ~4 CPU-minutes)
//   build/calibrate_attention 1024      (only shapes with T <= 1024)
#include <cstdio>
#include <cstdlib>
#include <string>
#include "../test/attention_emulation.h"

struct Worst {
    EmulatedErrors e;
    int cases = 0;
    void add(const EmulatedErrors& x) {
        cases++;
        auto up = [](AttentionError& a, const AttentionError& b) {
            a.l2 = std::max(a.l2, b.l2);
            a.element = std::max(a.element, b.element);
        };
        up(e.out, x.out); up(e.dq, x.dq); up(e.dk, x.dk); up(e.dv, x.dv);
        e.lse = std::max(e.lse, x.lse);
    }
};

static void print_row(const char* what, int T, int hd, const EmulatedErrors& e) {
    const AttentionError g = e.grad();
    printf("%-22s %5d %4d | %9.2e %9.2e | %9.2e | %9.2e %9.2e\n", what, T, hd, e.out.l2, e.out.element, e.lse, g.l2,
           g.element);
    fflush(stdout);
}

static void print_margins(const char* what, const Worst& w, const AttentionBounds& b) {
    if (!w.cases) return;
    const AttentionError g = w.e.grad();
    printf("%-22s worst     | %9.2e %9.2e | %9.2e | %9.2e %9.2e\n", what, w.e.out.l2, w.e.out.element, w.e.lse, g.l2,
           g.element);
    printf("%-22s bound     | %9.2e %9.2e | %9.2e | %9.2e %9.2e\n", "", b.out_l2, b.out_element, b.lse, b.grad_l2,
           b.grad_element);
    printf("%-22s margin    | %9.1f %9.1f | %9.1f | %9.1f %9.1f\n", "", b.out_l2 / w.e.out.l2,
           b.out_element / w.e.out.element, b.lse / w.e.lse, b.grad_l2 / g.l2, b.grad_element / g.element);
}

int main(int argc, char** argv) {
    const int max_T = argc > 1 ? atoi(argv[1]) : 4096;
    if (argc > 2 || max_T < 1) {
        fprintf(stderr, "usage: %s [max_T]   (default 4096)\n", argv[0]);
        return 2;
    }
    printf("%-22s %5s %4s | %9s %9s | %9s | %9s %9s\n", "kernel", "T", "hd", "out L2", "out elem", "lse abs",
           "grad L2", "grad elem");
    Worst bf16[3], fp32[2];
    for (int T : {7, 64, 65, 128, 130, 200, 256, 300, 1024, 4096}) {
        if (T > max_T) continue;
        for (int hd : {16, 32, 48, 64, 80, 128}) {
            for (int head = 0; head < (T <= 1024 ? 2 : 1); head++) {
                const uint64_t seed = 1000 * T + 10 * hd + head;
                const AttentionReference ref(T, hd, seed, true);
                for (int version = 1; version <= 3; version++) {
                    if (version == 3 && hd != 64 && hd != 128) continue;  // dev/attention.cu's version 3 shapes
                    EmulatedKernel kernel;
                    kernel.version = version;
                    const EmulatedErrors e = emulated_errors(kernel, ref);
                    bf16[version - 1].add(e);
                    print_row(("bf16 v" + std::to_string(version)).c_str(), T, hd, e);
                }
                const AttentionReference ref32(T, hd, seed, false);
                for (int version = 1; version <= 2; version++) {  // the fp32 builds of versions 1 and 2
                    EmulatedKernel kernel;
                    kernel.version = version;
                    kernel.bf16 = false;
                    const EmulatedErrors e = emulated_errors(kernel, ref32);
                    fp32[version - 1].add(e);
                    print_row(("fp32 v" + std::to_string(version)).c_str(), T, hd, e);
                }
            }
        }
    }
    printf("\n");
    for (int version = 1; version <= 3; version++)
        print_margins(("bf16 v" + std::to_string(version)).c_str(), bf16[version - 1], ATTENTION_BOUNDS_BF16);
    for (int version = 1; version <= 2; version++)
        print_margins(("fp32 v" + std::to_string(version)).c_str(), fp32[version - 1], ATTENTION_BOUNDS_FP32);
    return 0;
}
