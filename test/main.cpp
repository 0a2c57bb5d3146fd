// The CPU test runner's main: runs Catch2, ending with the summary line of summary_listener.h.
#include "summary_listener.h"

int main(int argc, char** argv) {
    set_runner_name(argv[0]);
    return Catch::Session().run(argc, argv);
}
