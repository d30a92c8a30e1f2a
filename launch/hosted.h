// The job's coordinator inside a launching process: `herd train` (one worker in
// this process, or N worker processes), and rank 0 under mpirun, srun, torchrun
// or Kubeflow. Built the one way herd-coordinator builds it (ServerOptions::
// from_config: the token, TLS, the Prometheus endpoint, the gRPC health service),
// with its journal in {trainer_output_dir}/coordinator, so a restarted launch
// resumes the job from its newest committed checkpoint. Where it serves is written
// to {trainer_output_dir}/coordinator/endpoint.json: {"port", "metrics_port" (0:
// none), "tls"}.
#pragma once

#include <memory>
#include <string>

#include "client/client.h"
#include "common/config.h"

namespace herd::coordinator {
class Job;
class CoordinatorServer;
}  // namespace herd::coordinator

namespace herd::launch {

struct HostOptions {
  std::string listen;    // HOST:PORT; port 0 picks a free one
  std::string token;     // required
  int world_size = 1;    // the launch's: it replaces distributed.world_size
  bool fresh = false;    // a new job: the journal of an earlier one is removed first
};

class HostedCoordinator {
 public:
  HostedCoordinator(const Config& config, const HostOptions& options);  // throws with what went wrong
  ~HostedCoordinator();

  int port() const;
  coordinator::Job& job() { return *job_; }
  // How a worker on `host` reaches it (TLS as the config says).
  client::ClientOptions client_options(const std::string& host) const;
  // Serves until the job has ended (at most `grace_s` more), then stops.
  void finish(double grace_s);

 private:
  Config config_;
  std::string token_;
  std::unique_ptr<coordinator::Job> job_;
  std::unique_ptr<coordinator::CoordinatorServer> server_;
};

// The client options of a worker of this config: its token, and TLS verified with
// security.tls_ca (else the certificate itself, for a coordinator on this machine)
// for the name security.tls_server_name when set.
client::ClientOptions worker_client_options(const Config& config, const std::string& address,
                                            const std::string& token);

// A random job token, for a launch that was given none and tells its workers itself.
std::string random_token();

}  // namespace herd::launch
