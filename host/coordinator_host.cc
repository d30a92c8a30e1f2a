#include "host/coordinator_host.h"

#include <chrono>
#include <fstream>
#include <iostream>
#include <numeric>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "coordinator/job.h"
#include "coordinator/service.h"

namespace herd::host {

namespace fs = std::filesystem;
namespace co = herd::coordinator;
namespace v1 = herd::v1;

std::string random_token() {
  std::random_device rd;
  return fmt::format("{:016x}{:016x}", (uint64_t{rd()} << 32) | rd(), (uint64_t{rd()} << 32) | rd());
}

namespace {

bool over(v1::JobState s) { return s == v1::DONE || s == v1::STOPPED || s == v1::FAILED; }

// The job of `config`: its dataset (or `synthetic` samples) and the journal at `journal`.
std::unique_ptr<co::Job> make_job(const Config& config, const fs::path& journal, const std::vector<uint32_t>& synthetic,
                                  const std::string& who) {
  if (synthetic.empty()) {
    auto job = co::load_job(config, journal);
    for (const auto& w : job->resume_warnings()) std::cerr << who << ": warning: " << w << "\n";
    return job;
  }
  auto samples = std::make_shared<co::SyntheticSamples>(synthetic.at(0), synthetic.at(1), synthetic.at(2),
                                                        static_cast<uint64_t>(config.trainer.seed));
  std::vector<size_t> train(samples->size());
  std::iota(train.begin(), train.end(), size_t{0});
  return std::make_unique<co::Job>(co::JobSettings::from_config(config), samples, std::move(train), journal);
}

}  // namespace

CoordinatorHost::CoordinatorHost(const Config& config, const HostOptions& options)
    : config_(config), options_(options) {
  if (options_.world_size > 0) config_.set_world_size(options_.world_size);
  if (options_.state_dir.empty()) options_.state_dir = fs::path(config_.trainer_output_dir) / "coordinator";
  const fs::path journal = options_.state_dir / "journal.log";
  if (options_.fresh) fs::remove(journal);
  const std::string& who = options_.who;
  job_ = make_job(config_, journal, options_.synthetic, who);
  const auto [most, mean] = job_->epoch_imbalance(0);
  std::cout << fmt::format("{}: plan: global batch {} rows, epoch 0 tokens per rank per step: max/mean {:.3f} at "
                           "worst, {:.3f} on average\n",
                           who, job_->settings().global_batch(), most, mean);
  if (const auto packing = job_->packing_summary(); !packing.empty()) std::cout << who << ": " << packing << "\n";
  auto server_options = co::ServerOptions::from_config(config_, options_.listen, options_.token);
  if (!options_.metrics_listen.empty()) server_options.metrics_listen = options_.metrics_listen;
  server_options.health_listen = options_.health_listen;
  server_ = std::make_unique<co::CoordinatorServer>(*job_, server_options);
  write_endpoint();
  std::cout << fmt::format("{}: job {}: {} steps ({} per epoch) for {} workers; journal {}; serving on port {}{}{}{}",
                           who, config_.model_name, job_->total_steps(), job_->steps_per_epoch(),
                           config_.distributed.world_size, journal.string(), server_->port(),
                           server_options.tls_cert_pem.empty() ? "" : " (TLS)",
                           server_->health_port() ? fmt::format("; health on port {}", server_->health_port()) : "",
                           server_->metrics_port() ? fmt::format("; metrics on port {}", server_->metrics_port()) : "")
            << std::endl;
}

CoordinatorHost::~CoordinatorHost() {
  if (server_) server_->shutdown();
}

// Where it serves, for people and scripts (`herd status --coordinator HOST:PORT`).
void CoordinatorHost::write_endpoint() const {
  const fs::path endpoint = options_.state_dir / "endpoint.json";
  const fs::path tmp = endpoint.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << nlohmann::json{{"port", server_->port()},
                          {"metrics_port", server_->metrics_port()},
                          {"tls", !config_.security.tls_cert.empty()}}
               .dump()
        << "\n";
    close_file(out, tmp);
  }
  fs::rename(tmp, endpoint);
}

int CoordinatorHost::port() const { return server_->port(); }

client::ClientOptions CoordinatorHost::client_options(const std::string& host) const {
  client::ClientFlags flags;
  flags.address = fmt::format("{}:{}", host, server_->port());
  flags.token = options_.token;
  return client::client_options(flags, &config_.security, process_env());
}

int CoordinatorHost::serve(const volatile std::sig_atomic_t* stop, bool stay) {
  const std::string& who = options_.who;
  v1::JobStatus last;
  std::optional<std::chrono::steady_clock::time_point> ended;
  // Every live worker calls within its heartbeat interval (at most 1 s); one that
  // does not within the heartbeat timeout is not waited for.
  const auto grace = std::chrono::duration<double>(config_.distributed.heartbeat_timeout_s);
  while (!*stop) {
    v1::JobStatus now;
    job_->GetStatus(&now, false);
    if (now.state() != last.state() || now.attempt() != last.attempt() || now.message() != last.message()) {
      std::cout << fmt::format("{}: {} attempt {} step {}/{}{}\n", who, v1::JobState_Name(now.state()), now.attempt(),
                               now.committed_step(), now.total_steps(), now.message().empty() ? "" : ": " + now.message())
                << std::flush;
      last = now;
    }
    if (over(now.state()) && !ended) ended = std::chrono::steady_clock::now();
    if (over(now.state()) && !stay) {
      const bool told = job_->everyone_told();
      if (told || std::chrono::steady_clock::now() - *ended > grace) {
        const int code = co::exit_status(now.state());
        std::cout << fmt::format("{}: the job is {}; {}; exiting {}\n", who, v1::JobState_Name(now.state()),
                                 told ? "every live worker knows"
                                      : fmt::format("a worker did not call within {} s", grace.count()),
                                 code)
                  << std::flush;
        server_->shutdown();
        return code;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  server_->shutdown();
  return stay ? 0 : ended ? co::exit_status(last.state()) : co::kExitStopped;
}

void CoordinatorHost::finish(double grace_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (!over(job_->state()) && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  server_->shutdown();
}

}  // namespace herd::host
