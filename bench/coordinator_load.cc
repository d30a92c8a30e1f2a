// One herd-coordinator process, N simulated workers (each its own connection)
// heartbeating every second and training a step a second: the coordinator's RPC
// latency as the workers see it (p50/p99) and its CPU use, over a measured window
// that starts once the gang has formed.
//
//   herd_bench_coordinator_load [--workers 1024] [--seconds 60]
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
#include <thread>

#include <fmt/format.h>

#include "coordinator/auth.h"
#include "coordinator/sim_worker.h"

namespace fs = std::filesystem;
namespace co = herd::coordinator;

namespace {

constexpr const char* kToken = "bench-token-0123456789";

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
                                   "--synthetic-data", fmt::format("{},64,512", samples)};
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, cargv[0], nullptr, nullptr, cargv.data(), environ) != 0) {
    std::cerr << "cannot start " << cargv[0] << "\n";
    return 1;
  }
  while (!fs::exists(dir / "port")) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  int port = 0;
  std::ifstream(dir / "port") >> port;
  const std::string address = fmt::format("127.0.0.1:{}", port);

  std::vector<std::unique_ptr<co::SimWorker>> sims;
  for (size_t i = 0; i < workers; ++i) {
    co::SimWorkerOptions o;
    o.client = {address, kToken, ""};
    o.job_id = "bench";
    o.host = fmt::format("sim-{}", i);
    o.heartbeat_interval_s = 1.0;
    o.step_seconds = 1.0;
    o.checkpoint_every = 30;
    sims.push_back(std::make_unique<co::SimWorker>(o));
    sims.back()->start();
  }
  const auto t_start = std::chrono::steady_clock::now();
  // The window starts once every worker has trained a step (the gang is formed).
  while (std::any_of(sims.begin(), sims.end(), [](const auto& s) { return s->steps_trained() == 0; })) {
    if (std::chrono::steady_clock::now() - t_start > std::chrono::minutes(5)) {
      std::cerr << "the gang did not form in 5 minutes\n";
      ::kill(pid, SIGKILL);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double formed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::vector<size_t> hb0, rep0;
  uint64_t steps0 = sims[0]->steps_trained();
  for (auto& s : sims) {
    hb0.push_back(s->heartbeat_latencies().size());
    rep0.push_back(s->report_latencies().size());
  }
  const double cpu0 = cpu_seconds(pid);
  const auto w0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  const double cpu = cpu_seconds(pid) - cpu0;
  const uint64_t steps = sims[0]->steps_trained() - steps0;
  std::vector<float> hb, rep;
  for (size_t i = 0; i < sims.size(); ++i) {
    auto h = sims[i]->heartbeat_latencies();
    hb.insert(hb.end(), h.begin() + static_cast<std::ptrdiff_t>(hb0[i]), h.end());
    auto r = sims[i]->report_latencies();
    rep.insert(rep.end(), r.begin() + static_cast<std::ptrdiff_t>(rep0[i]), r.end());
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  sims.clear();
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
  std::cout << fmt::format("  coordinator CPU: {:.2f} cores ({:.1f} s of CPU in {:.1f} s); machine has {} cores\n",
                           cpu / wall, cpu, wall, std::thread::hardware_concurrency());
  return 0;
}
