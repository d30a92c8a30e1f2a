// One herd-coordinator process, N simulated workers (each its own connection)
// heartbeating every second, training a step a second and committing a checkpoint
// every 30 steps: the coordinator's RPC latency as the workers see it (p50/p99),
// every failed call, and its CPU use, over a measured window that starts once every
// rank has reported a step.
//
// Each worker is client/sim_worker.h's SimWorker: the gang loop `herd worker` runs
// (client/gang_loop.h) and its client, with a recipe whose step sleeps. So it has
// the shipping worker's threads too: the loop's and the heartbeat's, two a worker.
// A call's latency is the client's, from the call to its answer
// (SessionOptions::on_call).
//
//   herd_bench_coordinator_load [--workers 1024] [--seconds 60]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "client/client.h"
#include "client/sim_worker.h"

namespace fs = std::filesystem;

namespace {

constexpr const char* kToken = "bench-token-0123456789";
constexpr uint64_t kCheckpointEvery = 30;

// Latencies (seconds) of the calls answered, and the failures, by method, until closed.
class Calls {
 public:
  void record(const std::string& method, const grpc::Status& s, double took) {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    if (s.ok()) {
      latency_[method].push_back(static_cast<float>(took));
    } else {
      ++failures_[fmt::format("{} {}", method, herd::client::code_name(s.error_code()))];
      if (first_failure_.empty()) first_failure_ = fmt::format("{}: {}", method, herd::client::describe(s));
    }
  }
  // The latencies since the last take(), by method; the failures so far.
  std::map<std::string, std::vector<float>> take() {
    std::lock_guard lock(mutex_);
    return std::exchange(latency_, {});
  }
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  std::map<std::string, uint64_t> failures() const {
    std::lock_guard lock(mutex_);
    return failures_;
  }
  std::string first_failure() const {
    std::lock_guard lock(mutex_);
    return first_failure_;
  }

 private:
  mutable std::mutex mutex_;
  bool closed_ = false;
  std::map<std::string, std::vector<float>> latency_;
  std::map<std::string, uint64_t> failures_;
  std::string first_failure_;
};

// The simulated workers, started together; checkpoints are committed as the job's
// trainer_output_dir/checkpoint-STEP (a manifest of no files).
class Fleet {
 public:
  Fleet(const std::string& address, size_t n, const fs::path& output_dir) {
    for (size_t i = 0; i < n; ++i) {
      herd::client::SimWorkerOptions o;
      o.client.address = address;
      o.client.token = kToken;
      o.job_id = "bench";
      o.host = fmt::format("sim-{}", i);
      o.step_seconds = 1.0;
      o.checkpoint_every = kCheckpointEvery;
      o.output_dir = output_dir.string();
      o.on_call = [this](const char* method, const grpc::Status& s, double took) { calls_.record(method, s, took); };
      workers_.push_back(std::make_unique<herd::client::SimWorker>(std::move(o)));
    }
    for (auto& w : workers_) w->start();
  }
  ~Fleet() {
    calls_.close();  // leaving cancels the calls in flight
    workers_.clear();
  }

  uint64_t steps_reported() const {
    uint64_t n = 0;
    for (const auto& w : workers_) n += w->steps_trained();
    return n;
  }
  bool every_rank_reported() const {
    return std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->steps_trained() > 0; });
  }
  // How the first worker that ended did ("" while every one runs).
  std::string ended() const {
    for (const auto& w : workers_) {
      if (w->finished()) return w->outcome();
    }
    return "";
  }
  Calls& calls() { return calls_; }

 private:
  Calls calls_;
  std::vector<std::unique_ptr<herd::client::SimWorker>> workers_;
};

double cpu_seconds(pid_t pid) {  // utime + stime of a process
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Cumulative histogram buckets {le -> count} of herd_rpc_seconds for a method.
std::map<double, double> buckets(const std::string& metrics, const std::string& method) {
  std::map<double, double> out;
  const std::string prefix = "herd_rpc_seconds_bucket{";
  std::istringstream lines(metrics);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(prefix, 0) != 0 || line.find("method=\"" + method + "\"") == std::string::npos) continue;
    const auto le = line.find("le=\"");
    const std::string bound = line.substr(le + 4, line.find('"', le + 4) - le - 4);
    out[bound == "+Inf" ? 1e9 : std::stod(bound)] = std::stod(line.substr(line.rfind(' ') + 1));
  }
  return out;
}

// The smallest bucket bound under which fraction p of the window's calls finished.
double bucket_percentile(const std::map<double, double>& before, const std::map<double, double>& after, double p) {
  const double total = after.rbegin()->second - (before.empty() ? 0 : before.rbegin()->second);
  for (const auto& [le, count] : after) {
    const double was = before.count(le) ? before.at(le) : 0;
    if (count - was >= p * total) return le;
  }
  return 1e9;
}

double percentile(std::vector<float>& v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  size_t workers = 1024;
  double seconds = 60;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--workers")) workers = std::stoul(argv[i + 1]);
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::stod(argv[i + 1]);
  }
  const fs::path bin = fs::canonical("/proc/self/exe").parent_path();
  const fs::path dir = fs::temp_directory_path() / fmt::format("herd-bench-coordinator-{}", ::getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "job.yaml") << fmt::format(R"(model_name: bench
base_model: unused
data: {{type: vicuna, dataset: unused.json}}
lora: {{r: 8, lora_alpha: 16, target_modules: [q_proj], lora_dropout: 0, bias: none, task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1,
          learning_rate: 0.001, logging_steps: 1}}
trainer_output_dir: {0}/out
model_output_dir: {0}/models
distributed: {{world_size: {1}, heartbeat_timeout_s: 30}}
security: {{token: {2}}}
metrics: {{enabled: false}}
)",
                                                 dir.string(), workers, kToken);
  // Enough samples for a step a second over the whole run.
  const size_t samples = workers * static_cast<size_t>(seconds + 120);
  std::vector<std::string> args = {(bin / "herd-coordinator").string(),
                                   "--config",         (dir / "job.yaml").string(),
                                   "--listen",         "127.0.0.1:0",
                                   "--port-file",      (dir / "port").string(),
                                   "--synthetic-data", fmt::format("{},64,512", samples),
                                   "--metrics-listen", "127.0.0.1:0"};
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = 0;
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  const std::string log = (dir / "coordinator.log").string();
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (posix_spawn(&pid, cargv[0], &files, nullptr, cargv.data(), environ) != 0) {
    std::cerr << "cannot start " << cargv[0] << "\n";
    return 1;
  }
  while (!fs::exists(dir / "port")) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  int port = 0;
  std::ifstream(dir / "port") >> port;
  const std::string address = fmt::format("127.0.0.1:{}", port);
  int metrics_port = 0;
  {
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find("metrics on port ");
    if (at != std::string::npos) metrics_port = std::stoi(text.substr(at + 16));
  }

  auto fleet = std::make_unique<Fleet>(address, workers, dir / "out");
  const auto t_start = std::chrono::steady_clock::now();
  // The window starts once every rank has reported a step.
  while (!fleet->every_rank_reported()) {
    if (const auto why = fleet->ended(); !why.empty()) {
      std::cerr << "a simulated worker ended before the window: " << why << "\n";
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double formed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  fleet->calls().take();
  const uint64_t reports0 = fleet->steps_reported();
  const double cpu0 = cpu_seconds(pid);
  const double self0 = cpu_seconds(::getpid());
  const std::string metrics0 = herd::client::scrape_metrics(metrics_port);
  const auto w0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  const double cpu = cpu_seconds(pid) - cpu0;
  const double self = cpu_seconds(::getpid()) - self0;
  const std::string metrics1 = herd::client::scrape_metrics(metrics_port);
  auto latency = fleet->calls().take();
  const uint64_t steps = (fleet->steps_reported() - reports0) / workers;
  const auto failures = fleet->calls().failures();
  const std::string first_failure = fleet->calls().first_failure();
  const std::string ended = fleet->ended();
  fleet.reset();
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  fs::remove_all(dir);

  std::cout << fmt::format("coordinator load: {} workers, gang formed after {:.1f} s; {:.0f} s window: {} heartbeats, "
                           "{} step reports, {} checkpoint commits, {} steps\n",
                           workers, formed_s, wall, latency["Heartbeat"].size(), latency["ReportStep"].size(),
                           latency["CommitCheckpoint"].size(), steps);
  std::vector<float> all;
  for (const char* method : {"Heartbeat", "ReportStep", "CommitCheckpoint"}) {
    auto& v = latency[method];
    all.insert(all.end(), v.begin(), v.end());
    std::cout << fmt::format("  {:<17} p50 {:.2f} ms  p99 {:.2f} ms\n", method, 1e3 * percentile(v, 0.5),
                             1e3 * percentile(v, 0.99));
  }
  std::cout << fmt::format("  all unary         p50 {:.2f} ms  p99 {:.2f} ms (target p99 < 50 ms)\n",
                           1e3 * percentile(all, 0.5), 1e3 * percentile(all, 0.99));
  if (failures.empty()) {
    std::cout << "  failed calls: none\n";
  } else {
    for (const auto& [what, count] : failures) std::cout << fmt::format("  failed calls: {} x {}\n", count, what);
    std::cout << "  first failure: " << first_failure << "\n";
  }
  if (!ended.empty()) std::cout << "  a simulated worker ended: " << ended << "\n";
  std::cout << "  as the coordinator measures its handlers (histogram bucket bounds):\n";
  for (const char* method : {"Heartbeat", "ReportStep", "CommitCheckpoint"}) {
    const auto b0 = buckets(metrics0, method), b1 = buckets(metrics1, method);
    if (b1.empty()) continue;
    std::cout << fmt::format("  {:<17} p50 <= {:g} ms  p99 <= {:g} ms\n", method,
                             1e3 * bucket_percentile(b0, b1, 0.5), 1e3 * bucket_percentile(b0, b1, 0.99));
  }
  std::cout << fmt::format(
      "  CPU: coordinator {:.2f} cores ({:.1f} s in {:.1f} s), the simulated fleet {:.2f} cores; machine has {} "
      "cores\n",
      cpu / wall, cpu, wall, self / wall, std::thread::hardware_concurrency());
  return failures.empty() && ended.empty() ? 0 : 1;
}
