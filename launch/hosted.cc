#include "launch/hosted.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/auth.h"
#include "coordinator/job.h"
#include "coordinator/service.h"

namespace herd::launch {

namespace fs = std::filesystem;

std::string random_token() {
  std::random_device rd;
  return fmt::format("{:016x}{:016x}", (uint64_t{rd()} << 32) | rd(), (uint64_t{rd()} << 32) | rd());
}

client::ClientOptions worker_client_options(const Config& config, const std::string& address,
                                            const std::string& token) {
  client::ClientOptions o;
  o.address = address;
  o.token = token;
  const std::string& ca = !config.security.tls_ca.empty() ? config.security.tls_ca : config.security.tls_cert;
  if (!ca.empty()) o.tls_ca_pem = read_secret_file(ca, "the TLS CA (security.tls_ca)");
  o.tls_server_name = config.security.tls_server_name;
  return o;
}

HostedCoordinator::HostedCoordinator(const Config& config, const HostOptions& options)
    : config_(config), token_(options.token) {
  config_.set_world_size(options.world_size);
  const fs::path journal = fs::path(config_.trainer_output_dir) / "coordinator" / "journal.log";
  if (options.fresh) fs::remove(journal);
  job_ = coordinator::load_job(config_, journal);
  for (const auto& w : job_->resume_warnings()) std::cerr << "herd: warning: " << w << "\n";
  if (const auto packing = job_->packing_summary(); !packing.empty()) std::cout << "herd: " << packing << "\n";
  server_ = std::make_unique<coordinator::CoordinatorServer>(
      *job_, coordinator::ServerOptions::from_config(config_, options.listen, token_));
  // Where it serves, for people and scripts (`herd status --coordinator HOST:PORT`).
  const fs::path endpoint = journal.parent_path() / "endpoint.json";
  {
    std::ofstream out(endpoint.string() + ".tmp", std::ios::trunc);
    out << nlohmann::json{{"port", server_->port()},
                          {"metrics_port", server_->metrics_port()},
                          {"tls", !config_.security.tls_cert.empty()}}
               .dump()
        << "\n";
  }
  fs::rename(endpoint.string() + ".tmp", endpoint);
  std::cout << fmt::format("herd: coordinator of {} on port {}{}{}", config_.model_name, server_->port(),
                           config_.security.tls_cert.empty() ? "" : " (TLS)",
                           server_->metrics_port() ? fmt::format("; metrics on port {}", server_->metrics_port()) : "")
            << std::endl;
}

HostedCoordinator::~HostedCoordinator() {
  if (server_) server_->shutdown();
}

int HostedCoordinator::port() const { return server_->port(); }

client::ClientOptions HostedCoordinator::client_options(const std::string& host) const {
  return worker_client_options(config_, fmt::format("{}:{}", host, server_->port()), token_);
}

void HostedCoordinator::finish(double grace_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  auto ended = [&] {
    const auto s = job_->state();
    return s == herd::v1::DONE || s == herd::v1::STOPPED || s == herd::v1::FAILED;
  };
  while (!ended() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server_->shutdown();
}

}  // namespace herd::launch
