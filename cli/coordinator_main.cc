// `herd-coordinator`: the job's coordinator as its own process. Links no libtorch,
// so it runs in a small CPU-only container.
#include <csignal>
#include <fstream>
#include <iostream>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "common/config.h"
#include "common/version.h"
#include "coordinator/service.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"herd-coordinator: owns a herd job, schedules its workers and streams their data"};
  app.set_version_flag(
      "--version", [] { return fmt::format("herd-coordinator {} (git {})", herd::version(), herd::git_revision()); });
  std::string config_path;
  std::string listen = "0.0.0.0:29400";
  std::string port_file;
  app.add_option("--config", config_path, "The job's YAML config")->required();
  app.add_option("--listen", listen, "HOST:PORT to serve on (port 0 picks a free one)")->capture_default_str();
  app.add_option("--port-file", port_file, "Write the bound port to this file once serving");
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

  try {
    herd::coordinator::CoordinatorServer server(herd::coordinator::JobSettings::from_config(config), listen);
    std::cout << fmt::format("herd-coordinator: job {} serving on port {}\n", config.model_name, server.port())
              << std::flush;
    if (!port_file.empty()) {
      std::ofstream(port_file) << server.port() << "\n";
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server.shutdown();
  } catch (const std::exception& e) {
    std::cerr << "herd-coordinator: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
