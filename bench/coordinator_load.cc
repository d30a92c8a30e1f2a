// One herd-coordinator process, N simulated workers (each its own connection)
// heartbeating every second, training a step a second and committing a checkpoint
// every 30 steps: the coordinator's RPC latency as the workers see it (p50/p99),
// every failed call, and its CPU use, over a measured window that starts once every
// rank has reported a step.
//
// Each worker is the shipping client (client/client.h), driven through its callback
// forms by one timer thread and gRPC's threads: a thread per worker, as in the
// tests' SimWorker, would measure this machine's scheduler more than the
// coordinator (2 cores, thousands of threads). A call's latency runs from when it
// was due (the heartbeat's second, the end of the simulated step) to its answer.
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
#include <queue>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "client/client.h"
#include "client/sim_worker.h"
#include "common/checkpoint_files.h"

namespace fs = std::filesystem;

namespace {

constexpr const char* kToken = "bench-token-0123456789";
constexpr uint64_t kCheckpointEvery = 30;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Latencies (seconds) of the calls answered, and the failures, by method.
class Calls {
 public:
  void record(const std::string& method, const grpc::Status& s, double due) {
    const double took = now() - due;
    std::lock_guard lock(mutex_);
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
  std::map<std::string, std::vector<float>> latency_;
  std::map<std::string, uint64_t> failures_;
  std::string first_failure_;
};

class Fleet {
 public:
  // Checkpoints are committed as the job's trainer_output_dir/checkpoint-STEP (nothing is written).
  Fleet(const std::string& address, size_t n, double step_seconds, fs::path output_dir)
      : step_seconds_(step_seconds), output_dir_(std::move(output_dir)) {
    for (size_t i = 0; i < n; ++i) {
      herd::client::SessionOptions o;
      o.client.address = address;
      o.client.token = kToken;
      o.job_id = "bench";
      o.host = fmt::format("sim-{}", i);
      o.heartbeat_thread = false;  // the timer thread heartbeats
      workers_.push_back(std::make_unique<Worker>(this, std::move(o)));
    }
  }
  ~Fleet() { stop(); }

  // Registers everyone, forms the gang, opens the streams.
  void start() {
    for (size_t i = 0; i < workers_.size(); ++i) {
      workers_[i]->session.join();
      // Heartbeats spread over the first second, as workers that started apart.
      schedule(now() + static_cast<double>(i) / static_cast<double>(workers_.size()), i, kHeartbeat, 0);
    }
    timer_ = std::thread([this] { run_timers(); });
    std::vector<std::thread> waits;
    for (auto& w : workers_) {
      waits.emplace_back([&w] { w->gang = w->session.wait_for_gang(0); });
      if (waits.size() == 64) {  // a bounded number of blocking calls at a time
        for (auto& t : waits) t.join();
        waits.clear();
      }
    }
    for (auto& t : waits) t.join();
    for (auto& w : workers_) w->open_stream();
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      if (stopped_) return;
      stopped_ = true;
    }
    wake_.notify_all();
    if (timer_.joinable()) timer_.join();
    for (auto& w : workers_) w->close_stream();
  }

  uint64_t steps_reported() const { return steps_; }
  Calls& calls() { return calls_; }

 private:
  enum Action { kHeartbeat, kReport };
  struct Worker : grpc::ClientReadReactor<herd::v1::MicroBatch> {
    Worker(Fleet* f, herd::client::SessionOptions o) : fleet(f), session(std::move(o)) {}
    Fleet* fleet;
    herd::client::WorkerSession session;
    herd::client::Gang gang;
    herd::v1::MicroBatch batch;
    uint64_t step_tokens = 0;
    double busy_until = 0;  // when the step in training ends (read by reactions only: one at a time)
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool done = false;

    void open_stream() {
      session.open_stream(gang.resume_step + 1, this);
      StartRead(&batch);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      for (uint32_t length : batch.lengths()) step_tokens += length;
      if (batch.micro_step() + 1 == gang.accumulation) {
        // Steps train one after another: a prefetched step starts when the last ends.
        busy_until = std::max(busy_until, now()) + fleet->step_seconds_;
        fleet->schedule(busy_until, gang.rank, kReport, batch.step(), std::exchange(step_tokens, 0));
      }
      StartRead(&batch);
    }
    void OnDone(const grpc::Status&) override {
      std::lock_guard lock(done_mutex);
      done = true;
      done_cv.notify_all();
    }
    void close_stream() {
      session.close_stream();
      std::unique_lock lock(done_mutex);
      done_cv.wait(lock, [this] { return done; });
    }
  };
  struct Timer {
    double at;
    size_t worker;
    Action action;
    uint64_t step, tokens;
    bool operator>(const Timer& o) const { return at > o.at; }
  };

  void schedule(double at, size_t worker, Action action, uint64_t step, uint64_t tokens = 0) {
    {
      std::lock_guard lock(mutex_);
      timers_.push({at, worker, action, step, tokens});
    }
    wake_.notify_one();
  }

  void run_timers() {
    std::unique_lock lock(mutex_);
    while (!stopped_) {
      if (timers_.empty() || timers_.top().at > now()) {
        const double wait = timers_.empty() ? 0.1 : timers_.top().at - now();
        wake_.wait_for(lock, std::chrono::duration<double>(std::max(wait, 0.0)));
        continue;
      }
      const Timer t = timers_.top();
      timers_.pop();
      lock.unlock();
      fire(t);
      lock.lock();
    }
  }

  // Worker index for heartbeats; rank for reports (ranks are a permutation of workers).
  void fire(const Timer& t) {
    if (t.action == kHeartbeat) {
      workers_[t.worker]->session.heartbeat_async([this, due = t.at](const grpc::Status& s) {
        calls_.record("Heartbeat", s, due);
      });
      schedule(t.at + 1.0, t.worker, kHeartbeat, 0);
      return;
    }
    Worker& w = *rank_to_worker(t.worker);
    w.session.report_step_async(t.step, 1.0, t.tokens, {}, [this, &w, t](const grpc::Status& s, bool) {
      calls_.record("ReportStep", s, t.at);
      ++steps_;
      if (!s.ok() || (t.step % kCheckpointEvery != 0 && t.step != w.gang.total_steps)) return;
      w.session.commit_checkpoint_async(
          t.step, herd::checkpoint_dir(output_dir_, t.step).string(), std::string(64, '0'),
          [this, due = now()](const grpc::Status& c, bool) { calls_.record("CommitCheckpoint", c, due); });
    });
  }

  Worker* rank_to_worker(size_t rank) {
    std::call_once(ranks_once_, [this] {
      by_rank_.resize(workers_.size());
      for (auto& w : workers_) by_rank_[w->gang.rank] = w.get();
    });
    return by_rank_[rank];
  }

  const double step_seconds_;
  const fs::path output_dir_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Worker*> by_rank_;
  std::once_flag ranks_once_;
  std::thread timer_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  bool stopped_ = false;
  Calls calls_;
  std::atomic<uint64_t> steps_{0};
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

  Fleet fleet(address, workers, 1.0, dir / "out");
  const auto t_start = std::chrono::steady_clock::now();
  fleet.start();
  // The window starts once every rank has reported a step.
  while (fleet.steps_reported() < workers) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double formed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  fleet.calls().take();
  const uint64_t reports0 = fleet.steps_reported();
  const double cpu0 = cpu_seconds(pid);
  const double self0 = cpu_seconds(::getpid());
  const std::string metrics0 = herd::client::scrape_metrics(metrics_port);
  const auto w0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  const double cpu = cpu_seconds(pid) - cpu0;
  const double self = cpu_seconds(::getpid()) - self0;
  const std::string metrics1 = herd::client::scrape_metrics(metrics_port);
  auto latency = fleet.calls().take();
  const uint64_t steps = (fleet.steps_reported() - reports0) / workers;
  const auto failures = fleet.calls().failures();
  const std::string first_failure = fleet.calls().first_failure();
  fleet.stop();
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
  return failures.empty() ? 0 : 1;
}
