#include "coordinator/service.h"

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <grpcpp/health_check_service_interface.h>

#include "common/auth.h"
#include "common/config.h"
#include "common/grpc_codes.h"

namespace herd::coordinator {

using grpc::ServerContext;
using grpc::Status;
namespace v1 = herd::v1;

// The coordinator's metrics (docs/metrics.md).
class Metrics {
 public:
  explicit Metrics(size_t dataset_samples)
      : registry_(std::make_shared<prometheus::Registry>()),
        rpcs_(prometheus::BuildCounter()
                  .Name("herd_rpcs_total")
                  .Help("RPCs answered, by method and status code")
                  .Register(*registry_)),
        latency_(prometheus::BuildHistogram()
                     .Name("herd_rpc_seconds")
                     .Help("Time to answer a unary RPC (a stream: to open it), by method")
                     .Register(*registry_)),
        auth_failures_(prometheus::BuildCounter()
                           .Name("herd_auth_failures_total")
                           .Help("Calls refused for a missing or wrong job token")
                           .Register(*registry_)
                           .Add({})),
        attempts_(prometheus::BuildCounter()
                      .Name("herd_attempts_total")
                      .Help("Gang attempts formed (the first, and one a recovery)")
                      .Register(*registry_)
                      .Add({})),
        state_(gauges("herd_job_state", "1 for the job's state, 0 for the others")),
        workers_(gauges("herd_workers", "Live workers: in the gang, or spare")),
        committed_step_(gauge("herd_committed_step", "The last step every rank reported")),
        total_steps_(gauge("herd_total_steps", "Steps the job trains")),
        world_size_(gauge("herd_world_size", "distributed.world_size: the gang's size when no worker is missing")),
        checkpoint_step_(gauge("herd_checkpoint_step", "The step of the last committed checkpoint")),
        eta_(gauge("herd_eta_seconds", "Time to the last step at the pace of the last 20 commits")),
        imbalance_(gauge("herd_plan_imbalance_ratio", "The last committed step's max over mean tokens per rank")) {
    gauge("herd_dataset_samples", "Samples in the train split").Set(static_cast<double>(dataset_samples));
  }

  void record(const char* method, grpc::StatusCode code, double seconds) {
    std::lock_guard lock(mutex_);
    auto& m = methods_[method];
    if (!m.latency) {
      m.latency = &latency_.Add({{"method", method}},
                                prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                                        0.05, 0.1, 0.25, 0.5, 1, 5, 30});
    }
    auto& counter = m.codes[code];
    if (!counter) counter = &rpcs_.Add({{"method", method}, {"code", code_name(code)}});
    counter->Increment();
    m.latency->Observe(seconds);
    if (code == grpc::StatusCode::UNAUTHENTICATED) auth_failures_.Increment();
  }

  void update(const v1::JobStatus& s) {
    for (int i = v1::JobState_MIN; i <= v1::JobState_MAX; ++i) {
      if (!v1::JobState_IsValid(i) || i == v1::JOB_STATE_UNSPECIFIED) continue;
      state_.Add({{"state", v1::JobState_Name(static_cast<v1::JobState>(i))}}).Set(s.state() == i ? 1 : 0);
    }
    workers_.Add({{"state", "in_gang"}}).Set(s.registered_workers() - s.spares());  // the gang's live members
    workers_.Add({{"state", "spare"}}).Set(s.spares());
    if (s.attempt() > attempts_seen_) attempts_.Increment(static_cast<double>(s.attempt() - attempts_seen_));
    attempts_seen_ = s.attempt();
    committed_step_.Set(static_cast<double>(s.committed_step()));
    total_steps_.Set(static_cast<double>(s.total_steps()));
    world_size_.Set(s.world_size());
    checkpoint_step_.Set(static_cast<double>(s.checkpoint_step()));
    eta_.Set(s.eta_seconds());
    imbalance_.Set(s.step_imbalance());
  }

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  prometheus::Family<prometheus::Gauge>& gauges(const char* name, const char* help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
  }
  prometheus::Gauge& gauge(const char* name, const char* help) { return gauges(name, help).Add({}); }
  struct Method {
    prometheus::Histogram* latency = nullptr;
    std::map<grpc::StatusCode, prometheus::Counter*> codes;
  };
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpcs_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Counter& auth_failures_;
  prometheus::Counter& attempts_;
  prometheus::Family<prometheus::Gauge>& state_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Gauge &committed_step_, &total_steps_, &world_size_, &checkpoint_step_, &eta_, &imbalance_;
  uint64_t attempts_seen_ = 0;  // update() runs on one thread
  std::mutex mutex_;
  std::map<std::string, Method> methods_;
};

CoordinatorService::CoordinatorService(Job& job, std::string token, Metrics& metrics, v1::JobConfig config)
    : job_(job), token_(std::move(token)), metrics_(metrics), config_(std::move(config)) {}

template <class F>
Status CoordinatorService::call(const char* method, grpc::ServerContextBase* context, F&& handler) {
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

template <class F>
CoordinatorService::Unary* CoordinatorService::answer(const char* method, Context* context, F&& handler) {
  Unary* reactor = context->DefaultReactor();
  reactor->Finish(call(method, context, std::forward<F>(handler)));
  return reactor;
}

CoordinatorService::Unary* CoordinatorService::Register(Context* c, const v1::RegisterRequest* q,
                                                        v1::RegisterResponse* r) {
  return answer("Register", c, [&] { return job_.Register(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::Heartbeat(Context* c, const v1::HeartbeatRequest* q,
                                                         v1::HeartbeatResponse* r) {
  return answer("Heartbeat", c, [&] { return job_.Heartbeat(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::KvSet(Context* c, const v1::KvSetRequest* q, v1::KvSetResponse*) {
  return answer("KvSet", c, [&] { return job_.KvSet(*q); });
}
CoordinatorService::Unary* CoordinatorService::KvGet(Context* c, const v1::KvGetRequest* q, v1::KvGetResponse* r) {
  return answer("KvGet", c, [&] { return job_.KvGet(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::KvAdd(Context* c, const v1::KvAddRequest* q, v1::KvAddResponse* r) {
  return answer("KvAdd", c, [&] { return job_.KvAdd(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::ReportStep(Context* c, const v1::ReportStepRequest* q,
                                                          v1::ReportStepResponse* r) {
  return answer("ReportStep", c, [&] { return job_.ReportStep(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::CommitCheckpoint(Context* c, const v1::CommitCheckpointRequest* q,
                                                                v1::CommitCheckpointResponse* r) {
  return answer("CommitCheckpoint", c, [&] { return job_.CommitCheckpoint(*q, r); });
}
CoordinatorService::Unary* CoordinatorService::GetStatus(Context* c, const v1::GetStatusRequest*, v1::JobStatus* r) {
  return answer("GetStatus", c, [&] {
    job_.GetStatus(r);
    return Status::OK;
  });
}
CoordinatorService::Unary* CoordinatorService::Drain(Context* c, const v1::DrainRequest*, v1::OperatorResponse* r) {
  return answer("Drain", c, [&] { return job_.Drain(r); });
}
CoordinatorService::Unary* CoordinatorService::Cancel(Context* c, const v1::CancelRequest* q,
                                                      v1::OperatorResponse* r) {
  return answer("Cancel", c, [&] { return job_.Cancel(*q, r); });
}

Status CoordinatorService::WaitForGang(ServerContext* c, const v1::WaitForGangRequest* q,
                                       v1::WaitForGangResponse* r) {
  return call("WaitForGang", c, [&] { return job_.WaitForGang(*q, r, [c] { return c->IsCancelled(); }); });
}
Status CoordinatorService::GetJobConfig(ServerContext* c, const v1::GetJobConfigRequest*, v1::JobConfig* r) {
  return call("GetJobConfig", c, [&] {
    if (config_.yaml().empty()) return Status(grpc::StatusCode::NOT_FOUND, "this coordinator was given no config");
    *r = config_;
    return Status::OK;
  });
}
Status CoordinatorService::ReportFailure(ServerContext* c, const v1::ReportFailureRequest* q,
                                         v1::ReportFailureResponse*) {
  return call("ReportFailure", c, [&] { return job_.ReportFailure(*q); });
}
Status CoordinatorService::EvalBatches(ServerContext* c, const v1::EvalBatchesRequest* q,
                                       grpc::ServerWriter<v1::MicroBatch>* writer) {
  return call("EvalBatches", c, [&] {
    std::vector<v1::MicroBatch> batches;
    if (auto s = job_.EvalBatches(*q, &batches); !s.ok()) return s;
    for (const auto& b : batches) {
      if (!writer->Write(b)) return Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    return Status::OK;
  });
}
Status CoordinatorService::KvWait(ServerContext* c, const v1::KvWaitRequest* q, v1::KvWaitResponse*) {
  return call("KvWait", c, [&] { return job_.KvWait(*q, [c] { return c->IsCancelled(); }); });
}
// One worker's batch stream: at most one write in flight; the next step is polled
// from the job when a write completes or the pump says the job moved. gRPC may run
// a reaction inline from StartWrite or Finish, so neither is called with a lock held.
class BatchStream final : public grpc::ServerWriteReactor<v1::MicroBatch> {
 public:
  BatchStream(CoordinatorService& service, Job& job, const v1::StreamBatchesRequest& request)
      : service_(service), job_(job), request_(request), step_(request.from_step()) {}

  // Owned by itself until OnDone, so the pump can hold it while it pokes.
  static std::shared_ptr<BatchStream> make(CoordinatorService& service, Job& job,
                                           const v1::StreamBatchesRequest& request) {
    auto s = std::make_shared<BatchStream>(service, job, request);
    s->self_ = s;
    return s;
  }

  void poke() {
    std::unique_lock lock(mutex_);
    if (writing_ || finished_) return;
    if (queue_.empty()) {
      Job::StreamStep next = job_.NextStep(request_, step_);
      if (next.end) {
        lock.unlock();
        return finish(*next.end);
      }
      if (next.batches.empty()) return;
      for (auto& b : next.batches) queue_.push_back(std::move(b));
      ++step_;
    }
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    StartWrite(&current_);
  }

  void finish(const Status& status) {
    {
      std::lock_guard lock(mutex_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard lock(mutex_);
      writing_ = false;
    }
    if (!ok) {
      job_.StreamLost(request_, "broke its batch stream");
      return finish(Status(grpc::StatusCode::CANCELLED, "the stream broke"));
    }
    poke();
  }

  void OnCancel() override {
    job_.StreamLost(request_, "dropped its batch stream");
    finish(Status(grpc::StatusCode::CANCELLED, "the client went away"));
  }

  void OnDone() override {
    service_.stream_done(this);
    auto last = std::move(self_);  // may delete this on return
  }

 private:
  CoordinatorService& service_;
  Job& job_;
  const v1::StreamBatchesRequest request_;
  std::shared_ptr<BatchStream> self_;
  std::mutex mutex_;
  uint64_t step_;
  bool writing_ = false, finished_ = false;
  std::deque<v1::MicroBatch> queue_;
  v1::MicroBatch current_;
};

grpc::ServerWriteReactor<v1::MicroBatch>* CoordinatorService::StreamBatches(Context* c,
                                                                          const v1::StreamBatchesRequest* q) {
  auto stream = BatchStream::make(*this, job_, *q);
  {
    std::lock_guard lock(streams_mutex_);
    streams_[stream.get()] = stream;  // until OnDone
  }
  const Status opened = call("StreamBatches", c, [&] { return job_.OpenStream(*q); });
  if (opened.ok()) {
    stream->poke();
  } else {
    stream->finish(opened);
  }
  return stream.get();
}

void CoordinatorService::stream_done(BatchStream* stream) {
  std::lock_guard lock(streams_mutex_);
  streams_.erase(stream);
}

void CoordinatorService::pump(const std::atomic<bool>& stop) {
  uint64_t seen = 0;
  std::vector<std::shared_ptr<BatchStream>> streams;
  for (;;) {
    const bool last = stop;  // set after the job shut down: this pass finishes every stream
    seen = job_.WaitForChange(seen, std::chrono::milliseconds(200));
    {
      std::lock_guard lock(streams_mutex_);
      for (const auto& [raw, weak] : streams_) {
        if (auto s = weak.lock()) streams.push_back(std::move(s));
      }
    }
    for (const auto& s : streams) s->poke();
    streams.clear();
    if (last) return;
  }
}

ServerOptions ServerOptions::from_config(const Config& config, const std::string& listen, const std::string& token) {
  ServerOptions o;
  o.listen = listen;
  o.token = token;
  if (!config.security.tls_cert.empty()) {
    o.tls_cert_pem = read_secret_file(config.security.tls_cert, "security.tls_cert");
    o.tls_key_pem = read_secret_file(config.security.tls_key, "security.tls_key");
  }
  if (config.metrics.enabled) o.metrics_listen = fmt::format("0.0.0.0:{}", config.metrics.port);
  o.config_yaml = config.text;
  o.config_source = std::filesystem::absolute(config.source).string();
  return o;
}

namespace {

// The one place a gRPC server is built: on `listen` with `credentials`, its
// services added by `add`; the bound port goes to `port`.
std::unique_ptr<grpc::Server> start_server(const std::string& listen,
                                           const std::shared_ptr<grpc::ServerCredentials>& credentials, int* port,
                                           const std::function<void(grpc::ServerBuilder&)>& add) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, credentials, port);
  add(builder);
  return builder.BuildAndStart();
}

}  // namespace

CoordinatorServer::CoordinatorServer(Job& job, const ServerOptions& options)
    : job_(job), metrics_(std::make_unique<Metrics>(job.train_samples())) {
  if (options.token.empty()) throw std::invalid_argument("coordinator: a job token is required");
  v1::JobConfig config;
  config.set_yaml(options.config_yaml);
  config.set_source(options.config_source);
  service_ = std::make_unique<CoordinatorService>(job, options.token, *metrics_, std::move(config));
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.tls_cert_pem.empty()) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({options.tls_key_pem, options.tls_cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::EnableDefaultHealthCheckService(true);
  server_ = start_server(options.listen, credentials, &port_, [&](grpc::ServerBuilder& builder) {
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(protocol::kMaxReplyBytes));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  });
  if (!server_ || port_ == 0) throw std::runtime_error(fmt::format("coordinator: cannot listen on {}", options.listen));
  if (!options.health_listen.empty()) {
    // The default health service, and UNIMPLEMENTED for any other method (a server
    // needs a service of its own to serve the default one).
    unimplemented_ = std::make_unique<grpc::CallbackGenericService>();
    health_server_ = start_server(options.health_listen, grpc::InsecureServerCredentials(), &health_port_,
                                  [&](grpc::ServerBuilder& b) { b.RegisterCallbackGenericService(unimplemented_.get()); });
    if (!health_server_ || health_port_ == 0) {
      server_->Shutdown();
      throw std::runtime_error(fmt::format("coordinator: cannot serve health on {}", options.health_listen));
    }
  }
  if (!options.metrics_listen.empty()) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      server_->Shutdown();
      throw std::runtime_error(fmt::format("coordinator: cannot serve metrics on {} (metrics.port in use?): {}",
                                           options.metrics_listen, e.what()));
    }
    exposer_->RegisterCollectable(metrics_->registry());
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  if (health_server_) health_server_->GetHealthCheckService()->SetServingStatus(true);
  pump_ = std::thread([this] { service_->pump(pump_stop_); });
  reaper_ = std::thread([this] {
    const auto period = std::chrono::duration<double>(std::clamp(job_.settings().heartbeat_timeout_s / 4, 0.02, 0.25));
    while (!stop_) {
      job_.tick();
      v1::JobStatus s;
      job_.GetStatus(&s, false);
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
  server_->GetHealthCheckService()->SetServingStatus(false);
  if (health_server_) health_server_->GetHealthCheckService()->SetServingStatus(false);
  if (reaper_.joinable()) reaper_.join();
  job_.shutdown();  // ends the blocking calls and the streams, so the server can finish them
  pump_stop_ = true;
  if (pump_.joinable()) pump_.join();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (health_server_) health_server_->Shutdown(std::chrono::system_clock::now());
}

}  // namespace herd::coordinator
