// The NCCL-id rendezvous with processes standing in for ranks: through a shared file and over TCP on
// loopback, ranks starting before rank 0, and clear errors naming the rank when it cannot work.
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>
#include "catch_compat.h"
#include "../core/rendezvous.h"
#include "../core/rng.h"

static Blob random_blob(size_t n, uint64_t seed) {
    Rng rng(seed);
    Blob b(n);
    for (unsigned char& c : b) c = (unsigned char)rng.below(256);
    return b;
}

// A free TCP port on loopback (the kernel picks it; it stays free for the test in practice).
static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (sockaddr*)&addr, sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fd, (sockaddr*)&addr, &len);
    close(fd);
    return ntohs(addr.sin_port);
}

// Runs world_size processes; rank 0 starts last. Each exits 0 if it ended with rank 0's blob.
static int run_ranks(int world_size, const std::string& spec) {
    const Blob blob = random_blob(128, 77);
    std::vector<pid_t> pids;
    for (int rank = world_size - 1; rank >= 0; rank--) {
        if (rank == 0) std::this_thread::sleep_for(std::chrono::milliseconds(150));
        const pid_t pid = fork();
        if (pid == 0) {
            setenv("MIXLN_RENDEZVOUS", spec.c_str(), 1);
            try {
                const Blob got = share_from_rank0(rank, world_size, rank == 0 ? blob : Blob(), 128, 20);
                _exit(got == blob ? 0 : 1);
            } catch (const std::exception& e) {
                fprintf(stderr, "%s\n", e.what());
                _exit(2);
            }
        }
        pids.push_back(pid);
    }
    int failures = 0;
    for (pid_t pid : pids) {
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failures++;
    }
    return failures;
}

TEST_CASE("rank 0's id reaches every rank through a shared file") {
    char tmpl[] = "/tmp/mixln_rdv_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    CHECK(run_ranks(5, "file:" + dir + "/nccl_id") == 0);
}

TEST_CASE("rank 0's id reaches every rank over TCP") {
    CHECK(run_ranks(5, "tcp:127.0.0.1:" + std::to_string(free_port())) == 0);
}

TEST_CASE("a rendezvous that cannot complete fails with a message naming the rank") {
    auto error_of = [](const std::function<void()>& f) {
        try { f(); } catch (const std::exception& e) { return std::string(e.what()); }
        return std::string("(no error)");
    };
    unsetenv("MIXLN_RENDEZVOUS"); unsetenv("MASTER_ADDR"); unsetenv("MASTER_PORT");
    const std::string none = error_of([] { share_from_rank0(1, 2, Blob(), 128); });
    CHECK(none.find("rank 1: rendezvous") == 0);
    CHECK(none.find("MIXLN_RENDEZVOUS") != std::string::npos);
    const std::string tcp = error_of([] { share_via_tcp("127.0.0.1", free_port(), 3, 4, Blob(), 128, 0.3); });
    CHECK(tcp.find("rank 3: rendezvous: could not connect to rank 0") == 0);
    const std::string file = error_of([] { share_via_file("/tmp/mixln_no_such_dir/id", 2, Blob(), 128, 0.2); });
    CHECK(file.find("rank 2: rendezvous: rank 0 did not write") == 0);
    setenv("MIXLN_RENDEZVOUS", "tcp:localhost", 1);
    CHECK(error_of([] { share_from_rank0(1, 2, Blob(), 128); }).find("bad tcp address") != std::string::npos);
    unsetenv("MIXLN_RENDEZVOUS");
    CHECK(share_from_rank0(0, 1, random_blob(4, 1), 4) == random_blob(4, 1));  // one rank: nothing to share
}

TEST_CASE("without MIXLN_RENDEZVOUS, the port after torchrun's MASTER_PORT is used") {
    const int port = free_port();
    unsetenv("MIXLN_RENDEZVOUS");
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", std::to_string(port - 1).c_str(), 1);
    std::string error;
    try { share_from_rank0(1, 2, Blob(), 128, 0.2); } catch (const std::exception& e) { error = e.what(); }
    CHECK(error.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
    unsetenv("MASTER_ADDR"); unsetenv("MASTER_PORT");
}
