// The test runners' closing line "NAME: N passed, M failed", counting test cases, which
// test/run_tests.sh adds up over all test binaries. Shared by the two mains, test/main.cpp (CPU tests)
// and test/gpu_main.cpp (GPU tests); include it only in the translation unit that defines main.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#define CATCH_CONFIG_RUNNER  // Catch2 v2: this translation unit holds Catch's implementation, not its main
#include <catch2/catch.hpp>
#endif
#include <cstdio>
#include <string>

// The binary's file name, set by set_runner_name(argv[0]) at the start of main.
inline std::string g_runner_name = "tests";
inline void set_runner_name(const char* argv0) {
    const std::string path = argv0;
    g_runner_name = path.substr(path.find_last_of('/') + 1);
}

// ", K skipped" is added only when skipped > 0.
inline void print_summary(unsigned long long passed, unsigned long long failed, unsigned long long skipped = 0) {
    std::printf("%s: %llu passed, %llu failed", g_runner_name.c_str(), passed, failed);
    if (skipped > 0) std::printf(", %llu skipped", skipped);
    std::printf("\n");
    std::fflush(stdout);
}

#if __has_include(<catch2/catch_all.hpp>)
struct SummaryListener : Catch::EventListenerBase {
    using EventListenerBase::EventListenerBase;
#else
struct SummaryListener : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
#endif
    void testRunEnded(Catch::TestRunStats const& stats) override {
        const auto& cases = stats.totals.testCases;
        print_summary(cases.passed, cases.failed + cases.failedButOk);
    }
};
CATCH_REGISTER_LISTENER(SummaryListener)
