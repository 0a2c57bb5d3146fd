// The command line and the CPU trainer as a user runs it: bad flags, kill -9 and resume
// bit-identically, SIGTERM saving a checkpoint, a diverging run stopping on a NaN loss, and (the
// driver in this process, with planted gradients) a non-finite gradient norm skipping the update.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <fcntl.h>
#include <cstdint>
#include <map>
#include "catch_compat.h"
#include "../core/backend_cpu.h"
#include "../core/checkpoint.h"
#include "../core/cli.h"
#include "../dataloader.h"

static std::string parse_error(std::vector<std::string> args) {
    args.insert(args.begin(), "train");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    try { parse_train_options((int)argv.size(), argv.data()); } catch (const std::exception& e) { return e.what(); }
    return "(no error)";
}

TEST_CASE("bad flags give an error naming the flag") {
    CHECK(parse_error({"-i", "x", "-a", "1.5"}).find("-a") == 0);
    CHECK(parse_error({"-i", "x", "-a", "half"}).find("not a number") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-b", "0"}).find("-b") == 0);
    CHECK(parse_error({"-i", "x", "-x", "1.5"}).find("integer") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-e", "7b"}).find("unknown preset") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-n", "layernorm"}).find("unknown normalization") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-Q", "1"}).find("unknown flag -Q") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-Z", "2"}).find("-Z: '2' is outside [0, 1]") == 0);
    CHECK(parse_error({"-i", "x", "-D", "2"}).find("-D: '2' is outside [0, 1]") == 0);
    CHECK(parse_error({"-i", "x", "-b", "3", "-t", "100", "-d", "1000"}).find("not a multiple") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-C", "100", "-H", "3"}).find("heads") != std::string::npos);
    CHECK(parse_error({"-a", "0.5"}).find("no training shards") != std::string::npos);
    CHECK(parse_error({"-i"}).find("needs a value") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-l", "-1"}).find("-l") == 0);
    CHECK(parse_error({"-i", "x", "-r", "a", "-f", "b"}).find("exclude") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-e", "1b"}) == "(no error)");
}

TEST_CASE("integer flags are parsed strictly: no fraction, wrap-around or overflow") {
    CHECK(parse_error({"-i", "x", "-x", "3e9"}) == "-x: '3e9' is outside [0, 2147483647]");  // trained 2000 steps
    CHECK(parse_error({"-i", "x", "-x", "4294967297"}) == "-x: '4294967297' is outside [0, 2147483647]");  // ran 1 step
    CHECK(parse_error({"-i", "x", "-b", "4294967300"}) == "-b: '4294967300' is outside [1, 2147483647]");  // used 4
    CHECK(parse_error({"-i", "x", "-x", "99999999999999999999999"}).find("is outside") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-x", "2.5e0"}).find("must be an integer") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-S", "2"}) == "-S: '2' is outside [0, 1]");
    CHECK(parse_error({"-i", "x", "-v", "-1"}) == "-v: '-1' is outside [0, 2147483647]");
    CHECK(parse_error({"-i", "x", "-x", "1e3"}) == "(no error)");  // exponent notation of an integer is fine
    // -d 9e15 printed "4 x 32 x -409602816 accumulation steps" and trained nothing
    CHECK(parse_error({"-i", "x", "-b", "4", "-t", "32", "-d", "9e15"}) ==
          "-d 9000000000000000 asks for 70312500000000 accumulation steps of -b x -t = 128 tokens; at most 2147483647");
}

TEST_CASE("an empty or root output directory is refused; -x 0 must evaluate or sample") {
    CHECK(parse_error({"-i", "x", "-o", ""}).find("-o: '' is not a usable output directory (empty)") == 0);
    CHECK(parse_error({"-i", "x", "-o", "/"}).find("(the root)") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-o", "//"}).find("(the root)") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-o", "out/"}) == "(no error)");
    CHECK(parse_error({"-x", "0", "-f", "c"}).find("-x 0 trains nothing") == 0);
    CHECK(parse_error({"-x", "0", "-f", "c", "-j", "v"}) == "(no error)");
    CHECK(parse_error({"-i", "x", "-W", "1", "-r", "out"}).find("-W 1 starts a new run") == 0);
}

TEST_CASE("presets set the paper's sizes, learning rates and steps") {
    std::vector<std::string> args = {"train", "-i", "x", "-e", "1b", "-L", "6"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    const TrainOptions o = parse_train_options((int)argv.size(), argv.data());
    CHECK(o.model.d_model == 2048);
    CHECK(o.model.n_head == 32);
    CHECK(o.model.d_ffn == 5461);
    CHECK(o.model.n_layer == 6);  // -L overrides the preset, whatever the order
    CHECK(o.lr == Approx(5e-4));
    CHECK(o.steps == 100000);
    CHECK(o.total_batch == 131072);
}

// ---- running the trainer binary ----

static const char* trainer_path() {
    const char* p = getenv("MIXLN_CPU_TRAINER");
    return p ? p : "./train_mixln_cpu";
}

static std::string temp_dir() {
    char tmpl[] = "/tmp/mixln_train_XXXXXX";
    return mkdtemp(tmpl);
}

// Runs args with its output in log_path, which the next failing assertion names.
static pid_t spawn(const std::vector<std::string>& args, const std::string& log_path) {
    UNSCOPED_INFO("trainer log: " << log_path);
    const pid_t pid = fork();
    if (pid == 0) {
        FILE* f = fopen(log_path.c_str(), "w");
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
        std::vector<char*> argv;
        for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

static int last_logged_step(const std::string& csv) {
    std::istringstream in(read_file(csv));
    std::string line;
    int last = 0;
    while (std::getline(in, line))
        if (line.find(",train,") != std::string::npos) last = std::atoi(line.c_str());
    return last;
}

// A small corpus with structure to learn: a noisy repeating pattern over 64 ids.
static std::string make_corpus(const std::string& dir) {
    Rng rng(5);
    std::vector<int> tokens(20000);
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = rng.uniform() < 0.8 ? (int)(i * 7 % 64) : (int)rng.below(64);
    write_shard(dir + "/train.bin", tokens.data(), tokens.size(), 64);
    write_shard(dir + "/val.bin", tokens.data(), 3000, 64);
    return dir + "/train.bin";
}

static std::vector<std::string> tiny_run(const std::string& data, const std::string& out, int steps) {
    return {trainer_path(), "-e", "tiny", "-L", "3", "-C", "32", "-H", "2", "-F", "48", "-a", "0.34", "-i", data,
            "-b", "4", "-t", "16", "-d", "128", "-x", std::to_string(steps), "-c", "3", "-k", "2", "-l", "1e-2",
            "-o", out};
}

TEST_CASE("the trainer rejects a bad flag and missing data with exit code and message") {
    const std::string dir = temp_dir();
    CHECK(wait_exit(spawn({trainer_path(), "-i", "x", "-a", "2"}, dir + "/a.txt")) == 2);
    CHECK(read_file(dir + "/a.txt").find("-a: 2 is outside") != std::string::npos);
    CHECK(wait_exit(spawn({trainer_path(), "-e", "tiny", "-i", dir + "/none.bin"}, dir + "/b.txt")) == 1);
    CHECK(read_file(dir + "/b.txt").find("none.bin") != std::string::npos);
    CHECK(wait_exit(spawn({trainer_path(), "-i", "x", "-R", "1"}, dir + "/c.txt")) == 2);
    CHECK(read_file(dir + "/c.txt").find("-R: only train_mixln") != std::string::npos);
    CHECK(wait_exit(spawn({trainer_path(), "-i", "x", "-Z", "0"}, dir + "/d.txt")) == 2);
    CHECK(read_file(dir + "/d.txt").find("-Z: only train_mixln") != std::string::npos);
    CHECK(wait_exit(spawn({trainer_path(), "-i", "x", "-D", "0"}, dir + "/e.txt")) == 2);
    CHECK(read_file(dir + "/e.txt").find("-D: only train_mixln") != std::string::npos);
}

TEST_CASE("a run killed with SIGKILL resumes from its checkpoint bit-identically") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    REQUIRE(wait_exit(spawn(tiny_run(data, dir + "/whole", 12), dir + "/whole.txt")) == 0);
    const std::string expected = read_file(dir + "/whole/log.csv");
    REQUIRE(last_logged_step(dir + "/whole/log.csv") == 12);

    // the same run, killed once it has logged step 7 (its newest checkpoint is step 6)
    const pid_t pid = spawn(tiny_run(data, dir + "/killed", 12), dir + "/killed.txt");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (last_logged_step(dir + "/killed/log.csv") < 7 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    kill(pid, SIGKILL);
    CHECK(wait_exit(pid) == 128 + SIGKILL);
    const int died_at = last_logged_step(dir + "/killed/log.csv");
    INFO("killed after step " << died_at);
    REQUIRE(died_at >= 7);
    REQUIRE(died_at < 12);

    std::vector<std::string> resume = tiny_run(data, dir + "/killed", 12);
    resume.push_back("-r");
    resume.push_back(dir + "/killed");
    REQUIRE(wait_exit(spawn(resume, dir + "/resumed.txt")) == 0);
    CHECK(read_file(dir + "/resumed.txt").find("resuming at step") != std::string::npos);
    CHECK(read_file(dir + "/killed/log.csv") == expected);  // every loss, lr and grad norm, to 9 digits
}

TEST_CASE("SIGTERM saves a checkpoint before exiting, and the run resumes from it") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    std::vector<std::string> args = tiny_run(data, dir + "/run", 100000);
    const pid_t pid = spawn(args, dir + "/run.txt");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (last_logged_step(dir + "/run/log.csv") < 4 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    kill(pid, SIGTERM);
    CHECK(wait_exit(pid) == 130);
    const std::string out = read_file(dir + "/run.txt");
    CHECK(out.find("stopped by signal") != std::string::npos);
    const int stopped = last_logged_step(dir + "/run/log.csv");
    CHECK(list_checkpoints(dir + "/run").back() == checkpoint_path(dir + "/run", stopped));
    args.push_back("-r");
    args.push_back(dir + "/run");
    for (size_t i = 0; i + 1 < args.size(); i++) if (args[i] == "-x") args[i + 1] = std::to_string(stopped + 2);
    args.insert(args.end(), {"-U", "1"});  // a shorter run than the one begun: a change that is meant
    CHECK(wait_exit(spawn(args, dir + "/resume.txt")) == 0);
    CHECK(last_logged_step(dir + "/run/log.csv") == stopped + 2);
}

TEST_CASE("a diverging run stops on a non-finite loss and keeps its last good checkpoint") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    std::vector<std::string> args = tiny_run(data, dir + "/nan", 50);
    for (size_t i = 0; i + 1 < args.size(); i++) if (args[i] == "-l") args[i + 1] = "1e30";
    CHECK(wait_exit(spawn(args, dir + "/nan.txt")) == 3);
    const std::string out = read_file(dir + "/nan.txt");
    CHECK(out.find("error: the loss is") != std::string::npos);
    CHECK(out.find("stopping without saving") != std::string::npos);
    for (const std::string& path : list_checkpoints(dir + "/nan"))
        for (float p : load_checkpoint(path).params) REQUIRE(std::isfinite(p));
}

TEST_CASE("-y logs per-layer gradient norms; the analysis tool writes its three tables") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    std::vector<std::string> args = tiny_run(data, dir + "/y", 4);
    args.insert(args.end(), {"-y", "2"});
    REQUIRE(wait_exit(spawn(args, dir + "/y.txt")) == 0);
    std::istringstream csv(read_file(dir + "/y/grad_norms.csv"));
    std::string line;
    std::vector<std::string> rows;
    while (std::getline(csv, line)) rows.push_back(line);
    REQUIRE(rows.size() == 1 + 2 * 3);  // header, steps 2 and 4 x 3 layers
    CHECK(rows[0] == "step,layer,post_ln,attention,mlp,total");
    CHECK(rows[1].rfind("2,0,1,", 0) == 0);  // alpha 0.34 of 3 layers: layer 0 is Post-LN
    CHECK(rows[6].rfind("4,2,0,", 0) == 0);

    const char* analyzer = getenv("MIXLN_CPU_ANALYZER") ? getenv("MIXLN_CPU_ANALYZER") : "./analyze_mixln_cpu";
    std::vector<std::string> a = {analyzer, "-f", dir + "/y", "-i", data, "-b", "4", "-t", "16", "-d", "64", "-m", "2", "-o", dir + "/an"};
    REQUIRE(wait_exit(spawn(a, dir + "/an.txt")) == 0);
    auto count_lines = [&](const std::string& p) { std::istringstream s(read_file(p)); int n = 0; while (std::getline(s, line)) n++; return n; };
    CHECK(count_lines(dir + "/an/grad_norms.csv") == 1 + 3);
    CHECK(count_lines(dir + "/an/angular_distance.csv") == 1 + 3 + 2 + 1);
    CHECK(count_lines(dir + "/an/pruning.csv") == 1 + 1 + 3);
}

// ---- run directories, evaluate-only and sample-only runs, checks before the first step ----

static std::string run_output(const std::vector<std::string>& args, const std::string& log, int* code) {
    *code = wait_exit(spawn(args, log));
    return read_file(log);
}

static std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

static std::vector<std::string> set_flag(std::vector<std::string> args, const std::string& flag, const std::string& value) {
    for (size_t i = 0; i + 1 < args.size(); i++) if (args[i] == flag) { args[i + 1] = value; return args; }
    return with(args, {flag, value});
}

// The names in dir, sorted.
static std::vector<std::string> directory_entries(const std::string& dir) {
    std::vector<std::string> names;
    if (DIR* d = opendir(dir.c_str())) {
        while (const dirent* e = readdir(d))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
        closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
}

TEST_CASE("-c -1 (benchmarks) writes no checkpoint, at the end or on a signal; -r and -k are refused with it") {
    CHECK(parse_error({"-i", "x", "-c", "-1", "-r", "out"}).find("-c -1 saves nothing, so the run continued by -r") == 0);
    CHECK(parse_error({"-i", "x", "-c", "-1", "-k", "2"}) == "-k: -c -1 writes no checkpoint to keep");
    CHECK(parse_error({"-i", "x", "-c", "-2"}) == "-c: '-2' is outside [-1, 2147483647]");
    CHECK(parse_error({"-i", "x", "-c", "-1", "-f", "ck"}) == "(no error)");
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    auto bench_run = [&](const std::string& out, int steps) {
        std::vector<std::string> args = set_flag(tiny_run(data, out, steps), "-c", "-1");
        const auto k = std::find(args.begin(), args.end(), "-k");
        args.erase(k, k + 2);
        return args;
    };
    const std::vector<std::string> logs_only = {"log.csv", "run.txt"};
    int code = 0;
    run_output(bench_run(dir + "/done", 7), dir + "/done.txt", &code);  // 7: past -c 3's steps 3 and 6
    CHECK(code == 0);
    CHECK(last_logged_step(dir + "/done/log.csv") == 7);
    CHECK(directory_entries(dir + "/done") == logs_only);

    const pid_t pid = spawn(bench_run(dir + "/stopped", 100000), dir + "/stopped.txt");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (last_logged_step(dir + "/stopped/log.csv") < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    kill(pid, SIGTERM);
    CHECK(wait_exit(pid) == 130);
    CHECK(read_file(dir + "/stopped.txt").find("; no checkpoint saved (-c -1)") != std::string::npos);
    CHECK(directory_entries(dir + "/stopped") == logs_only);
}

TEST_CASE("a new run refuses a directory holding another run, says how to choose, and -W 1 starts over") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    const std::string out = dir + "/out";
    int code = 0;
    REQUIRE(wait_exit(spawn(tiny_run(data, out, 8), dir + "/a.txt")) == 0);  // checkpoints 3, 6 (-k 2) and 8
    const std::string before = read_file(out + "/log.csv");
    // a new 2-step run into the same directory (before: its checkpoint was pruned at once, and -r out
    // then resumed the other run)
    std::string e = run_output(set_flag(tiny_run(data, out, 2), "-l", "5e-3"), dir + "/b.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("-o " + out + " holds another run's files (2 checkpoint(s) up to " + checkpoint_path(out, 8)) != std::string::npos);
    CHECK(e.find("resume that run with -r " + out + ", choose another -o, or start over with -W 1") != std::string::npos);
    CHECK(read_file(out + "/log.csv") == before);
    CHECK(list_checkpoints(out).size() == 2);

    e = run_output(with(set_flag(tiny_run(data, out, 2), "-l", "5e-3"), {"-W", "1"}), dir + "/c.txt", &code);
    CHECK(code == 0);
    CHECK(e.find("-W 1: deleted the previous run's files") != std::string::npos);
    CHECK(list_checkpoints(out) == std::vector<std::string>{checkpoint_path(out, 2)});
    CHECK(last_logged_step(out + "/log.csv") == 2);
}

TEST_CASE("resuming refuses flags that differ from the run's, naming them, unless -U 1") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    const std::string out = dir + "/out";
    int code = 0;
    REQUIRE(wait_exit(spawn(tiny_run(data, out, 4), dir + "/a.txt")) == 0);
    // stop at step 4 of a longer run: rewrite the record as if -x 8 had been asked (the resume check then
    // sees the new -l and -u only)
    std::string record = read_file(out + "/run.txt");
    record.replace(record.find("-x 4"), 4, "-x 8");
    std::ofstream(out + "/run.txt") << record;
    const std::vector<std::string> changed = with(set_flag(set_flag(tiny_run(data, out, 8), "-l", "2e-2"), "-u", "0.5"), {"-r", out});
    std::string e = run_output(changed, dir + "/b.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("-r: these flags differ from the run's (" + out + "/run.txt): -l '0.01' -> '0.02', -u '0.1' -> '0.5'") != std::string::npos);
    CHECK(e.find("add -U 1 if the change is meant") != std::string::npos);
    CHECK(last_logged_step(out + "/log.csv") == 4);
    e = run_output(with(changed, {"-U", "1"}), dir + "/c.txt", &code);
    CHECK(code == 0);
    CHECK(e.find("continuing run") != std::string::npos);
    CHECK(last_logged_step(out + "/log.csv") == 8);
    CHECK(read_file(out + "/run.txt").find("-l 0.02\n") != std::string::npos);  // the run's flags from now on
    // a resumed run keeps its id in every checkpoint
    for (const std::string& c : list_checkpoints(out)) CHECK(checkpoint_run_id(c) == checkpoint_run_id(checkpoint_path(out, 8)));
}

TEST_CASE("a diverging run in a directory of another run names no checkpoint of that run") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    const std::string out = dir + "/out";
    REQUIRE(wait_exit(spawn(tiny_run(data, out, 6), dir + "/a.txt")) == 0);
    int code = 0;
    const std::vector<std::string> diverging = with(set_flag(tiny_run(data, out, 50), "-l", "1e308"), {"-W", "1"});
    const std::string e = run_output(diverging, dir + "/b.txt", &code);
    CHECK(code == 3);
    const std::string stop = e.substr(e.find("error: the loss is"));
    CHECK(stop.find("No checkpoint was written yet") != std::string::npos);  // before: named the other run's ckpt_00000006.bin
    CHECK(stop.find("ckpt_00000006") == std::string::npos);
}

// The byte vocabulary of 64 ids ('0' + id), at path.
static void write_vocabulary(const std::string& path) {
    std::ofstream v(path, std::ios::binary);
    const uint32_t version = 1, size = 64;
    const int32_t eot = -1;
    v.write("MIXLNVOC", 8);
    v.write((const char*)&version, 4);
    v.write((const char*)&size, 4);
    v.write((const char*)&eot, 4);
    for (uint32_t id = 0; id < size; id++) { const uint32_t one = 1; const char c = (char)('0' + id); v.write((const char*)&one, 4); v.write(&c, 1); }
}

TEST_CASE("-x 0 refuses the flags it has no use for, saying why") {
    const std::vector<std::string> eval = {"-f", "ck", "-x", "0", "-j", "v"}, sample = {"-f", "ck", "-x", "0", "-G", "5"};
    CHECK(parse_error({"-x", "0", "-j", "v"}) == "-x 0 (evaluate or sample only) needs the weights of -f CHECKPOINT");
    CHECK(parse_error({"-x", "0", "-r", "out", "-j", "v"}).find("-r: -x 0 continues no run; give the checkpoint") == 0);
    CHECK(parse_error(with(sample, {"-r", "out"})) == "-r: -x 0 continues no run: the weights to evaluate or sample are those of -f");
    CHECK(parse_error(with(eval, {"-i", "t"})).find("-i: -x 0 trains nothing, so it reads no training shards") == 0);
    CHECK(parse_error(with(eval, {"-d", "64"})).find("-d: -x 0 trains nothing: there is no batch to accumulate") == 0);
    CHECK(parse_error(with(eval, {"-l", "1e-3"})) == "-l: -x 0 trains nothing: no optimizer, schedule or backward");
    CHECK(parse_error(with(eval, {"-N", "2"})) == "-N: -x 0 trains nothing: no optimizer, schedule or backward");
    CHECK(parse_error(with(eval, {"-L", "4"})) == "-L: -x 0 takes the model from the checkpoint of -f");
    CHECK(parse_error(with(eval, {"-e", "130m"})) == "-e: -x 0 takes the model from the checkpoint of -f");
    CHECK(parse_error(with(eval, {"-o", "out"})) == "-o: -x 0 writes nothing: no output directory, log or checkpoint");
    CHECK(parse_error(with(eval, {"-c", "5"})) == "-c: -x 0 writes nothing: no output directory, log or checkpoint");
    CHECK(parse_error(with(eval, {"-v", "5"})) == "-v: -x 0 evaluates -j once (-m sets how much)");
    CHECK(parse_error(with(sample, {"-m", "3"})).find("-m: sets the evaluation's length, and there is none: give -j VAL") == 0);
    CHECK(parse_error(with(sample, {"-b", "3"})).find("-b: sets the evaluation's batch, and there is none") == 0);
    CHECK(parse_error(with(eval, {"-P", "hi"})) == "-P: a flag of sampling, and there is none: give -G N to sample");
    CHECK(parse_error(with(eval, {"-z", "vocab.bin"})) == "-z: a flag of sampling, and there is none: give -G N to sample");
    CHECK(parse_error(with(eval, {"-b", "4", "-t", "16", "-m", "2M"})) == "(no error)");
    CHECK(parse_error(with(sample, {"-P", "x", "-T", "0", "-z", "v", "-s", "3", "-t", "32"})) == "(no error)");
    CHECK(parse_error(with(eval, {"-G", "5", "-P", "x"})) == "(no error)");  // both
}

TEST_CASE("evaluate-only, sample-only and both need only a checkpoint (and -j, or a vocabulary) and write nothing") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);  // dir/train.bin, dir/val.bin
    const std::string out = dir + "/out";
    REQUIRE(wait_exit(spawn(tiny_run(data, out, 6), dir + "/a.txt")) == 0);  // trained at -t 16
    const std::string log = read_file(out + "/log.csv"), ck = read_file(checkpoint_path(out, 6));
    const std::vector<std::string> before_files = directory_entries(out);
    write_vocabulary(dir + "/vocab.bin");  // beside the run's training shards (and its validation shard)
    int code = 0;

    // evaluate: the model and its sequence length (16) from the checkpoint; no -i, -d or -o
    const std::vector<std::string> eval = {trainer_path(), "-f", out, "-x", "0", "-j", dir + "/val.bin", "-b", "4", "-m", "3"};
    std::string e = run_output(eval, dir + "/e.txt", &code);
    CHECK(code == 0);
    CHECK(e.find("model: " + checkpoint_path(out, 6) + ", 3 layers, d 32, 2 heads, ffn 48, vocab 64") != std::string::npos);
    CHECK(e.find("val loss ") != std::string::npos);
    CHECK(e.find("val ppl ") != std::string::npos);
    CHECK(e.find("3 batches of 4 x 16 tokens") != std::string::npos);
    // -t evaluates at another length
    e = run_output(with(eval, {"-t", "8"}), dir + "/e8.txt", &code);
    CHECK(code == 0);
    CHECK(e.find("3 batches of 4 x 8 tokens") != std::string::npos);

    // sample: the vocabulary beside the training shards that the checkpoint's run.txt records
    const std::vector<std::string> sample = {trainer_path(), "-f", checkpoint_path(out, 6), "-x", "0", "-G", "20", "-T", "0"};
    e = run_output(sample, dir + "/g.txt", &code);
    CHECK(code == 0);
    CHECK(e.find("sample (temperature 0):") != std::string::npos);
    CHECK(e.find("val loss") == std::string::npos);

    // both, and with -j in a directory with its own vocab.bin, that one
    make_directories(dir + "/val");
    std::ofstream(dir + "/val/val.bin", std::ios::binary) << read_file(dir + "/val.bin");
    e = run_output(with(sample, {"-j", dir + "/val/val.bin", "-b", "2", "-m", "2"}), dir + "/missing.txt", &code);
    CHECK(code == 0);  // no vocab.bin beside -j's shard: the run's
    CHECK(e.find("2 batches of 2 x 16 tokens") != std::string::npos);
    CHECK(e.find("sample (temperature 0):") != std::string::npos);
    {
        std::ofstream bad(dir + "/val/vocab.bin");
        bad << "not a vocabulary";
    }
    e = run_output(with(sample, {"-j", dir + "/val/val.bin", "-b", "2", "-m", "2"}), dir + "/both.txt", &code);
    CHECK(code == 1);  // the one beside -j's shard comes first
    CHECK(e.find("-G needs a vocabulary to decode with (-z FILE): vocab '" + dir + "/val/vocab.bin'") != std::string::npos);
    CHECK(e.find("val loss") == std::string::npos);  // checked before evaluating
    e = run_output(with(sample, {"-j", dir + "/val/val.bin", "-b", "2", "-m", "2", "-z", dir + "/vocab.bin"}), dir + "/z.txt", &code);
    CHECK(code == 0);  // -z first of all
    CHECK(e.find("sample (temperature 0):") != std::string::npos);

    // a checkpoint without its run's record, and no -z or -j: where it looked
    make_directories(dir + "/alone");
    std::ofstream(dir + "/alone/ck.bin", std::ios::binary) << ck;
    e = run_output(set_flag(sample, "-f", dir + "/alone/ck.bin"), dir + "/alone.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("-G needs a vocabulary to decode with (-z FILE): no record of the checkpoint's training shards (" + dir +
                 "/alone/run.txt is missing or unreadable)") != std::string::npos);
    e = run_output(with(set_flag(sample, "-f", dir + "/alone/ck.bin"), {"-z", dir + "/vocab.bin"}), dir + "/alone_z.txt", &code);
    CHECK(code == 0);

    // nothing was written: the run's directory as it was
    CHECK(read_file(out + "/log.csv") == log);
    CHECK(read_file(checkpoint_path(out, 6)) == ck);
    CHECK(directory_entries(out) == before_files);
    // a refused flag: exit code 2, the reason
    e = run_output(with(eval, {"-i", data}), dir + "/i.txt", &code);
    CHECK(code == 2);
    CHECK(e.find("error: -i: -x 0 trains nothing, so it reads no training shards") != std::string::npos);
}

TEST_CASE("what can be checked before the first step is: -G's vocabulary, the memory the flags ask for") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    int code = 0;
    std::string e = run_output(with(tiny_run(data, dir + "/g", 5000), {"-G", "10", "-z", dir + "/missing.bin"}), dir + "/a.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("-G needs a vocabulary to decode with (-z FILE): vocab '" + dir + "/missing.bin': cannot open") != std::string::npos);
    CHECK(e.find("step ") == std::string::npos);  // before: failed after all 5000 steps
    CHECK(access((dir + "/g/log.csv").c_str(), F_OK) != 0);

    e = run_output(set_flag(tiny_run(data, dir + "/v", 2), "-V", "1e9"), dir + "/b.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("error: the flags ask for ") != std::string::npos);  // before: std::bad_alloc
    CHECK(e.find("logits of 4 x 16 x vocab 1000000000") != std::string::npos);

    std::vector<int> tokens(100001);
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = (int)(i % 64);
    write_shard(dir + "/long.bin", tokens.data(), tokens.size(), 64);
    e = run_output({trainer_path(), "-e", "tiny", "-i", dir + "/long.bin", "-b", "1", "-t", "100000", "-d", "100000", "-x", "1", "-o", dir + "/t"},
                   dir + "/c.txt", &code);
    CHECK(code == 1);
    CHECK(e.find("error: the flags ask for ") != std::string::npos);
    CHECK(e.find("activations of -b 1 x -t 100000 tokens") != std::string::npos);
}

// ---- a non-finite gradient norm skips the update (the driver in this process) ----

// What a PlantedBackend saw at each of its optimizer steps: AdamW's step t it was given, and whether
// the weights and both moments kept every bit.
struct UpdateRecord {
    std::vector<int> adam_t;
    std::vector<bool> unchanged;
};

static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// train_mixln_cpu's backend with an inf or NaN planted in one gradient before the optimizer steps
// listed (numbered from 1 by this backend's calls).
struct PlantedBackend : CpuBackend<float> {
    std::map<int, float> planted;
    UpdateRecord& record;
    PlantedBackend(const ModelConfig& cfg, const std::map<int, float>& p, UpdateRecord& r) : CpuBackend<float>(cfg), planted(p), record(r) {}
    void optimizer_step(double lr, int t, const TrainOptions& o) override {
        const int call = (int)record.adam_t.size() + 1;
        record.adam_t.push_back(t);
        if (planted.count(call)) model.grads[model.layout.total / 2] = planted.at(call);
        const std::vector<float> p0 = model.params, m0 = m, v0 = v;
        CpuBackend<float>::optimizer_step(lr, t, o);
        record.unchanged.push_back(same_bits(model.params, p0) && same_bits(m, m0) && same_bits(v, v0));
    }
};

// run_training in this process with a PlantedBackend, its stdout and stderr into log_path. Returns the
// exit code.
static int train_planted(const std::vector<std::string>& args, const std::map<int, float>& planted, UpdateRecord& record,
                         const std::string& log_path) {
    std::vector<std::string> a = args;
    a[0] = "train";
    std::vector<char*> argv;
    for (std::string& x : a) argv.push_back(&x[0]);
    const TrainOptions o = parse_train_options((int)argv.size(), argv.data());
    UNSCOPED_INFO("trainer log: " << log_path);
    fflush(stdout);
    fflush(stderr);
    const int out = dup(1), err = dup(2), fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    int code = -1;
    std::string error;
    try {
        code = run_training(o, [&](const ModelConfig& cfg) { return std::unique_ptr<TrainerBackend>(new PlantedBackend(cfg, planted, record)); });
    } catch (const std::exception& e) {
        error = e.what();
    }
    fflush(stdout);
    fflush(stderr);
    dup2(out, 1);
    dup2(err, 2);
    close(out);
    close(err);
    if (!error.empty()) FAIL("run_training threw: " << error);
    return code;
}

// log.csv's rows past the header.
static std::vector<std::string> log_rows(const std::string& csv) {
    std::istringstream in(read_file(csv));
    std::string line;
    std::vector<std::string> rows;
    std::getline(in, line);
    while (std::getline(in, line)) rows.push_back(line);
    return rows;
}

TEST_CASE("a step whose gradient norm is inf or NaN applies nothing, is logged as skipped, saves nothing, and resumes bitwise") {
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<std::string> args = set_flag(tiny_run(data, dir + "/run", 8), "-k", "0");  // -c 3, keep all
    UpdateRecord r;
    REQUIRE(train_planted(args, {{3, inf}, {5, nan}}, r, dir + "/run.txt") == 0);
    // AdamW counts updates: the step after a skipped one gets the skipped one's t
    CHECK(r.adam_t == std::vector<int>{1, 2, 3, 3, 4, 4, 5, 6});
    CHECK(r.unchanged == std::vector<bool>{false, false, true, false, true, false, false, false});
    const std::vector<std::string> rows = log_rows(dir + "/run/log.csv");
    REQUIRE(rows.size() == 8);
    CHECK(rows[2].rfind("3,skipped,", 0) == 0);
    CHECK(rows[2].substr(rows[2].size() - 4) == ",inf");
    CHECK(rows[4].rfind("5,skipped,", 0) == 0);
    CHECK(rows[4].substr(rows[4].size() - 4) == ",nan");
    for (int i : {0, 1, 3, 5, 6, 7}) CHECK(rows[i].find(",train,") != std::string::npos);
    const std::string out = read_file(dir + "/run.txt");
    CHECK(out.find("step      3/8 | loss ") != std::string::npos);
    CHECK(out.find("| norm inf | update skipped: non-finite gradient norm (1 skipped so far, 1 in a row") != std::string::npos);
    CHECK(out.find("| norm nan | update skipped: non-finite gradient norm (2 skipped so far, 1 in a row") != std::string::npos);
    // the checkpoint due at step 3 (-c 3) was written after the next update, at step 4
    CHECK(list_checkpoints(dir + "/run") ==
          std::vector<std::string>{checkpoint_path(dir + "/run", 4), checkpoint_path(dir + "/run", 6), checkpoint_path(dir + "/run", 8)});
    CHECK(load_checkpoint(checkpoint_path(dir + "/run", 4)).state.skipped_steps == 1);
    CHECK(load_checkpoint(checkpoint_path(dir + "/run", 8)).state.skipped_steps == 2);

    // Resumed from step 4 (the NaN planted again at step 5), the run ends in the same checkpoint, bit for
    // bit: the skipped count travels in the checkpoint, and AdamW's t with it.
    make_directories(dir + "/resumed");
    std::ofstream(checkpoint_path(dir + "/resumed", 4), std::ios::binary) << read_file(checkpoint_path(dir + "/run", 4));
    UpdateRecord resumed;
    REQUIRE(train_planted(with(set_flag(args, "-o", dir + "/resumed"), {"-r", dir + "/resumed"}), {{1, nan}}, resumed,
                          dir + "/resumed.txt") == 0);
    CHECK(resumed.adam_t == std::vector<int>{4, 4, 5, 6});
    CHECK((read_file(checkpoint_path(dir + "/resumed", 8)) == read_file(checkpoint_path(dir + "/run", 8))));
}

TEST_CASE("-N steps in a row with a non-finite gradient norm stop the run with exit code 4, saving nothing") {
    CHECK(parse_error({"-i", "x", "-N", "0"}) == "-N: '0' is outside [1, 2147483647]");
    const std::string dir = temp_dir();
    const std::string data = make_corpus(dir);
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    UpdateRecord r;
    // steps 2 and 3 skip, 4 updates (the count in a row starts again), 5, 6 and 7 skip: -N 3 stops after 7
    const int code = train_planted(with(tiny_run(data, dir + "/run", 20), {"-N", "3"}), {{2, inf}, {3, nan}, {5, inf}, {6, nan}, {7, inf}},
                                   r, dir + "/run.txt");
    CHECK(code == 4);
    CHECK(r.adam_t == std::vector<int>{1, 2, 2, 2, 3, 3, 3});
    CHECK(r.unchanged == std::vector<bool>{false, true, true, false, true, true, true});
    const std::string out = read_file(dir + "/run.txt");
    CHECK(out.find("(5 skipped so far, 3 in a row; the run stops at 3 in a row, -N)") != std::string::npos);
    CHECK(out.find("error: 3 steps in a row (5 to 7) had a non-finite gradient norm and skipped their update (-N 3); "
                   "stopping without saving. The last good checkpoint is " + checkpoint_path(dir + "/run", 4) + ".") != std::string::npos);
    CHECK(log_rows(dir + "/run/log.csv").size() == 7);
    // the one due at step 3 (-c 3) waited for step 4's update; the one due at step 6 for an update that never came
    CHECK(list_checkpoints(dir + "/run") == std::vector<std::string>{checkpoint_path(dir + "/run", 4)});
}
