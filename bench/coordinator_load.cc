// One herd-coordinator process, N simulated workers (each its own connection)
// heartbeating every second and training a step a second: the coordinator's RPC
// latency as the workers see it (p50/p99) and its CPU use, over a measured window
// that starts once the gang has formed.
//
// The workers are a fleet driven by gRPC's callback API from a few threads (a
// thread per worker, as in the tests' SimWorker, would measure this machine's
// scheduler more than the coordinator: 2 cores, thousands of threads).
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

#include <grpcpp/grpcpp.h>

#include "client/client.h"
#include "client/sim_worker.h"
#include "herd/proto/herd.grpc.pb.h"

namespace fs = std::filesystem;

namespace {

constexpr const char* kToken = "bench-token-0123456789";

// N workers: one channel each, heartbeats and step reports issued by one timer
// thread, batch streams read by callback reactors.
class Fleet {
 public:
  Fleet(const std::string& address, size_t n, double step_seconds) : step_seconds_(step_seconds) {
    for (size_t i = 0; i < n; ++i) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto w = std::make_unique<Worker>();
      w->fleet = this;
      w->stub = herd::v1::Coordinator::NewStub(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      workers_.push_back(std::move(w));
    }
  }
  ~Fleet() { stop(); }

  // Registers everyone, forms the gang, opens the streams and starts the clock.
  void start() {
    for (size_t i = 0; i < workers_.size(); ++i) {
      herd::v1::RegisterRequest q;
      q.set_job_id("bench");
      q.set_host(fmt::format("sim-{}", i));
      herd::v1::RegisterResponse r;
      grpc::ClientContext ctx;
      herd::client::prepare(ctx, kToken, std::chrono::seconds(30));
      if (!workers_[i]->stub->Register(&ctx, q, &r).ok()) throw std::runtime_error("register failed");
      workers_[i]->id = r.worker_id();
      // Heartbeats spread over the first second, as workers that started apart.
      schedule(now() + static_cast<double>(i) / static_cast<double>(workers_.size()), i, kHeartbeat, 0);
    }
    timer_ = std::thread([this] { run_timers(); });
    std::vector<std::thread> waits;
    for (auto& w : workers_) {
      waits.emplace_back([&w] {
        herd::v1::WaitForGangRequest q;
        q.set_worker_id(w->id);
        q.set_timeout_seconds(300);
        grpc::ClientContext ctx;
        herd::client::prepare(ctx, kToken, std::chrono::seconds(310));
        if (!w->stub->WaitForGang(&ctx, q, &w->gang).ok()) throw std::runtime_error("no gang");
      });
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
  // Latencies of calls answered since the last take(), in seconds.
  std::pair<std::vector<float>, std::vector<float>> take() {
    std::lock_guard lock(mutex_);
    return {std::exchange(heartbeat_latency_, {}), std::exchange(report_latency_, {})};
  }

 private:
  enum Action { kHeartbeat, kReport };
  struct Worker : grpc::ClientReadReactor<herd::v1::MicroBatch> {
    Fleet* fleet = nullptr;
    std::unique_ptr<herd::v1::Coordinator::Stub> stub;
    std::string id;
    herd::v1::WaitForGangResponse gang;
    grpc::ClientContext stream_context;
    herd::v1::StreamBatchesRequest stream_request;
    herd::v1::MicroBatch batch;
    double busy_until = 0;  // when the step in training ends (read by reactions only: one at a time)
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool done = false;

    void open_stream() {
      stream_request.set_worker_id(id);
      stream_request.set_attempt(gang.attempt());
      stream_request.set_from_step(gang.resume_step() + 1);
      herd::client::prepare(stream_context, kToken, std::chrono::hours(24));
      stub->async()->StreamBatches(&stream_context, &stream_request, this);
      StartRead(&batch);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      if (batch.micro_step() + 1 == gang.gradient_accumulation_steps()) {
        // Steps train one after another: a prefetched step starts when the last ends.
        busy_until = std::max(busy_until, fleet->now()) + fleet->step_seconds_;
        fleet->schedule(busy_until, static_cast<size_t>(gang.rank()), kReport, batch.step());
      }
      StartRead(&batch);
    }
    void OnDone(const grpc::Status&) override {
      std::lock_guard lock(done_mutex);
      done = true;
      done_cv.notify_all();
    }
    void close_stream() {
      stream_context.TryCancel();
      std::unique_lock lock(done_mutex);
      done_cv.wait(lock, [this] { return done; });
    }
  };
  struct Timer {
    double at;
    size_t worker;
    Action action;
    uint64_t step;
    bool operator>(const Timer& o) const { return at > o.at; }
  };

  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  void schedule(double at, size_t worker, Action action, uint64_t step) {
    {
      std::lock_guard lock(mutex_);
      timers_.push({at, worker, action, step});
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
    const auto start = std::chrono::steady_clock::now();
    if (t.action == kHeartbeat) {
      Worker& w = *workers_[t.worker];
      auto call = std::make_shared<std::tuple<grpc::ClientContext, herd::v1::HeartbeatRequest,
                                              herd::v1::HeartbeatResponse>>();
      herd::client::prepare(std::get<0>(*call), kToken, std::chrono::seconds(30));
      std::get<1>(*call).set_worker_id(w.id);
      std::get<1>(*call).mutable_stats()->set_tokens_per_second(1000);
      w.stub->async()->Heartbeat(&std::get<0>(*call), &std::get<1>(*call), &std::get<2>(*call),
                                 [this, call, start](grpc::Status s) { record(s, start, heartbeat_latency_); });
      schedule(t.at + 1.0, t.worker, kHeartbeat, 0);
      return;
    }
    Worker& w = *rank_to_worker(t.worker);
    auto call = std::make_shared<std::tuple<grpc::ClientContext, herd::v1::ReportStepRequest,
                                            herd::v1::ReportStepResponse>>();
    herd::client::prepare(std::get<0>(*call), kToken, std::chrono::seconds(30));
    std::get<1>(*call).set_worker_id(w.id);
    std::get<1>(*call).set_attempt(w.gang.attempt());
    std::get<1>(*call).set_step(t.step);
    std::get<1>(*call).set_loss(1.0);
    w.stub->async()->ReportStep(&std::get<0>(*call), &std::get<1>(*call), &std::get<2>(*call),
                                [this, call, start](grpc::Status s) {
                                  record(s, start, report_latency_);
                                  ++steps_;
                                });
  }

  Worker* rank_to_worker(size_t rank) {
    std::call_once(ranks_once_, [this] {
      by_rank_.resize(workers_.size());
      for (auto& w : workers_) by_rank_[w->gang.rank()] = w.get();
    });
    return by_rank_[rank];
  }

  void record(const grpc::Status& s, std::chrono::steady_clock::time_point start, std::vector<float>& into) {
    const auto took = std::chrono::duration<float>(std::chrono::steady_clock::now() - start).count();
    std::lock_guard lock(mutex_);
    if (s.ok()) into.push_back(took);
    else ++failures_;
  }

  const double step_seconds_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Worker*> by_rank_;
  std::once_flag ranks_once_;
  std::thread timer_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  bool stopped_ = false;
  std::vector<float> heartbeat_latency_, report_latency_;
  std::atomic<uint64_t> steps_{0};
  uint64_t failures_ = 0;
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

// Cumulative histogram buckets {le -> count} of herd_coordinator_rpc_seconds for a method.
std::map<double, double> buckets(const std::string& metrics, const std::string& method) {
  std::map<double, double> out;
  const std::string prefix = "herd_coordinator_rpc_seconds_bucket{";
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

  Fleet fleet(address, workers, 1.0);
  const auto t_start = std::chrono::steady_clock::now();
  fleet.start();
  // The window starts once every rank has reported a step.
  while (fleet.steps_reported() < workers) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double formed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  fleet.take();
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
  auto [hb, rep] = fleet.take();
  const uint64_t steps = (fleet.steps_reported() - reports0) / workers;
  fleet.stop();
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  fs::remove_all(dir);

  std::vector<float> both(hb);
  both.insert(both.end(), rep.begin(), rep.end());
  std::cout << fmt::format(
      "coordinator load: {} workers, gang formed after {:.1f} s; {:.0f} s window: {} heartbeats, {} step reports, "
      "{} steps\n",
      workers, formed_s, wall, hb.size(), rep.size(), steps);
  std::cout << fmt::format("  Heartbeat   p50 {:.2f} ms  p99 {:.2f} ms\n", 1e3 * percentile(hb, 0.5),
                           1e3 * percentile(hb, 0.99));
  std::cout << fmt::format("  ReportStep  p50 {:.2f} ms  p99 {:.2f} ms\n", 1e3 * percentile(rep, 0.5),
                           1e3 * percentile(rep, 0.99));
  std::cout << fmt::format("  all unary   p50 {:.2f} ms  p99 {:.2f} ms (target p99 < 50 ms)\n",
                           1e3 * percentile(both, 0.5), 1e3 * percentile(both, 0.99));
  std::cout << "  as the coordinator measures its handlers (histogram bucket bounds):\n";
  for (const char* method : {"Heartbeat", "ReportStep"}) {
    const auto b0 = buckets(metrics0, method), b1 = buckets(metrics1, method);
    if (b1.empty()) continue;
    std::cout << fmt::format("  {:<10}  p50 <= {:g} ms  p99 <= {:g} ms\n", method, 1e3 * bucket_percentile(b0, b1, 0.5),
                             1e3 * bucket_percentile(b0, b1, 0.99));
  }
  std::cout << fmt::format(
      "  CPU: coordinator {:.2f} cores ({:.1f} s in {:.1f} s), the simulated fleet {:.2f} cores; machine has {} "
      "cores\n",
      cpu / wall, cpu, wall, self / wall, std::thread::hardware_concurrency());
  return 0;
}
