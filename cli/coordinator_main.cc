// `herd-coordinator`: the job's coordinator as its own process. Links no libtorch,
// so it runs in a small CPU-only container. A batch job's: once the job has ended
// and every live worker knows it, it exits — 0 when DONE, 1 when FAILED (or
// cancelled), 130 when STOPPED (drained) or stopped by a signal first; with --stay
// it serves until a signal (a Deployment) and then exits 0.
#include <csignal>
#include <fstream>
#include <iostream>
#include <numeric>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "common/config.h"
#include "common/version.h"
#include "common/auth.h"
#include "common/env.h"
#include "coordinator/job.h"
#include "coordinator/service.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

namespace co = herd::coordinator;

// One line per committed sample set: "STEP ID ID ...", the journal's lineage.
int print_sample_log(const std::filesystem::path& journal_file) {
  co::Journal journal(journal_file);
  for (const auto& [step, samples] : co::trained_samples(journal.records())) {
    std::cout << step << " " << fmt::format("{}", fmt::join(samples, " ")) << "\n";
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"herd-coordinator: owns a herd job, schedules its workers and streams their data"};
  app.set_version_flag(
      "--version", [] { return fmt::format("herd-coordinator {} (git {})", herd::version(), herd::git_revision()); });
  std::string config_path, listen = "0.0.0.0:29400", port_file, token_file, state_dir, metrics_listen, health_listen;
  bool sample_log = false, stay = false;
  int64_t world_size = 0;
  std::vector<uint32_t> synthetic;
  app.add_option("--config", config_path, "The job's YAML config")->required();
  app.add_option("--listen", listen, "HOST:PORT to serve on (port 0 picks a free one)")->capture_default_str();
  app.add_option("--port-file", port_file, "Write the bound port to this file once serving");
  app.add_option("--token-file", token_file, "File holding the job token (else $HERD_JOB_TOKEN, security.*)");
  app.add_option("--state-dir", state_dir, "Where the journal lives (default: {trainer_output_dir}/coordinator)");
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT of the Prometheus endpoint (default: 0.0.0.0:{metrics.port} when metrics.enabled)");
  app.add_option("--health-listen", health_listen,
                 "HOST:PORT of a plaintext port that serves only the gRPC health service (for probes that speak no "
                 "TLS, as Kubernetes' do)");
  app.add_option("--world-size", world_size, "Workers in the gang, in place of distributed.world_size (a Job's "
                 "completions)")
      ->check(CLI::PositiveNumber);
  app.add_option("--synthetic-data", synthetic,
                 "Serve COUNT synthetic samples of MIN..MAX tokens instead of the config's dataset (load tests)")
      ->expected(3)
      ->delimiter(',');
  app.add_flag("--stay", stay, "Keep serving after the job has ended, until SIGINT or SIGTERM (a Deployment)");
  app.add_flag("--sample-log", sample_log, "Print the samples of every committed step from the journal, and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  herd::Config config;
  try {
    config = herd::load_config(config_path);
  } catch (const herd::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  if (world_size > 0) config.set_world_size(world_size);
  const std::filesystem::path dir =
      state_dir.empty() ? std::filesystem::path(config.trainer_output_dir) / "coordinator" : std::filesystem::path(state_dir);
  const auto journal_file = dir / "journal.log";

  try {
    if (sample_log) return print_sample_log(journal_file);
    auto token = herd::resolve_token(token_file, &config.security, herd::process_env());
    if (!token) {
      std::cerr << "herd-coordinator: no job token: pass --token-file, set HERD_JOB_TOKEN, or set "
                   "security.token_file in the config\n";
      return 1;
    }
    auto options = co::ServerOptions::from_config(config, listen, *token);
    if (!metrics_listen.empty()) options.metrics_listen = metrics_listen;
    options.health_listen = health_listen;

    std::unique_ptr<co::Job> job;
    if (synthetic.empty()) {
      job = co::load_job(config, journal_file);
      for (const auto& w : job->resume_warnings()) std::cerr << "herd-coordinator: warning: " << w << "\n";
    } else {
      auto samples = std::make_shared<co::SyntheticSamples>(synthetic[0], synthetic[1], synthetic[2],
                                                            static_cast<uint64_t>(config.trainer.seed));
      std::vector<size_t> train(samples->size());
      std::iota(train.begin(), train.end(), size_t{0});
      job = std::make_unique<co::Job>(co::JobSettings::from_config(config), samples, std::move(train), journal_file);
    }
    const auto [most, mean] = job->epoch_imbalance(0);
    std::cout << fmt::format("herd-coordinator: plan: global batch {} rows, epoch 0 tokens per rank per step: max/mean "
                             "{:.3f} at worst, {:.3f} on average\n",
                             job->settings().global_batch(), most, mean);
    if (const auto packing = job->packing_summary(); !packing.empty()) {
      std::cout << "herd-coordinator: " << packing << "\n";
    }
    co::CoordinatorServer server(*job, options);
    std::cout << fmt::format("herd-coordinator: job {}: {} steps ({} per epoch) for {} workers; journal {}; serving on "
                             "port {}{}{}{}\n",
                             config.model_name, job->total_steps(), job->steps_per_epoch(),
                             config.distributed.world_size, journal_file.string(), server.port(),
                             options.tls_cert_pem.empty() ? "" : " (TLS)",
                             server.health_port() ? fmt::format("; health on port {}", server.health_port()) : "",
                             server.metrics_port() ? fmt::format("; metrics on port {}", server.metrics_port()) : "")
              << std::flush;
    if (!port_file.empty()) {
      const std::string tmp = port_file + ".tmp";
      std::ofstream(tmp) << server.port() << "\n";
      std::filesystem::rename(tmp, port_file);
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    herd::v1::JobStatus last;
    std::optional<std::chrono::steady_clock::time_point> ended;
    // Every live worker calls within its heartbeat interval (at most 1 s); one that
    // does not within the heartbeat timeout is not waited for.
    const auto grace = std::chrono::duration<double>(config.distributed.heartbeat_timeout_s);
    while (!g_stop) {
      herd::v1::JobStatus now;
      job->GetStatus(&now, false);
      if (now.state() != last.state() || now.attempt() != last.attempt() || now.message() != last.message()) {
        std::cout << fmt::format("herd-coordinator: {} attempt {} step {}/{}{}\n",
                                 herd::v1::JobState_Name(now.state()), now.attempt(), now.committed_step(),
                                 now.total_steps(), now.message().empty() ? "" : ": " + now.message())
                  << std::flush;
        last = now;
      }
      const bool over = now.state() == herd::v1::DONE || now.state() == herd::v1::FAILED ||
                        now.state() == herd::v1::STOPPED;
      if (over && !ended) ended = std::chrono::steady_clock::now();
      if (over && !stay) {
        const bool told = job->everyone_told();
        if (told || std::chrono::steady_clock::now() - *ended > grace) {
          const int code = co::exit_status(now.state());
          std::cout << fmt::format("herd-coordinator: the job is {}; {}; exiting {}\n",
                                   herd::v1::JobState_Name(now.state()),
                                   told ? "every live worker knows"
                                        : fmt::format("a worker did not call within {} s", grace.count()),
                                   code)
                    << std::flush;
          server.shutdown();
          return code;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    server.shutdown();
    return stay ? 0 : ended ? co::exit_status(last.state()) : co::kExitStopped;
  } catch (const std::exception& e) {
    std::cerr << "herd-coordinator: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
