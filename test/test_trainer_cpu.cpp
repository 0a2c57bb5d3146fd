// The command line and the CPU trainer as a user runs it: bad flags, kill -9 and resume
// bit-identically, SIGTERM saving a checkpoint, and a diverging run stopping on a NaN loss.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include "catch_compat.h"
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
    CHECK(parse_error({"-i", "x", "-b", "3", "-t", "100", "-d", "1000"}).find("not a multiple") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-C", "100", "-H", "3"}).find("heads") != std::string::npos);
    CHECK(parse_error({"-a", "0.5"}).find("no training shards") != std::string::npos);
    CHECK(parse_error({"-i"}).find("needs a value") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-l", "-1"}).find("-l") == 0);
    CHECK(parse_error({"-i", "x", "-r", "a", "-f", "b"}).find("exclude") != std::string::npos);
    CHECK(parse_error({"-i", "x", "-e", "1b"}) == "(no error)");
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
