// `herd-coordinator`: the job's coordinator as its own process. Links no libtorch,
// so it runs in a small CPU-only container. A batch job's: once the job has ended
// and every live worker knows it, it exits — 0 when DONE, 1 when FAILED (or
// cancelled), 130 when STOPPED (drained) or stopped by a signal first; with --stay
// it serves until a signal (a Deployment) and then exits 0.
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "common/auth.h"
#include "common/config.h"
#include "common/env.h"
#include "common/version.h"
#include "coordinator/journal.h"
#include "coordinator/job.h"
#include "host/coordinator_host.h"
#include "host/signals.h"

namespace {

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
  herd::host::HostOptions host{listen, "", world_size};
  host.state_dir = state_dir.empty() ? std::filesystem::path(config.trainer_output_dir) / "coordinator"
                                     : std::filesystem::path(state_dir);
  host.metrics_listen = metrics_listen;
  host.health_listen = health_listen;
  host.synthetic = synthetic;
  host.who = "herd-coordinator";
  try {
    if (sample_log) return print_sample_log(host.state_dir / "journal.log");
    auto token = herd::resolve_token(token_file, &config.security, herd::process_env());
    if (!token) {
      std::cerr << "herd-coordinator: no job token: pass --token-file, set HERD_JOB_TOKEN, or set "
                   "security.token_file in the config\n";
      return 1;
    }
    host.token = *token;
    herd::host::CoordinatorHost coordinator(config, host);
    if (!port_file.empty()) {
      const std::string tmp = port_file + ".tmp";
      std::ofstream(tmp) << coordinator.port() << "\n";
      std::filesystem::rename(tmp, port_file);
    }
    return coordinator.serve(herd::host::stop_on_signals(), stay);
  } catch (const std::exception& e) {
    std::cerr << "herd-coordinator: " << e.what() << "\n";
    return 1;
  }
}
