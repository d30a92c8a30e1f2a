#include "cli/status_command.h"

#include <iostream>

#include <fmt/format.h>

#include "common/auth.h"
#include "common/env.h"
#include "common/config.h"

namespace herd::cli {

std::optional<client::ClientOptions> client_options(const client::ClientFlags& flags, const std::string& config_path,
                                                    const char* who, bool need_token) {
  try {
    std::optional<Config> config;
    if (!config_path.empty()) config = load_config(config_path);
    return client::client_options(flags, config ? &config->security : nullptr, process_env(), need_token);
  } catch (const std::exception& e) {
    std::cerr << who << ": " << e.what() << "\n";
    return std::nullopt;
  }
}

void add_client_flags(CLI::App& command, client::ClientFlags& flags, std::string& config_path) {
  command.add_option("--coordinator", flags.address, "The coordinator, HOST:PORT")->required();
  command.add_option("--token-file", flags.token_file, "File holding the job token (else $HERD_JOB_TOKEN, the config's)");
  command.add_option("--tls-ca", flags.tls_ca,
                     "PEM CA to verify the coordinator's TLS certificate with (else $HERD_TLS_CA, the config's)");
  command.add_option("--tls-server-name", flags.tls_server_name,
                     "The name the coordinator's certificate is checked for (else $HERD_TLS_SERVER_NAME, the "
                     "config's; default: the host dialled)");
  command.add_option("--config", config_path, "The job's config (for its security section)");
}

int health(const client::ClientOptions& options, bool json) {
  std::string state;
  const grpc::Status s = client::Coordinator(options).health(&state);
  if (!s.ok()) {
    std::cerr << fmt::format("herd status: coordinator {} answered {}\n", options.address, client::describe(s));
    return 1;
  }
  std::cout << (json ? fmt::format("{{\"health\": \"{}\"}}", state) : state) << "\n";
  return state == "SERVING" ? 0 : 1;
}

std::optional<herd::v1::JobStatus> fetch_status(const client::ClientOptions& options, const char* who) {
  herd::v1::JobStatus reply;
  const grpc::Status s = client::Coordinator(options).status(&reply);
  if (!s.ok()) {
    std::cerr << fmt::format("{}: coordinator {} answered {}\n", who, options.address, client::describe(s));
    return std::nullopt;
  }
  return reply;
}

namespace {
std::string duration(double seconds) {
  const auto s = static_cast<long>(seconds);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}
}  // namespace

std::string format_status(const herd::v1::JobStatus& s) {
  std::string out = fmt::format("job {}: {}, attempt {}, step {}/{} (epoch {}), checkpoint {}", s.job_id(),
                                herd::v1::JobState_Name(s.state()), s.attempt(), s.committed_step(), s.total_steps(),
                                s.epoch(), s.checkpoint_step());
  if (s.committed_step() > 0) {
    out += fmt::format(", loss {:.4f}, rank imbalance {:.3f}", s.last_loss(), s.step_imbalance());
  }
  if (s.eta_seconds() > 0) out += ", ETA " + duration(s.eta_seconds());
  out += fmt::format("\nworkers: {} alive, gang of {} (world size {}), {} spare{}, accumulation {}{}\n",
                     s.registered_workers(), s.gang_size(), s.world_size(), s.spares(), s.spares() == 1 ? "" : "s",
                     s.gradient_accumulation_steps(),
                     s.attempt_reason().empty() ? "" : fmt::format(" (attempt formed by {})", s.attempt_reason()));
  if (!s.message().empty()) out += "message: " + s.message() + "\n";
  if (s.ranks_size() > 0) {
    out += fmt::format("{:>5}  {:<12}  {:<24}  {:>8}  {:>10}  {}\n", "rank", "worker", "host", "step", "tokens/s",
                       "last heartbeat");
    for (const auto& r : s.ranks()) {
      out += fmt::format("{:>5}  {:<12}  {:<24}  {:>8}  {:>10.1f}  {}\n", r.rank(), r.worker_id(), r.host(), r.step(),
                         r.tokens_per_second(),
                         r.seconds_since_heartbeat() < 0 ? std::string("dead")
                                                         : fmt::format("{:.1f} s ago", r.seconds_since_heartbeat()));
    }
  }
  return out;
}

}  // namespace herd::cli

namespace herd::cli {

int operator_call(const client::ClientOptions& options, const std::string& reason, bool cancel) {
  client::Coordinator coordinator(options);
  herd::v1::OperatorResponse reply;
  const grpc::Status s = cancel ? coordinator.cancel(reason, &reply) : coordinator.drain(&reply);
  const char* who = cancel ? "herd cancel" : "herd drain";
  if (!s.ok()) {
    std::cerr << fmt::format("{}: coordinator {} answered {}\n", who, options.address, client::describe(s));
    return 1;
  }
  std::cout << fmt::format("{}: the job is {}\n", who, herd::v1::JobState_Name(reply.state()));
  return 0;
}

}  // namespace herd::cli
