// Kernel launches: what `kernel<<<grid, block, shared_bytes, stream>>>(args...)` becomes.
//
// cuda_to_cpp.py rewrites each launch into
//   ::emu::make_launcher("kernel", __FILE__, __LINE__, kernel, grid, block, shared_bytes, stream)(args...)
// The launch is checked at once, as the driver checks it (block and grid limits, __launch_bounds__,
// dynamic shared memory above 48 KB only after cudaFuncSetAttribute, at most 227 KB), and a bad one
// sets the error cudaGetLastError returns, without running. A good one is queued on its stream
// (stream.h), with copies of its arguments converted to the kernel's parameter types, as the GPU copies
// them at launch.
#pragma once
#include <cuda_runtime_api.h>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

struct LaunchSpec {
    const char* kernel;  // the launch's kernel expression, as written
    const char* file;
    int line;
    dim3 grid, block;
    size_t shared_bytes;
    std::function<void()> body;  // one thread's call of the kernel
};

// Checks spec as a launch would (cudaSuccess or the launch's error); on success queues it on stream.
cudaError_t launch(LaunchSpec spec, const void* kernel_address, cudaStream_t stream);
// Used by launch: run the kernel's first thread up to its kernel_entry (its __launch_bounds__), and
// run the whole grid.
int probe_launch_bounds(const LaunchSpec& spec);
void run_launch(const LaunchSpec& spec);

template <typename... Params>
struct Launcher {
    LaunchSpec spec;
    void (*kernel)(Params...);
    cudaStream_t stream;

    template <typename... Args>
    void operator()(Args&&... args) {
        static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
        std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
        auto k = kernel;
        spec.body = [k, values]() { std::apply(k, values); };
        launch(std::move(spec), (const void*)kernel, stream);
    }
};

template <typename... Params>
Launcher<Params...> make_launcher(const char* name, const char* file, int line, void (*kernel)(Params...), dim3 grid,
                                  dim3 block, size_t shared_bytes = 0, cudaStream_t stream = 0) {
    return Launcher<Params...>{LaunchSpec{name, file, line, grid, block, shared_bytes, {}}, kernel, stream};
}

// A kernel template launched without its template arguments: the rewriter wraps it in a generic
// lambda, which deduces them from the launch's arguments as nvcc does. (Such a kernel has no address
// for cudaFuncSetAttribute, in CUDA as here, so none is recorded.)
template <typename F>
struct GenericLauncher {
    LaunchSpec spec;
    F kernel;
    cudaStream_t stream;

    template <typename... Args>
    void operator()(Args&&... args) {
        std::tuple<std::decay_t<Args>...> values(std::forward<Args>(args)...);
        F k = kernel;
        spec.body = [k, values]() { std::apply(k, values); };
        launch(std::move(spec), nullptr, stream);
    }
};

template <typename F, typename = std::enable_if_t<std::is_class<F>::value>>
GenericLauncher<F> make_launcher(const char* name, const char* file, int line, F kernel, dim3 grid, dim3 block,
                                 size_t shared_bytes = 0, cudaStream_t stream = 0) {
    return GenericLauncher<F>{LaunchSpec{name, file, line, grid, block, shared_bytes, {}}, kernel, stream};
}

}  // namespace emu
