// The one coordinator host: a job's coordinator inside a process, with everything
// around the gRPC service (coordinator/service.h) that a process owns: the job
// loaded from its config and journal, the token, TLS, the gRPC health service, the
// Prometheus endpoint, where it serves, and its lifecycle until the job has ended.
// Torch-free: `herd-coordinator` runs it as a process of its own, and `herd train`
// and rank 0 under mpirun, srun, torchrun or Kubeflow run it beside a worker.
//
// Its journal is {state_dir}/journal.log ({trainer_output_dir}/coordinator unless
// told), so a restarted host resumes the job from its newest committed checkpoint.
// Where it serves is written to {state_dir}/endpoint.json: {"port", "metrics_port"
// (0: none), "tls"}.
#pragma once

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "client/options.h"
#include "common/config.h"

namespace herd::coordinator {
class Job;
class CoordinatorServer;
}  // namespace herd::coordinator

namespace herd::host {

struct HostOptions {
  std::string listen;       // HOST:PORT; port 0 picks a free one
  std::string token;        // required
  int64_t world_size = 0;   // the launch's, in place of distributed.world_size; 0: the config's
  bool fresh = false;       // a new job: the journal of an earlier one is removed first
  std::filesystem::path state_dir;  // the journal's folder; empty: {trainer_output_dir}/coordinator
  std::string metrics_listen;       // HOST:PORT of the Prometheus endpoint; empty: as the config says
  std::string health_listen;        // HOST:PORT of a plaintext port serving only the health service
  std::vector<uint32_t> synthetic;  // COUNT, MIN, MAX: synthetic samples in place of the dataset (load tests)
  std::string who = "herd";         // the name its lines start with
};

class CoordinatorHost {
 public:
  CoordinatorHost(const Config& config, const HostOptions& options);  // throws with what went wrong
  ~CoordinatorHost();

  int port() const;
  coordinator::Job& job() { return *job_; }
  // How a worker on `host` reaches it (client/options.h: the token, TLS as the config says).
  client::ClientOptions client_options(const std::string& host) const;
  // Serves until the job has ended and every live worker knows it (or a heartbeat
  // timeout more), or until `stop` is set; with `stay`, until `stop` only. Prints
  // each change of state; answers the exit status (coordinator::exit_status, 130
  // when stopped first; 0 with `stay`).
  int serve(const volatile std::sig_atomic_t* stop, bool stay);
  // Serves until the job has ended (at most `grace_s` more), then stops.
  void finish(double grace_s);

 private:
  void write_endpoint() const;

  Config config_;
  HostOptions options_;
  std::unique_ptr<coordinator::Job> job_;
  std::unique_ptr<coordinator::CoordinatorServer> server_;
};

// A random job token, for a launch that was given none and tells its workers itself.
std::string random_token();

}  // namespace herd::host
