// The coordinator's gRPC service. Handlers stay thin: job state lives in plain
// classes that are tested without a network.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "herd/proto/herd.grpc.pb.h"

namespace herd {
struct Config;
}

namespace herd::coordinator {

struct JobSettings {
  std::string job_id;
  uint32_t world_size = 1;

  static JobSettings from_config(const Config& config);
};

class CoordinatorService final : public herd::v1::Coordinator::Service {
 public:
  explicit CoordinatorService(JobSettings settings);

  grpc::Status GetStatus(grpc::ServerContext* context, const herd::v1::GetStatusRequest* request,
                         herd::v1::JobStatus* response) override;

 private:
  JobSettings settings_;
  std::mutex mutex_;
  herd::v1::JobState state_ = herd::v1::REGISTERING;
};

// A running server: the service, bound to an address.
class CoordinatorServer {
 public:
  // `listen` is HOST:PORT; port 0 picks a free one (see port()). Throws on failure.
  CoordinatorServer(JobSettings settings, const std::string& listen);
  ~CoordinatorServer();

  int port() const { return port_; }
  void wait();
  void shutdown();

 private:
  CoordinatorService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace herd::coordinator
