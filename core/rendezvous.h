// Rendezvous: rank 0 hands a small blob (NCCL's 128-byte unique id) to every other rank before NCCL
// exists, either through a file on a filesystem all ranks share or over TCP to rank 0. Plain POSIX,
// so it is tested on the CPU with processes standing in for ranks.
//
//   MIXLN_RENDEZVOUS=file:PATH    rank 0 writes PATH (write-then-rename); the others wait for it.
//                                 PATH must be new for every run (put the job id in it).
//   MIXLN_RENDEZVOUS=tcp:HOST:PORT  rank 0 listens on PORT; the others connect to HOST:PORT.
//   unset: tcp:$MASTER_ADDR:$((MASTER_PORT + 1)) (torchrun sets both; so can a Slurm script). Not
//   MASTER_PORT itself: under torchrun, its agent's rendezvous store already listens there.
#pragma once
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using Blob = std::vector<unsigned char>;

namespace rendezvous_detail {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::runtime_error error(int rank, const std::string& what) {
    return std::runtime_error("rank " + std::to_string(rank) + ": rendezvous: " + what);
}

// send/recv until all n bytes are through; false on a closed or failed socket.
inline bool send_all(int fd, const unsigned char* p, size_t n) {
    while (n > 0) {
        const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        p += k; n -= (size_t)k;
    }
    return true;
}
inline bool recv_all(int fd, unsigned char* p, size_t n) {
    while (n > 0) {
        const ssize_t k = recv(fd, p, n, 0);
        if (k <= 0) return false;
        p += k; n -= (size_t)k;
    }
    return true;
}

}  // namespace rendezvous_detail

// Rank 0 writes `blob` to path; the other ranks wait up to timeout_s for the file and read n bytes.
inline Blob share_via_file(const std::string& path, int rank, const Blob& blob, size_t n, double timeout_s) {
    using namespace rendezvous_detail;
    if (rank == 0) {
        const std::string tmp = path + ".tmp";
        FILE* f = fopen(tmp.c_str(), "wb");
        if (!f) throw error(rank, "cannot write '" + tmp + "': " + strerror(errno));
        const bool ok = fwrite(blob.data(), 1, blob.size(), f) == blob.size();
        if (fclose(f) != 0 || !ok || rename(tmp.c_str(), path.c_str()) != 0)
            throw error(rank, "cannot write '" + path + "': " + strerror(errno));
        return blob;
    }
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
        if (FILE* f = fopen(path.c_str(), "rb")) {  // rename makes it appear whole
            Blob got(n);
            const size_t k = fread(got.data(), 1, n, f);
            fclose(f);
            if (k != n) throw error(rank, "'" + path + "' holds " + std::to_string(k) + " bytes, not " + std::to_string(n));
            return got;
        }
        if (seconds_since(t0) > timeout_s)
            throw error(rank, "rank 0 did not write '" + path + "' within " + std::to_string((int)timeout_s) + " s");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// Rank 0 listens on port and sends `blob` to each of the world_size - 1 ranks that connect; the others
// connect to host:port, retrying until timeout_s, and receive n bytes.
inline Blob share_via_tcp(const std::string& host, int port, int rank, int world_size, const Blob& blob, size_t n,
                          double timeout_s) {
    using namespace rendezvous_detail;
    const auto t0 = std::chrono::steady_clock::now();
    if (rank == 0) {
        const int server = socket(AF_INET, SOCK_STREAM, 0);
        if (server < 0) throw error(rank, std::string("socket: ") + strerror(errno));
        const int one = 1;
        setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_ANY);
        addr.sin_port = htons((uint16_t)port);
        if (bind(server, (sockaddr*)&addr, sizeof(addr)) != 0 || listen(server, world_size) != 0) {
            const std::string why = strerror(errno);
            close(server);
            throw error(rank, "cannot listen on port " + std::to_string(port) + ": " + why);
        }
        for (int served = 1; served < world_size; served++) {
            timeval tv{(long)timeout_s, 0};  // accept gives up after timeout_s without a connection
            setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            const int client = accept(server, nullptr, nullptr);
            if (client < 0) {
                close(server);
                throw error(rank, "only " + std::to_string(served - 1) + " of " + std::to_string(world_size - 1) +
                                  " ranks connected to port " + std::to_string(port));
            }
            const bool ok = send_all(client, blob.data(), blob.size());
            close(client);
            if (!ok) { close(server); throw error(rank, "sending to a rank failed"); }
        }
        close(server);
        return blob;
    }
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
        throw error(rank, "cannot resolve host '" + host + "'");
    while (true) {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
            Blob got(n);
            const bool ok = recv_all(fd, got.data(), n);
            close(fd);
            freeaddrinfo(res);
            if (!ok) throw error(rank, "rank 0 closed the connection before sending " + std::to_string(n) + " bytes");
            return got;
        }
        if (fd >= 0) close(fd);
        if (seconds_since(t0) > timeout_s) {
            freeaddrinfo(res);
            throw error(rank, "could not connect to rank 0 at " + host + ":" + std::to_string(port) + " within " +
                              std::to_string((int)timeout_s) + " s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

// Chooses the method from MIXLN_RENDEZVOUS, else MASTER_ADDR / MASTER_PORT (see the top of the file).
inline Blob share_from_rank0(int rank, int world_size, const Blob& blob, size_t n, double timeout_s = 300) {
    if (world_size == 1) return blob;
    std::string spec = getenv("MIXLN_RENDEZVOUS") ? getenv("MIXLN_RENDEZVOUS") : "";
    if (spec.empty() && getenv("MASTER_ADDR") && getenv("MASTER_PORT"))
        spec = std::string("tcp:") + getenv("MASTER_ADDR") + ":" + std::to_string(atoi(getenv("MASTER_PORT")) + 1);
    if (spec.rfind("file:", 0) == 0) return share_via_file(spec.substr(5), rank, blob, n, timeout_s);
    if (spec.rfind("tcp:", 0) == 0) {
        const size_t colon = spec.rfind(':');
        const int port = atoi(spec.c_str() + colon + 1);
        if (colon <= 4 || port <= 0 || port > 65535) throw rendezvous_detail::error(rank, "bad tcp address '" + spec + "' (tcp:HOST:PORT)");
        return share_via_tcp(spec.substr(4, colon - 4), port, rank, world_size, blob, n, timeout_s);
    }
    throw rendezvous_detail::error(rank, "with " + std::to_string(world_size) +
                                         " ranks, set MIXLN_RENDEZVOUS=file:PATH or tcp:HOST:PORT (or MASTER_ADDR and MASTER_PORT)");
}
