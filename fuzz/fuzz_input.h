// The fuzz targets' input as a file: the readers take paths, so each input is written to an in-memory
// file (memfd) and read through /proc/self/fd/N, with no disk traffic.
#pragma once
#include <sys/mman.h>
#include <unistd.h>
#include <cstdint>
#include <cstdlib>
#include <string>

inline std::string input_as_file(const uint8_t* data, size_t size) {
    static const int fd = memfd_create("fuzz_input", 0);
    if (fd < 0 || ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
    return "/proc/self/fd/" + std::to_string(fd);
}

// Every error must name the file it is about: a message without the path is a finding too.
inline void require_names(const std::string& message, const std::string& path) {
    if (message.find(path) == std::string::npos) abort();
}
