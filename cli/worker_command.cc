#include "cli/worker_command.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <mpi.h>

#include "common/config.h"
#include "common/launch.h"
#include "coordinator/auth.h"
#include "coordinator/job.h"
#include "coordinator/service.h"
#include "herd/proto/herd.grpc.pb.h"
#include "worker/train/checkpoint.h"
#include "worker/train/link.h"
#include "worker/train/trainer.h"

namespace herd::cli {

namespace co = herd::coordinator;

namespace {

// The local address packets to `host` leave from: the one other ranks on the
// coordinator's network reach this worker at.
std::string local_address_towards(const std::string& host) {
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (::getaddrinfo(host.c_str(), "9", &hints, &found) != 0 || !found) return "";
  std::string out;
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
    sockaddr_in me{};
    socklen_t len = sizeof me;
    char text[INET_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &len) == 0 &&
        ::inet_ntop(AF_INET, &me.sin_addr, text, sizeof text)) {
      out = text;
    }
  }
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(found);
  return out;
}

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

// This process's resident memory now (VmRSS), in MiB.
int64_t resident_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) / 1024;
  }
  return 0;
}

std::string random_token() {
  std::random_device rd;
  return fmt::format("{:016x}{:016x}", (uint64_t{rd()} << 32) | rd(), (uint64_t{rd()} << 32) | rd());
}

// A coordinator inside this process (rank 0 under mpirun or torchrun, or `herd
// train --workers N`).
struct Embedded {
  std::unique_ptr<co::Job> job;
  std::unique_ptr<co::CoordinatorServer> server;
};

// `journal`: keep the job's journal in {trainer_output_dir}/coordinator, so that a
// restarted launch resumes the job (else a run starts afresh, as `herd train` does).
Embedded host_coordinator(Config config, int world_size, const std::string& listen, const std::string& token,
                          bool journal) {
  config.distributed.world_size = world_size;
  Embedded e;
  e.job = co::load_job(config, journal ? std::filesystem::path(config.trainer_output_dir) / "coordinator" / "journal.log"
                                       : std::filesystem::path());
  co::ServerOptions options;
  options.listen = listen;
  options.token = token;
  options.config_yaml = config.text;
  options.config_source = std::filesystem::absolute(config.source).string();
  e.server = std::make_unique<co::CoordinatorServer>(*e.job, options);
  return e;
}

// The job's config as the coordinator serves it (a worker started with only its
// address, as a Kubernetes pod is). The token comes from the flag or the environment.
Config config_from_coordinator(const std::string& address, const std::string& token_file) {
  co::ClientOptions client;
  client.address = address;
  auto token = co::resolve_token(token_file, nullptr, process_env());
  if (!token) throw co::AuthError("no job token: pass --token-file or set HERD_JOB_TOKEN");
  client.token = *token;
  auto stub = herd::v1::Coordinator::NewStub(co::make_channel(client));
  herd::v1::JobConfig reply;
  grpc::Status status;
  for (int attempt = 0; attempt < 60; ++attempt) {  // the coordinator may be starting
    grpc::ClientContext context;
    co::prepare(context, client.token, std::chrono::seconds(10));
    status = stub->GetJobConfig(&context, herd::v1::GetJobConfigRequest(), &reply);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (!status.ok()) {
    throw std::runtime_error(fmt::format("the coordinator at {} did not give its config: {}", address,
                                         status.error_message()));
  }
  return parse_config(reply.yaml(), fmt::format("{} (from the coordinator at {})", reply.source(), address));
}

int train_as_worker(const Config& config, const co::ClientOptions& client, int local_rank) {
  auto link = herd::train::grpc_link(client, config.model_name);
  herd::train::TrainHooks hooks;
  hooks.print = [](const std::string& line) { std::cout << line << std::endl; };
  herd::train::WorkerOptions options;
  options.host = host_name();
  const auto host = client.address.substr(0, client.address.rfind(':'));
  options.gloo_hostname = local_address_towards(host);
  options.local_rank = local_rank;
  options.on_gang = [](const herd::train::Gang& gang, int64_t held, int64_t whole) {
    std::cout << fmt::format("rank {} of {} (attempt {}): base weights held {} of {} bytes; resident {} MiB",
                             gang.rank, gang.world_size, gang.attempt, held, whole, resident_mib())
              << std::endl;
  };
  try {
    herd::train::run_worker(config, *link, hooks, options);
    return 0;
  } catch (const herd::train::JobOver& e) {
    // The job finished without this worker (a spare), or ended otherwise.
    std::cout << "herd worker: " << e.what() << std::endl;
    return std::string(e.what()).find("DONE") != std::string::npos ? 0 : 1;
  }
}

}  // namespace

int worker_command(const WorkerArgs& args) {
  Launch launch;
  std::optional<Config> config;
  try {
    launch = detect_launch(args.coordinator, process_env());
    if (!args.config_path.empty()) {
      config = load_config(args.config_path);
    } else if (launch.coordinator.empty()) {
      throw std::runtime_error("without --coordinator, CONFIG is needed (this rank hosts the coordinator)");
    } else {
      config = config_from_coordinator(launch.coordinator, args.token_file);
    }
  } catch (const std::exception& e) {
    std::cerr << "herd worker: " << e.what() << "\n";
    return 1;
  }
  try {
    auto token = co::resolve_token(args.token_file, &config->security, process_env());
    co::ClientOptions client;
    client.address = launch.coordinator;
    if (!config->security.tls_ca.empty()) client.tls_ca_pem = co::read_secret_file(config->security.tls_ca, "tls_ca");
    std::optional<Embedded> embedded;

    if (launch.source == "openmpi" && launch.coordinator.empty()) {
      // Rank 0 hosts the coordinator; MPI carries its address and token to the others.
      MPI_Init(nullptr, nullptr);
      char text[512] = {};
      if (*launch.rank == 0) {
        const std::string t = token.value_or(random_token());
        embedded = host_coordinator(*config, *launch.world_size, "0.0.0.0:0", t, true);
        const auto shared = fmt::format("{}:{}\n{}", host_name(), embedded->server->port(), t);
        std::snprintf(text, sizeof text, "%s", shared.c_str());
      }
      MPI_Bcast(text, sizeof text, MPI_CHAR, 0, MPI_COMM_WORLD);
      const std::string shared(text);
      client.address = shared.substr(0, shared.find('\n'));
      token = shared.substr(shared.find('\n') + 1);
    } else if (launch.source == "torchrun" && *launch.rank == 0 && args.coordinator.empty()) {
      if (!token) throw co::AuthError("under torchrun the job token must come from HERD_JOB_TOKEN or the config");
      const auto port = launch.coordinator.substr(launch.coordinator.rfind(':') + 1);
      embedded = host_coordinator(*config, *launch.world_size, "0.0.0.0:" + port, *token, true);
    }
    if (!token) {
      std::cerr << "herd worker: no job token: pass --token-file, set HERD_JOB_TOKEN, or set security.token_file\n";
      return 1;
    }
    client.token = *token;
    std::cout << fmt::format("herd worker: launched by {}{}; coordinator {}{}", launch.source,
                             launch.rank ? fmt::format(" (rank {} of {})", *launch.rank, *launch.world_size) : "",
                             client.address, embedded ? " (hosted here)" : "")
              << std::endl;
    const int rc = train_as_worker(*config, client, launch.local_rank);
    if (launch.source == "openmpi" && args.coordinator.empty()) {
      MPI_Barrier(MPI_COMM_WORLD);  // rank 0's coordinator serves until every rank is done
      embedded.reset();
      MPI_Finalize();
    } else if (embedded) {
      // Serve until the other ranks have seen the end.
      for (int i = 0; i < 50 && embedded->job->state() != herd::v1::DONE; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "herd worker: " << e.what() << "\n";
    return 1;
  }
}

int local_workers_command(const std::string& config_path, int workers, bool resume, const std::string& self) {
  std::optional<Config> config;
  try {
    config = load_config(config_path);
  } catch (const std::exception& e) {
    std::cerr << "herd train: " << e.what() << "\n";
    return 1;
  }
  try {
    const std::string token = random_token();
    auto embedded = host_coordinator(*config, workers, "127.0.0.1:0", token, false);
    if (resume || config->checkpoint.resume == "auto") {
      std::vector<std::string> warnings;
      auto from = herd::train::newest_checkpoint(config->trainer_output_dir, &warnings);
      for (const auto& w : warnings) std::cerr << "herd train: warning: " << w << "\n";
      if (from) embedded.job->resume_from(from->step, from->dir.string());
    }
    const std::string address = fmt::format("127.0.0.1:{}", embedded.server->port());
    std::cout << fmt::format("herd train: coordinator on {}, {} worker processes", address, workers) << std::endl;
    std::vector<pid_t> children;
    for (int i = 0; i < workers; ++i) {
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::setenv("HERD_JOB_TOKEN", token.c_str(), 1);
        // The workers share this machine's cores (as torchrun does, unless told).
        const auto threads = std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(workers));
        ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 0);
        ::execl(self.c_str(), self.c_str(), "worker", config_path.c_str(), "--coordinator", address.c_str(),
                static_cast<char*>(nullptr));
        std::perror("herd train: exec herd worker");
        ::_exit(127);
      }
      children.push_back(pid);
    }
    int failed = 0;
    for (size_t left = children.size(); left > 0; --left) {
      int status = 0;
      const pid_t pid = ::wait(&status);
      if (pid < 0) break;
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        ++failed;
        std::cerr << fmt::format("herd train: worker process {} ended with {}", pid,
                                 WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                                   : fmt::format("signal {}", WTERMSIG(status)))
                  << "\n";
      }
    }
    herd::v1::JobStatus status;
    embedded.job->GetStatus(&status, false);
    embedded.server->shutdown();
    if (status.state() != herd::v1::DONE) {
      std::cerr << fmt::format("herd train: the job ended {}{}\n", herd::v1::JobState_Name(status.state()),
                               status.message().empty() ? "" : ": " + status.message());
      return 1;
    }
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "herd train: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace herd::cli
