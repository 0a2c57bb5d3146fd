// Run directories: -o DIR belongs to one run. A run has a random 63-bit id, written into every
// checkpoint it saves (header slot 28) and, with the flags that shape its training, into DIR/run.txt:
//   run_id 8571962287264392513
//   -i data/kjv/train.bin
//   -l 0.005
//   ... (one "flag value" line each for -i -j -l -x -u -q -w -g)
// A new run refuses a directory holding another run's files (checkpoints, run.txt, log.csv,
// grad_norms.csv) unless -W 1 tells it to delete them; a resumed run (-r) refuses flags that differ
// from its run.txt unless -U 1 says the change is meant; pruning and the NaN stop look only at the
// run's own checkpoints. (-b -t -d -s and the model are checked against the checkpoint itself.)
#pragma once
#include <sys/stat.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>
#include "checkpoint.h"
#include "cli.h"

constexpr const char* RUN_RECORD_FILE = "run.txt";
const char* const RUN_LOG_FILES[] = {"log.csv", "grad_norms.csv"};

struct RunRecord {
    uint64_t run_id = 0;
    std::vector<std::pair<std::string, std::string>> flags;  // ("-l", "0.005"), in a fixed order
};

inline uint64_t new_run_id() {
    std::random_device rd;
    uint64_t id = 0;
    while (id == 0) id = (((uint64_t)rd() << 32) ^ rd()) & 0x7FFFFFFFFFFFFFFFull;  // 0 means "unknown"
    return id;
}

// The shortest of %.15g and %.17g that reads back as exactly x.
inline std::string exact(double x) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.15g", x);
    if (strtod(buf, nullptr) != x) snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
}

inline RunRecord make_run_record(uint64_t run_id, const TrainOptions& o) {
    return RunRecord{run_id, {{"-i", o.train_files}, {"-j", o.val_files}, {"-l", exact(o.lr)}, {"-x", std::to_string(o.steps)},
                              {"-u", exact(o.warmup)}, {"-q", exact(o.final_lr_fraction)},
                              {"-w", exact(o.weight_decay)}, {"-g", exact(o.grad_clip)}}};
}

inline std::string run_record_path(const std::string& dir) { return dir + "/" + RUN_RECORD_FILE; }

inline void write_run_record(const std::string& dir, const RunRecord& r) {
    std::string text = "run_id " + std::to_string(r.run_id) + "\n";
    for (const auto& f : r.flags) {
        if (f.second.find('\n') != std::string::npos) throw std::runtime_error(f.first + ": a newline in the value");
        text += f.first + " " + f.second + "\n";
    }
    write_file_atomically(run_record_path(dir), [&](FILE* f) { return fwrite(text.data(), 1, text.size(), f) == text.size(); });
}

// The record in dir; run_id 0 if there is none. Throws on a file it cannot parse.
inline RunRecord read_run_record(const std::string& dir) {
    RunRecord r;
    std::ifstream in(run_record_path(dir));
    if (!in) return r;
    std::string line;
    while (std::getline(in, line)) {
        const size_t space = line.find(' ');
        const std::string key = line.substr(0, space), value = space == std::string::npos ? "" : line.substr(space + 1);
        if (key == "run_id") r.run_id = strtoull(value.c_str(), nullptr, 10);
        else if (key.size() == 2 && key[0] == '-') r.flags.emplace_back(key, value);
        else if (!line.empty()) throw std::runtime_error("'" + run_record_path(dir) + "': cannot parse the line '" + line + "'");
    }
    if (r.run_id == 0) throw std::runtime_error("'" + run_record_path(dir) + "': no run_id line");
    return r;
}

// "-l 0.005 -> 0.01, -x 100 -> 200" for each recorded flag whose value differs; "" if none does.
inline std::string run_flag_changes(const RunRecord& recorded, const RunRecord& now) {
    std::string changes;
    for (const auto& f : now.flags)
        for (const auto& g : recorded.flags)
            if (f.first == g.first && f.second != g.second)
                changes += (changes.empty() ? "" : ", ") + f.first + " '" + g.second + "' -> '" + f.second + "'";
    return changes;
}

inline bool file_exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

inline bool same_directory(const std::string& a, const std::string& b) {
    struct stat sa, sb;
    return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

inline std::string directory_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

// What in dir belongs to a run other than the one whose ids are given (a checkpoint written by
// another run, a run.txt of another run, logs with no run.txt unless logs_are_ours), as a phrase for
// an error message; "" if nothing does.
inline std::string other_run_in(const std::string& dir, const std::vector<uint64_t>& ids, bool logs_are_ours) {
    auto ours = [&](uint64_t id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); };
    std::vector<std::string> found;
    int checkpoints = 0;
    std::string last;
    for (const std::string& path : list_checkpoints(dir, /*complete_only=*/false))
        if (!ours(checkpoint_run_id(path))) { checkpoints++; last = path; }
    if (checkpoints) found.push_back(std::to_string(checkpoints) + " checkpoint(s) up to " + last);
    const RunRecord recorded = read_run_record(dir);
    if (recorded.run_id != 0 && !ours(recorded.run_id)) found.push_back(std::string(RUN_RECORD_FILE) + " of run " + std::to_string(recorded.run_id));
    if (recorded.run_id == 0 && !logs_are_ours)
        for (const char* log : RUN_LOG_FILES)
            if (file_exists(dir + "/" + log)) found.push_back(log);
    std::string text;
    for (const std::string& f : found) text += (text.empty() ? "" : ", ") + f;
    return text;
}

// Deletes a previous run's files from dir (-W 1): its checkpoints with their optimizer shard files,
// run.txt and the logs. Other files stay.
inline void remove_run_files(const std::string& dir) {
    for (const std::string& path : list_checkpoints(dir, /*complete_only=*/false)) remove_checkpoint(path);
    unlink(run_record_path(dir).c_str());
    for (const char* log : RUN_LOG_FILES) unlink((dir + "/" + log).c_str());
}
