// The test runners' main: runs Catch2 and ends with one line "NAME: N passed, M failed" counting
// test cases, which test/run_tests.sh adds up over all test binaries.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif
#include <cstdio>
#include <string>

static std::string g_runner_name = "tests";

#if __has_include(<catch2/catch_all.hpp>)
struct SummaryListener : Catch::EventListenerBase {
    using EventListenerBase::EventListenerBase;
#else
struct SummaryListener : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
#endif
    void testRunEnded(Catch::TestRunStats const& stats) override {
        const auto& cases = stats.totals.testCases;
        std::printf("%s: %llu passed, %llu failed\n", g_runner_name.c_str(),
                    (unsigned long long)cases.passed, (unsigned long long)(cases.failed + cases.failedButOk));
        std::fflush(stdout);
    }
};
CATCH_REGISTER_LISTENER(SummaryListener)

int main(int argc, char** argv) {
    std::string name = argv[0];
    g_runner_name = name.substr(name.find_last_of('/') + 1);
    return Catch::Session().run(argc, argv);
}
