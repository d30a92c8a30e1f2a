// The coordinator's gRPC service: it authenticates every call (the job token),
// counts it in Prometheus metrics and hands it to the Job, where the state lives.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <map>
#include <string>
#include <thread>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include "common/protocol_limits.h"
#include "coordinator/job.h"
#include "herd/proto/herd.grpc.pb.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace herd::coordinator {

struct ServerOptions {
  // What a config says: the token (given), TLS from security.tls_cert/tls_key, the
  // Prometheus endpoint on 0.0.0.0:{metrics.port} when metrics.enabled, and the
  // config itself for GetJobConfig. Throws AuthError for an unreadable PEM.
  static ServerOptions from_config(const Config& config, const std::string& listen, const std::string& token);

  std::string listen = "0.0.0.0:29400";  // HOST:PORT; port 0 picks a free one
  std::string token;                      // required
  std::string tls_cert_pem, tls_key_pem;  // TLS when set
  std::string metrics_listen;             // HOST:PORT of the Prometheus endpoint; empty: none
  std::string health_listen;              // HOST:PORT of a plaintext port serving only the health service
                                          // (Kubernetes' gRPC probes speak no TLS); empty: none
  std::string config_yaml, config_source; // served by GetJobConfig
  size_t max_message_bytes = protocol::kMaxRequestBytes;  // larger requests are refused (RESOURCE_EXHAUSTED)
};

class Metrics;

// Calls that never wait are answered inline on gRPC's own threads (the callback
// API: no hand-off to a thread pool, which is what keeps a thousand workers'
// heartbeats cheap). Batch streams are callback reactors too, written to by one
// pump thread when the job moves on. The two calls that wait (WaitForGang,
// KvWait) hold a thread of the synchronous pool while they do.
using ServiceBase = herd::v1::Coordinator::WithCallbackMethod_Register<
    herd::v1::Coordinator::WithCallbackMethod_Heartbeat<herd::v1::Coordinator::WithCallbackMethod_KvSet<
        herd::v1::Coordinator::WithCallbackMethod_KvGet<herd::v1::Coordinator::WithCallbackMethod_KvAdd<
            herd::v1::Coordinator::WithCallbackMethod_ReportStep<herd::v1::Coordinator::WithCallbackMethod_StreamBatches<
                herd::v1::Coordinator::WithCallbackMethod_CommitCheckpoint<
                    herd::v1::Coordinator::WithCallbackMethod_GetStatus<herd::v1::Coordinator::WithCallbackMethod_Drain<
                        herd::v1::Coordinator::WithCallbackMethod_Cancel<herd::v1::Coordinator::Service>>>>>>>>>>>;

class BatchStream;

class CoordinatorService final : public ServiceBase {
 public:
  CoordinatorService(Job& job, std::string token, Metrics& metrics, herd::v1::JobConfig config);

  using Unary = grpc::ServerUnaryReactor;
  using Context = grpc::CallbackServerContext;
  Unary* Register(Context*, const herd::v1::RegisterRequest*, herd::v1::RegisterResponse*) override;
  Unary* Heartbeat(Context*, const herd::v1::HeartbeatRequest*, herd::v1::HeartbeatResponse*) override;
  Unary* KvSet(Context*, const herd::v1::KvSetRequest*, herd::v1::KvSetResponse*) override;
  Unary* KvGet(Context*, const herd::v1::KvGetRequest*, herd::v1::KvGetResponse*) override;
  Unary* KvAdd(Context*, const herd::v1::KvAddRequest*, herd::v1::KvAddResponse*) override;
  Unary* ReportStep(Context*, const herd::v1::ReportStepRequest*, herd::v1::ReportStepResponse*) override;
  Unary* CommitCheckpoint(Context*, const herd::v1::CommitCheckpointRequest*,
                          herd::v1::CommitCheckpointResponse*) override;
  Unary* GetStatus(Context*, const herd::v1::GetStatusRequest*, herd::v1::JobStatus*) override;
  Unary* Drain(Context*, const herd::v1::DrainRequest*, herd::v1::OperatorResponse*) override;
  Unary* Cancel(Context*, const herd::v1::CancelRequest*, herd::v1::OperatorResponse*) override;

  grpc::Status WaitForGang(grpc::ServerContext*, const herd::v1::WaitForGangRequest*,
                           herd::v1::WaitForGangResponse*) override;
  grpc::Status KvWait(grpc::ServerContext*, const herd::v1::KvWaitRequest*, herd::v1::KvWaitResponse*) override;
  grpc::Status GetJobConfig(grpc::ServerContext*, const herd::v1::GetJobConfigRequest*,
                            herd::v1::JobConfig*) override;
  grpc::Status EvalBatches(grpc::ServerContext*, const herd::v1::EvalBatchesRequest*,
                           grpc::ServerWriter<herd::v1::MicroBatch>*) override;
  grpc::Status ReportFailure(grpc::ServerContext*, const herd::v1::ReportFailureRequest*,
                             herd::v1::ReportFailureResponse*) override;
  grpc::ServerWriteReactor<herd::v1::MicroBatch>* StreamBatches(Context*,
                                                                const herd::v1::StreamBatchesRequest*) override;

  // Moves every open stream along after a change of the job; returns when stopped.
  void pump(const std::atomic<bool>& stop);
  void stream_done(BatchStream* stream);

 private:
  template <class F>
  grpc::Status call(const char* method, grpc::ServerContextBase* context, F&& handler);
  template <class F>
  Unary* answer(const char* method, Context* context, F&& handler);

  Job& job_;
  std::string token_;
  Metrics& metrics_;
  const herd::v1::JobConfig config_;
  std::mutex streams_mutex_;
  std::map<BatchStream*, std::weak_ptr<BatchStream>> streams_;
};

// A running coordinator: the job's service bound to an address, the standard gRPC
// health service (SERVING while it serves: what a Kubernetes probe asks; also on a
// plaintext port of its own when asked), its reaper thread (heartbeat deadlines)
// and its metrics endpoint.
class CoordinatorServer {
 public:
  CoordinatorServer(Job& job, const ServerOptions& options);  // throws on failure
  ~CoordinatorServer();

  int port() const { return port_; }
  int metrics_port() const;  // 0 without an endpoint
  int health_port() const { return health_port_; }  // 0 without a health port of its own
  void shutdown();

 private:
  Job& job_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::CallbackGenericService> unimplemented_;  // the health port's every other method
  std::unique_ptr<grpc::Server> server_, health_server_;
  int port_ = 0, health_port_ = 0;
  std::atomic<bool> stop_{false}, pump_stop_{false};
  std::thread reaper_, pump_;
};

}  // namespace herd::coordinator
