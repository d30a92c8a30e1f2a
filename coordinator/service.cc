#include "coordinator/service.h"

#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "coordinator/auth.h"

namespace herd::coordinator {

using grpc::ServerContext;
using grpc::Status;
namespace v1 = herd::v1;

// herd_coordinator_* metrics; see docs/protocol.md.
class Metrics {
 public:
  Metrics()
      : registry_(std::make_shared<prometheus::Registry>()),
        rpcs_(prometheus::BuildCounter()
                  .Name("herd_coordinator_rpcs_total")
                  .Help("RPCs answered, by method and status code")
                  .Register(*registry_)),
        latency_(prometheus::BuildHistogram()
                     .Name("herd_coordinator_rpc_seconds")
                     .Help("Time to answer a unary RPC (a stream: its whole life), by method")
                     .Register(*registry_)),
        unauthenticated_(prometheus::BuildCounter()
                             .Name("herd_coordinator_unauthenticated_total")
                             .Help("Calls refused for a missing or wrong job token")
                             .Register(*registry_)
                             .Add({})),
        job_(prometheus::BuildGauge().Name("herd_job").Help("Job figures, by name").Register(*registry_)) {}

  void record(const char* method, grpc::StatusCode code, double seconds) {
    std::lock_guard lock(mutex_);
    auto& m = methods_[method];
    if (!m.latency) {
      m.latency = &latency_.Add({{"method", method}},
                                prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                                        0.05, 0.1, 0.25, 0.5, 1, 5, 30});
    }
    auto& counter = m.codes[code];
    if (!counter) counter = &rpcs_.Add({{"method", method}, {"code", std::to_string(static_cast<int>(code))}});
    counter->Increment();
    m.latency->Observe(seconds);
    if (code == grpc::StatusCode::UNAUTHENTICATED) unauthenticated_.Increment();
  }

  void update(const v1::JobStatus& s) {
    job_.Add({{"figure", "state"}}).Set(s.state());
    job_.Add({{"figure", "attempt"}}).Set(static_cast<double>(s.attempt()));
    job_.Add({{"figure", "committed_step"}}).Set(static_cast<double>(s.committed_step()));
    job_.Add({{"figure", "total_steps"}}).Set(static_cast<double>(s.total_steps()));
    job_.Add({{"figure", "checkpoint_step"}}).Set(static_cast<double>(s.checkpoint_step()));
    job_.Add({{"figure", "alive_workers"}}).Set(s.registered_workers());
    job_.Add({{"figure", "gang_size"}}).Set(s.gang_size());
    job_.Add({{"figure", "loss"}}).Set(s.last_loss());
  }

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  struct Method {
    prometheus::Histogram* latency = nullptr;
    std::map<grpc::StatusCode, prometheus::Counter*> codes;
  };
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Counter& unauthenticated_;
  prometheus::Family<prometheus::Gauge>& job_;
  std::mutex mutex_;
  std::map<std::string, Method> methods_;
};

CoordinatorService::CoordinatorService(Job& job, std::string token, Metrics& metrics)
    : job_(job), token_(std::move(token)), metrics_(metrics) {}

template <class F>
Status CoordinatorService::call(const char* method, ServerContext* context, F&& handler) {
  const auto start = std::chrono::steady_clock::now();
  Status status;
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end() || !bearer_matches(std::string_view(it->second.data(), it->second.size()), token_)) {
    status = Status(grpc::StatusCode::UNAUTHENTICATED,
                    it == md.end() ? "missing 'authorization: Bearer <job token>' metadata" : "wrong job token");
  } else {
    try {
      status = handler();
    } catch (const std::exception& e) {
      status = Status(grpc::StatusCode::INTERNAL, fmt::format("{}: {}", method, e.what()));
    }
  }
  metrics_.record(method, status.error_code(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return status;
}

Status CoordinatorService::Register(ServerContext* c, const v1::RegisterRequest* q, v1::RegisterResponse* r) {
  return call("Register", c, [&] { return job_.Register(*q, r); });
}
Status CoordinatorService::Heartbeat(ServerContext* c, const v1::HeartbeatRequest* q, v1::HeartbeatResponse* r) {
  return call("Heartbeat", c, [&] { return job_.Heartbeat(*q, r); });
}
Status CoordinatorService::WaitForGang(ServerContext* c, const v1::WaitForGangRequest* q,
                                       v1::WaitForGangResponse* r) {
  return call("WaitForGang", c, [&] { return job_.WaitForGang(*q, r, [c] { return c->IsCancelled(); }); });
}
Status CoordinatorService::KvSet(ServerContext* c, const v1::KvSetRequest* q, v1::KvSetResponse*) {
  return call("KvSet", c, [&] { return job_.KvSet(*q); });
}
Status CoordinatorService::KvGet(ServerContext* c, const v1::KvGetRequest* q, v1::KvGetResponse* r) {
  return call("KvGet", c, [&] { return job_.KvGet(*q, r); });
}
Status CoordinatorService::KvWait(ServerContext* c, const v1::KvWaitRequest* q, v1::KvWaitResponse*) {
  return call("KvWait", c, [&] { return job_.KvWait(*q, [c] { return c->IsCancelled(); }); });
}
Status CoordinatorService::KvAdd(ServerContext* c, const v1::KvAddRequest* q, v1::KvAddResponse* r) {
  return call("KvAdd", c, [&] { return job_.KvAdd(*q, r); });
}
Status CoordinatorService::StreamBatches(ServerContext* c, const v1::StreamBatchesRequest* q,
                                         grpc::ServerWriter<v1::MicroBatch>* writer) {
  return call("StreamBatches", c, [&] {
    return job_.StreamBatches(
        *q, [writer](const v1::MicroBatch& b) { return writer->Write(b); }, [c] { return c->IsCancelled(); });
  });
}
Status CoordinatorService::ReportStep(ServerContext* c, const v1::ReportStepRequest* q, v1::ReportStepResponse* r) {
  return call("ReportStep", c, [&] { return job_.ReportStep(*q, r); });
}
Status CoordinatorService::CommitCheckpoint(ServerContext* c, const v1::CommitCheckpointRequest* q,
                                            v1::CommitCheckpointResponse* r) {
  return call("CommitCheckpoint", c, [&] { return job_.CommitCheckpoint(*q, r); });
}
Status CoordinatorService::GetStatus(ServerContext* c, const v1::GetStatusRequest*, v1::JobStatus* r) {
  return call("GetStatus", c, [&] {
    job_.GetStatus(r);
    return Status::OK;
  });
}
Status CoordinatorService::Drain(ServerContext* c, const v1::DrainRequest*, v1::OperatorResponse* r) {
  return call("Drain", c, [&] { return job_.Drain(r); });
}
Status CoordinatorService::Cancel(ServerContext* c, const v1::CancelRequest* q, v1::OperatorResponse* r) {
  return call("Cancel", c, [&] { return job_.Cancel(*q, r); });
}

CoordinatorServer::CoordinatorServer(Job& job, const ServerOptions& options)
    : job_(job), metrics_(std::make_unique<Metrics>()) {
  if (options.token.empty()) throw std::invalid_argument("coordinator: a job token is required");
  service_ = std::make_unique<CoordinatorService>(job, options.token, *metrics_);
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.tls_cert_pem.empty()) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({options.tls_key_pem, options.tls_cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) throw std::runtime_error(fmt::format("coordinator: cannot listen on {}", options.listen));
  if (!options.metrics_listen.empty()) {
    exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    exposer_->RegisterCollectable(metrics_->registry());
  }
  reaper_ = std::thread([this] {
    const auto period = std::chrono::duration<double>(std::clamp(job_.settings().heartbeat_timeout_s / 4, 0.02, 0.25));
    while (!stop_) {
      job_.tick();
      v1::JobStatus s;
      job_.GetStatus(&s);
      metrics_->update(s);
      std::this_thread::sleep_for(period);
    }
  });
}

CoordinatorServer::~CoordinatorServer() { shutdown(); }

int CoordinatorServer::metrics_port() const {
  if (!exposer_) return 0;
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void CoordinatorServer::shutdown() {
  if (stop_.exchange(true)) return;
  if (reaper_.joinable()) reaper_.join();
  job_.shutdown();  // ends the blocking calls, so the server can finish them
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace herd::coordinator
