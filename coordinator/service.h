// The coordinator's gRPC service: it authenticates every call (the job token),
// counts it in Prometheus metrics and hands it to the Job, where the state lives.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "coordinator/job.h"
#include "herd/proto/herd.grpc.pb.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace herd::coordinator {

struct ServerOptions {
  std::string listen = "0.0.0.0:29400";  // HOST:PORT; port 0 picks a free one
  std::string token;                      // required
  std::string tls_cert_pem, tls_key_pem;  // TLS when set
  std::string metrics_listen;             // HOST:PORT of the Prometheus endpoint; empty: none
  size_t max_message_bytes = 1 << 20;     // larger requests are refused (RESOURCE_EXHAUSTED)
};

class Metrics;

class CoordinatorService final : public herd::v1::Coordinator::Service {
 public:
  CoordinatorService(Job& job, std::string token, Metrics& metrics);

  grpc::Status Register(grpc::ServerContext*, const herd::v1::RegisterRequest*, herd::v1::RegisterResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const herd::v1::HeartbeatRequest*,
                         herd::v1::HeartbeatResponse*) override;
  grpc::Status WaitForGang(grpc::ServerContext*, const herd::v1::WaitForGangRequest*,
                           herd::v1::WaitForGangResponse*) override;
  grpc::Status KvSet(grpc::ServerContext*, const herd::v1::KvSetRequest*, herd::v1::KvSetResponse*) override;
  grpc::Status KvGet(grpc::ServerContext*, const herd::v1::KvGetRequest*, herd::v1::KvGetResponse*) override;
  grpc::Status KvWait(grpc::ServerContext*, const herd::v1::KvWaitRequest*, herd::v1::KvWaitResponse*) override;
  grpc::Status KvAdd(grpc::ServerContext*, const herd::v1::KvAddRequest*, herd::v1::KvAddResponse*) override;
  grpc::Status StreamBatches(grpc::ServerContext*, const herd::v1::StreamBatchesRequest*,
                             grpc::ServerWriter<herd::v1::MicroBatch>*) override;
  grpc::Status ReportStep(grpc::ServerContext*, const herd::v1::ReportStepRequest*,
                          herd::v1::ReportStepResponse*) override;
  grpc::Status CommitCheckpoint(grpc::ServerContext*, const herd::v1::CommitCheckpointRequest*,
                                herd::v1::CommitCheckpointResponse*) override;
  grpc::Status GetStatus(grpc::ServerContext*, const herd::v1::GetStatusRequest*, herd::v1::JobStatus*) override;
  grpc::Status Drain(grpc::ServerContext*, const herd::v1::DrainRequest*, herd::v1::OperatorResponse*) override;
  grpc::Status Cancel(grpc::ServerContext*, const herd::v1::CancelRequest*, herd::v1::OperatorResponse*) override;

 private:
  template <class F>
  grpc::Status call(const char* method, grpc::ServerContext* context, F&& handler);

  Job& job_;
  std::string token_;
  Metrics& metrics_;
};

// A running coordinator: the job's service bound to an address, its reaper thread
// (heartbeat deadlines) and its metrics endpoint.
class CoordinatorServer {
 public:
  CoordinatorServer(Job& job, const ServerOptions& options);  // throws on failure
  ~CoordinatorServer();

  int port() const { return port_; }
  int metrics_port() const;  // 0 without an endpoint
  void shutdown();

 private:
  Job& job_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread reaper_;
};

}  // namespace herd::coordinator
