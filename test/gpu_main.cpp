// The GPU test runner's main. On a machine without a usable CUDA device (no GPU, or no driver) it runs
// nothing and reports every test case as skipped, so `make test` passes wherever the tests build;
// with a device it runs Catch2 like test/main.cpp. Compiled by the host compiler (no device code).
#include <cuda_runtime_api.h>
#include "summary_listener.h"

int main(int argc, char** argv) {
    set_runner_name(argv[0]);
    int devices = 0;
    const cudaError_t error = cudaGetDeviceCount(&devices);
    if (error != cudaSuccess || devices == 0) {
        const size_t cases = Catch::getRegistryHub().getTestCaseRegistry().getAllTests().size();
        std::printf("%s: no CUDA device (%s); skipping %zu GPU test cases\n", g_runner_name.c_str(),
                    error != cudaSuccess ? cudaGetErrorString(error) : "device count is 0", cases);
        print_summary(0, 0, cases);
        return 0;
    }
    return Catch::Session().run(argc, argv);
}
