#include "launch/run.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <mpi.h>

#include "client/client.h"
#include "common/auth.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "common/process_memory.h"
#include "coordinator/job.h"
#include "host/coordinator_host.h"
#include "host/signals.h"
#include "launch/discovery.h"
#include "worker/train/trainer.h"

namespace herd::launch {

namespace v1 = herd::v1;

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

// This host's name as other hosts can resolve it: the canonical name (a pod's
// /etc/hosts gives POD.SUBDOMAIN.NAMESPACE.svc... for its short host name, which
// the other pods cannot resolve), else the host name.
std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  addrinfo hints{};
  hints.ai_flags = AI_CANONNAME;
  addrinfo* found = nullptr;
  std::string out = name;
  if (::getaddrinfo(name, nullptr, &hints, &found) == 0) {
    if (found->ai_canonname && *found->ai_canonname) out = found->ai_canonname;
    ::freeaddrinfo(found);
  }
  return out;
}

std::string port_of(const std::string& address) { return address.substr(address.rfind(':') + 1); }

// What resumes a stopped job in the way this worker was launched (the stop message).
std::string resume_how(const Launch& launch) {
  if (const char* how = std::getenv("HERD_RESUME_HOW")) return how;  // herd train's worker processes
  if (launch.source == "slurm") return "submit the same sbatch line again";
  if (launch.source == "openmpi" || launch.source == "pmi") return "run the same mpirun line again";
  if (launch.source == "torchrun") return "run the same torchrun line again";
  if (launch.source == "kubernetes" || launch.source == "kubeflow") return "apply the job's kit again";
  return "start herd-coordinator and its workers again with the same config";
}

std::string herd_train_resume(const std::string& config_path) {
  return fmt::format("`herd train {} --resume`", config_path);
}

// One worker: trains until the job ends for it; answers the exit status.
int train_as_worker(const Config& config, const client::ClientOptions& client, int local_rank,
                    const std::string& resume, const volatile std::sig_atomic_t* stop) {
  client::SessionOptions session_options;
  session_options.client = client;
  session_options.job_id = config.model_name;
  session_options.host = host_name();
  session_options.device = herd::train::training_device_name(config, local_rank);
  session_options.settings = shared_settings(config);
  client::WorkerSession session(session_options);
  herd::train::WorkerOptions options;
  options.gloo_hostname = local_address_towards(client.address.substr(0, client.address.rfind(':')));
  options.local_rank = local_rank;
  options.stop = stop;
  options.resume_how = resume;
  options.progress_bar = ::isatty(STDERR_FILENO) != 0;
  options.on_gang = [](const client::Gang& gang, int64_t held, int64_t whole) {
    std::cout << fmt::format("rank {} of {} (attempt {}): base weights held {} of {} bytes; resident {} MiB",
                             gang.rank, gang.world_size, gang.attempt, held, whole,
                             process_memory().resident_bytes >> 20)
              << std::endl;
  };
  try {
    return herd::train::run_worker(config, session, options).interrupted ? host::kInterrupted : 0;
  } catch (const client::JobOver& e) {
    // The job ended without this worker (a spare), or otherwise.
    std::cout << "herd worker: " << e.what() << std::endl;
    return coordinator::exit_status(e.state());
  }
}

// The job's config as the coordinator serves it (a worker started with only its
// address, as a Kubernetes pod is).
Config config_from_coordinator(const client::ClientFlags& flags) {
  const auto options = client::client_options(flags, nullptr, process_env());
  v1::JobConfig reply;
  const auto s = client::Coordinator(options).job_config(&reply);
  if (!s.ok()) {
    throw std::runtime_error(
        fmt::format("the coordinator at {} did not give its config: {}", flags.address, client::describe(s)));
  }
  return parse_config(reply.yaml(), fmt::format("{} (from the coordinator at {})", reply.source(), flags.address));
}

}  // namespace

int run_worker_process(const WorkerArgs& args) {
  Launch launch;
  std::optional<Config> config;
  client::ClientFlags flags = args.flags;
  try {
    launch = detect_launch(flags.address, process_env());
    flags.address = launch.coordinator;
    if (!args.config_path.empty()) {
      config = load_config(args.config_path);
    } else if (launch.coordinator.empty() || launch.hosts_coordinator) {
      throw std::runtime_error("CONFIG is needed: this rank hosts the job's coordinator");
    } else {
      config = config_from_coordinator(flags);
    }
  } catch (const std::exception& e) {
    std::cerr << "herd worker: " << e.what() << "\n";
    return 1;
  }
  const bool mpi = launch.source == "openmpi" && launch.coordinator.empty();
  try {
    auto token = resolve_token(flags.token_file, &config->security, process_env());
    std::optional<host::CoordinatorHost> hosted;
    if (mpi) {
      // Rank 0 hosts the coordinator; MPI carries its address and token to the others.
      MPI_Init(nullptr, nullptr);  // before the handlers: OpenMPI installs some of its own
      char text[512] = {};
      if (*launch.rank == 0) {
        if (!token) token = host::random_token();
        hosted.emplace(*config, host::HostOptions{"0.0.0.0:0", *token, *launch.world_size});
        std::snprintf(text, sizeof text, "%s", fmt::format("{}:{}\n{}", host_name(), hosted->port(), *token).c_str());
      }
      MPI_Bcast(text, sizeof text, MPI_CHAR, 0, MPI_COMM_WORLD);
      const std::string shared(text);
      flags.address = shared.substr(0, shared.find('\n'));
      token = shared.substr(shared.find('\n') + 1);
    } else if (launch.hosts_coordinator) {
      if (!token) {
        throw AuthError(fmt::format("under {} every rank needs the job token: set HERD_JOB_TOKEN or "
                                    "security.token_file",
                                    launch.source));
      }
      hosted.emplace(*config, host::HostOptions{"0.0.0.0:" + port_of(flags.address), *token, *launch.world_size});
    }
    if (token) flags.token = *token;
    const auto client = client::client_options(flags, &config->security, process_env());
    const auto* stop = host::stop_on_signals();
    // The launcher's rank and size where it gives both (a Kubernetes index alone is a hint);
    // the gang's are printed once it is formed.
    const std::string rank = !launch.rank        ? ""
                             : launch.world_size ? fmt::format(" (rank {} of {})", *launch.rank, *launch.world_size)
                                                 : fmt::format(" (index {})", *launch.rank);
    std::cout << fmt::format("herd worker: launched by {}{}; coordinator {}{}", launch.source, rank, client.address,
                             hosted ? " (hosted here)" : "")
              << std::endl;
    const int rc = train_as_worker(*config, client, launch.local_rank, resume_how(launch), stop);
    if (hosted) hosted->finish(30);  // the other ranks see the job's end first
    if (mpi) {
      MPI_Barrier(MPI_COMM_WORLD);
      hosted.reset();
      MPI_Finalize();
    }
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "herd worker: " << e.what() << "\n";
    return 1;
  }
}

namespace {

// N `herd worker` processes of the hosted coordinator; a signal is passed on to
// them once (they are in a process group of their own, so a terminal's Ctrl-C
// reaches only this process).
int supervise(host::CoordinatorHost& hosted, const std::string& config_path, int workers, const std::string& self,
              const std::string& token, const volatile std::sig_atomic_t* stop) {
  const std::string address = fmt::format("127.0.0.1:{}", hosted.port());
  std::cout << fmt::format("herd train: coordinator on {}, {} worker processes", address, workers) << std::endl;
  const pid_t parent = ::getpid();
  std::vector<pid_t> children;
  for (int i = 0; i < workers; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the supervisor died: stop at a checkpoint
      if (::getppid() != parent) ::_exit(1);
      ::setenv("HERD_JOB_TOKEN", token.c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(i).c_str(), 1);  // its GPU, its metrics port
      ::setenv("HERD_RESUME_HOW", herd_train_resume(config_path).c_str(), 1);
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
  host::kill_on_second_signal(children);
  bool forwarded = false, failed = false;
  for (size_t left = children.size(); left > 0;) {
    if (*stop && !forwarded) {
      for (pid_t c : children) ::kill(c, SIGINT);
      forwarded = true;
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    if (pid < 0) break;
    --left;
    const bool ok = WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == host::kInterrupted);
    if (!ok) {
      failed = true;
      std::cerr << fmt::format("herd train: worker process {} ended with {}", pid,
                               WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                                 : fmt::format("signal {}", WTERMSIG(status)))
                << "\n";
    }
  }
  host::kill_on_second_signal({});
  v1::JobStatus status;
  hosted.job().GetStatus(&status, false);
  hosted.finish(0);
  if (status.state() != v1::DONE && status.state() != v1::STOPPED) {
    std::cerr << fmt::format("herd train: the job ended {}{}\n", v1::JobState_Name(status.state()),
                             status.message().empty() ? "" : ": " + status.message());
    return 1;
  }
  return failed ? 1 : coordinator::exit_status(status.state());
}

}  // namespace

int run_local(const Config& config, int workers, bool resume, const std::string& self) {
  if (workers == 0 && config.distributed.world_size != 1) {
    std::cerr << fmt::format("herd train: herd train runs one local worker; distributed.world_size is {} "
                             "(use --workers N, or start herd-coordinator and herd worker processes)\n",
                             config.distributed.world_size);
    return 1;
  }
  const auto* stop = host::stop_on_signals();
  try {
    resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");  // before the data: a clear first error
    const std::string token = resolve_token("", &config.security, process_env()).value_or(host::random_token());
    host::CoordinatorHost hosted(
        config, {"127.0.0.1:0", token, std::max(workers, 1), !resume && config.checkpoint.resume != "auto"});
    if (workers > 0) return supervise(hosted, config.source.string(), workers, self, token, stop);
    const int rc =
        train_as_worker(config, hosted.client_options("127.0.0.1"), 0, herd_train_resume(config.source.string()), stop);
    hosted.finish(0);
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "\nherd train: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace herd::launch
