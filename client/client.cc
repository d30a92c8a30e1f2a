#include "client/client.h"

#include <algorithm>
#include <future>

#include <fmt/format.h>
#include <grpcpp/generic/generic_stub.h>

#include "common/grpc_codes.h"
#include "common/protocol_limits.h"

namespace herd::client {

namespace v1 = herd::v1;
using grpc::StatusCode;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kCallTimeout = std::chrono::seconds(30);

bool terminal(v1::JobState s) { return s == v1::DONE || s == v1::FAILED || s == v1::STOPPED; }

// A refusal that means "this attempt is over": stale attempt, not a member, aborted.
bool attempt_ended(const grpc::Status& s) {
  return s.error_code() == StatusCode::FAILED_PRECONDITION || s.error_code() == StatusCode::ABORTED ||
         s.error_code() == StatusCode::NOT_FOUND || s.error_code() == StatusCode::CANCELLED ||
         s.error_code() == StatusCode::UNAVAILABLE;
}

Gang to_gang(const v1::WaitForGangResponse& g) {
  Gang out;
  out.rank = g.rank();
  out.world_size = g.world_size();
  out.accumulation = g.gradient_accumulation_steps();
  out.attempt = g.attempt();
  out.resume_step = g.resume_step();
  out.total_steps = g.total_steps();
  out.steps_per_epoch = g.steps_per_epoch();
  out.resume_checkpoint = g.resume_checkpoint();
  out.reason = g.reason();
  return out;
}

}  // namespace

std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxSendMessageSize(static_cast<int>(protocol::kMaxRequestBytes));
  args.SetMaxReceiveMessageSize(static_cast<int>(protocol::kMaxReplyBytes));
  // A coordinator back after a restart or a partition is found within 2 s (gRPC's
  // default backoff grows to 120 s).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_pem.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_ca_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.address, credentials, args);
}

void prepare(grpc::ClientContext& context, const std::string& token, std::chrono::milliseconds timeout) {
  context.AddMetadata("authorization", "Bearer " + token);
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

std::string describe(const grpc::Status& s) { return fmt::format("{}: {}", code_name(s.error_code()), s.error_message()); }

CallError::CallError(const std::string& what, const grpc::Status& status)
    : std::runtime_error(fmt::format("{}: {}", what, describe(status))) {}

// ---- Coordinator ----------------------------------------------------------------

Coordinator::Coordinator(ClientOptions options)
    : options_(std::move(options)), channel_(make_channel(options_)), stub_(v1::Coordinator::NewStub(channel_)) {}

grpc::Status Coordinator::status(v1::JobStatus* out, std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  prepare(context, options_.token, timeout);
  return stub_->GetStatus(&context, v1::GetStatusRequest(), out);
}

grpc::Status Coordinator::drain(v1::OperatorResponse* out) {
  grpc::ClientContext context;
  prepare(context, options_.token, std::chrono::seconds(10));
  return stub_->Drain(&context, v1::DrainRequest(), out);
}

grpc::Status Coordinator::cancel(const std::string& reason, v1::OperatorResponse* out) {
  v1::CancelRequest request;
  request.set_reason(reason.substr(0, protocol::kMaxReason));
  grpc::ClientContext context;
  prepare(context, options_.token, std::chrono::seconds(10));
  return stub_->Cancel(&context, request, out);
}

grpc::Status Coordinator::job_config(v1::JobConfig* out, std::chrono::seconds patience) {
  const auto start = Clock::now();
  for (;;) {
    grpc::ClientContext context;
    prepare(context, options_.token, std::chrono::seconds(10));
    auto s = stub_->GetJobConfig(&context, v1::GetJobConfigRequest(), out);
    if (s.error_code() != StatusCode::UNAVAILABLE || Clock::now() - start > patience) return s;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

grpc::Status Coordinator::health(std::string* out, std::chrono::milliseconds timeout) {
  // HealthCheckRequest{service: ""} is the empty message; the answer is
  // HealthCheckResponse{status = 1 (enum)}: the bytes 0x08 <status>, or nothing for UNKNOWN.
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::ByteBuffer request, response;
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                    [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return s;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return {StatusCode::INTERNAL, "unreadable health answer"};
  std::string bytes;
  for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  const int status = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  static const char* const kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  *out = status >= 0 && status <= 3 ? kNames[status] : "UNKNOWN";
  return s;
}

// ---- WorkerSession --------------------------------------------------------------

// A call of the session: its context is cancelled by abandon().
class WorkerSession::Call {
 public:
  Call(WorkerSession& session, std::chrono::milliseconds timeout, const char* method = nullptr)
      : session_(session), method_(method) {
    prepare(context, session.options_.client.token, timeout);
    std::lock_guard lock(session.mutex_);
    if (session.abandoned_) throw JobOver("this worker left the job", v1::JOB_STATE_UNSPECIFIED);
    session.in_flight_.insert(&context);
  }
  ~Call() {
    std::lock_guard lock(session_.mutex_);
    session_.in_flight_.erase(&context);
  }
  grpc::ClientContext context;

  // The call's answer, told to SessionOptions::on_call.
  grpc::Status answered(grpc::Status s) const {
    session_.observe(method_, s, start_);
    return s;
  }

 private:
  WorkerSession& session_;
  const char* method_;
  const Clock::time_point start_ = Clock::now();
};

void WorkerSession::observe(const char* method, const grpc::Status& s, Clock::time_point start) const {
  if (options_.on_call) options_.on_call(method, s, std::chrono::duration<double>(Clock::now() - start).count());
}

WorkerSession::WorkerSession(SessionOptions options)
    : options_(std::move(options)),
      channel_(make_channel(options_.client)),
      stub_(v1::Coordinator::NewStub(channel_)) {}

WorkerSession::~WorkerSession() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  close_stream();
  if (heartbeat_.joinable()) heartbeat_.join();
  std::unique_lock lock(mutex_);  // calls of other threads still in flight
  for (auto* context : in_flight_) context->TryCancel();
  wake_.wait(lock, [this] { return in_flight_.empty(); });
}

std::string WorkerSession::worker_id() const {
  std::lock_guard lock(mutex_);
  return worker_id_;
}

uint64_t WorkerSession::attempt() const {
  std::lock_guard lock(mutex_);
  return gang_.attempt;
}

Gang WorkerSession::gang() const {
  std::lock_guard lock(mutex_);
  return gang_;
}

void WorkerSession::join() {
  register_worker();
  std::lock_guard lock(mutex_);
  if (!heartbeat_.joinable()) heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

void WorkerSession::abandon() {
  {
    std::lock_guard lock(mutex_);
    abandoned_ = stop_ = true;
    for (auto* context : in_flight_) context->TryCancel();
    if (stream_context_) stream_context_->TryCancel();
  }
  wake_.notify_all();
}

v1::JobState WorkerSession::job_state() {
  v1::JobStatus status;
  Call call(*this, std::chrono::seconds(10));
  return stub_->GetStatus(&call.context, v1::GetStatusRequest(), &status).ok() ? status.state()
                                                                               : v1::JOB_STATE_UNSPECIFIED;
}

void WorkerSession::register_worker() {
  const auto start = Clock::now();
  for (double backoff = 0.05;; backoff = std::min(backoff * 2, 1.0)) {
    v1::RegisterRequest request;
    request.set_job_id(options_.job_id);
    request.set_host(options_.host.substr(0, protocol::kMaxHost));
    request.add_devices(options_.device);
    request.add_capabilities("gloo");
    request.mutable_settings()->insert(options_.settings.begin(), options_.settings.end());
    v1::RegisterResponse response;
    grpc::Status s;
    {
      Call call(*this, kCallTimeout);
      s = stub_->Register(&call.context, request, &response);
    }
    if (s.ok()) {
      std::lock_guard lock(mutex_);
      worker_id_ = response.worker_id();
      lease_s_ = std::max<uint32_t>(1, response.lease_seconds());
      return;
    }
    const bool retry = s.error_code() == StatusCode::UNAVAILABLE || s.error_code() == StatusCode::DEADLINE_EXCEEDED;
    if (!retry || Clock::now() - start > options_.give_up_after) {
      const auto state = s.error_code() == StatusCode::FAILED_PRECONDITION ? job_state() : v1::JOB_STATE_UNSPECIFIED;
      throw JobOver(fmt::format("registering with the coordinator at {}: {}", options_.client.address, describe(s)),
                    state);
    }
    wait_to_retry(std::chrono::duration<double>(backoff));
  }
}

void WorkerSession::wait_to_retry(std::chrono::duration<double> backoff) {
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(backoff);
  bool abandoned = false;
  while (!abandoned && Clock::now() < until) {
    const auto slice = std::min(until, Clock::now() + std::chrono::milliseconds(50));
    if (channel_->GetState(true) == GRPC_CHANNEL_READY) {
      std::unique_lock lock(mutex_);
      abandoned = wake_.wait_until(lock, slice, [&] { return abandoned_; });
    } else {
      if (channel_->WaitForConnected(std::chrono::system_clock::now() + (slice - Clock::now()))) return;
      std::lock_guard lock(mutex_);
      abandoned = abandoned_;
    }
  }
  if (abandoned) throw JobOver("this worker left the job", v1::JOB_STATE_UNSPECIFIED);
}

Gang WorkerSession::wait_for_gang(uint64_t after) {
  auto unreachable_since = Clock::now();
  for (;;) {
    v1::WaitForGangRequest request;
    request.set_worker_id(worker_id());
    request.set_timeout_seconds(5);
    request.set_after_attempt(after);
    v1::WaitForGangResponse response;
    grpc::Status s;
    {
      Call call(*this, std::chrono::seconds(15));
      s = stub_->WaitForGang(&call.context, request, &response);
    }
    if (s.ok()) {
      std::lock_guard lock(mutex_);
      gang_ = to_gang(response);
      return gang_;
    }
    switch (s.error_code()) {
      case StatusCode::DEADLINE_EXCEEDED: break;
      case StatusCode::NOT_FOUND: register_worker(); break;  // the coordinator restarted
      case StatusCode::UNAVAILABLE:
        if (Clock::now() - unreachable_since > options_.give_up_after) {
          throw JobOver(fmt::format("the coordinator at {} is unreachable: {}", options_.client.address, describe(s)),
                        v1::JOB_STATE_UNSPECIFIED);
        }
        wait_to_retry(std::chrono::milliseconds(500));
        continue;
      case StatusCode::FAILED_PRECONDITION: {
        // The job ended, or this worker was declared dead while it could not answer.
        const auto state = job_state();
        if (terminal(state) || state == v1::JOB_STATE_UNSPECIFIED) throw JobOver(describe(s), state);
        register_worker();
        break;
      }
      case StatusCode::CANCELLED:
        if (std::lock_guard lock(mutex_); abandoned_) throw JobOver("this worker left the job", v1::JOB_STATE_UNSPECIFIED);
        throw CallError("WaitForGang", s);
      default: throw CallError("WaitForGang", s);
    }
    unreachable_since = Clock::now();
  }
}

void WorkerSession::kv_set(const std::string& key, const std::string& value) {
  v1::KvSetRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_key(key);
  request.set_value(value);
  v1::KvSetResponse response;
  Call call(*this, kCallTimeout);
  if (auto s = stub_->KvSet(&call.context, request, &response); !s.ok()) throw CallError("store set " + key, s);
}

std::string WorkerSession::kv_get(const std::string& key, std::chrono::milliseconds timeout) {
  const auto wait_ms = std::min<int64_t>(timeout.count(), protocol::kMaxKvWaitMs);
  v1::KvWaitRequest wait;
  wait.set_worker_id(worker_id());
  wait.set_attempt(attempt());
  wait.add_keys(key);
  wait.set_timeout_ms(static_cast<uint32_t>(wait_ms));
  v1::KvWaitResponse waited;
  {
    Call call(*this, std::chrono::milliseconds(wait_ms) + kCallTimeout);
    if (auto s = stub_->KvWait(&call.context, wait, &waited); !s.ok()) throw CallError("store wait " + key, s);
  }
  v1::KvGetRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_key(key);
  v1::KvGetResponse response;
  Call call(*this, kCallTimeout);
  if (auto s = stub_->KvGet(&call.context, request, &response); !s.ok()) throw CallError("store get " + key, s);
  return response.value();
}

v1::StreamBatchesRequest WorkerSession::stream_request(uint64_t from_step) const {
  v1::StreamBatchesRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_from_step(from_step);
  return request;
}

grpc::ClientContext* WorkerSession::new_stream_context_locked() {
  if (abandoned_) throw JobOver("this worker left the job", v1::JOB_STATE_UNSPECIFIED);
  stream_context_ = std::make_unique<grpc::ClientContext>();
  prepare(*stream_context_, options_.client.token, std::chrono::hours(24 * 365));
  if (over_attempt_ == gang_.attempt) stream_context_->TryCancel();
  return stream_context_.get();
}

void WorkerSession::open_stream(uint64_t from_step) {
  close_stream();
  const auto request = stream_request(from_step);
  std::lock_guard lock(mutex_);
  reader_ = stub_->StreamBatches(new_stream_context_locked(), request);
}

std::vector<v1::MicroBatch> WorkerSession::next_step(uint64_t step) {
  std::vector<v1::MicroBatch> out;
  const Gang g = gang();
  while (out.size() < g.accumulation) {
    v1::MicroBatch batch;
    if (!reader_ || !reader_->Read(&batch)) {
      throw AttemptOver(fmt::format("the batch stream of attempt {} ended before step {}", g.attempt, step));
    }
    if (batch.step() != step) {
      throw std::runtime_error(fmt::format("the stream sent step {} while step {} was due", batch.step(), step));
    }
    out.push_back(std::move(batch));
  }
  return out;
}

// Unread micro-batches would hold Finish back: cancel first. A reactor's stream
// keeps its context until the next open_stream (its OnDone has run by then).
void WorkerSession::close_stream() {
  std::unique_ptr<grpc::ClientReader<v1::MicroBatch>> reader;
  {
    std::lock_guard lock(mutex_);
    if (stream_context_) stream_context_->TryCancel();
    if (!reader_) return;
    reader = std::move(reader_);
  }
  (void)reader->Finish();
  std::lock_guard lock(mutex_);
  stream_context_.reset();
}

void WorkerSession::finish_call(const grpc::Status& s, const char* what) {
  if (s.ok()) return;
  if (s.error_code() == StatusCode::CANCELLED) {
    std::lock_guard lock(mutex_);
    if (abandoned_) throw JobOver("this worker left the job", v1::JOB_STATE_UNSPECIFIED);
  }
  if (attempt_ended(s)) throw AttemptOver(fmt::format("{}: {}", what, describe(s)));
  throw CallError(what, s);
}

v1::ReportStepRequest WorkerSession::report_request(uint64_t step, double loss, uint64_t tokens,
                                                    const v1::StepTimings& timings) const {
  v1::ReportStepRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_step(step);
  request.set_loss(loss);
  request.set_tokens(tokens);
  *request.mutable_timings() = timings;
  return request;
}

v1::CommitCheckpointRequest WorkerSession::checkpoint_request(uint64_t step, const std::string& path,
                                                              const std::string& digest) const {
  v1::CommitCheckpointRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_step(step);
  request.set_path(path);
  request.set_digest(digest);
  return request;
}

bool WorkerSession::report_step(uint64_t step, double loss, uint64_t tokens, const v1::StepTimings& timings) {
  v1::ReportStepResponse response;
  grpc::Status s;
  {
    Call call(*this, kCallTimeout, "ReportStep");
    s = call.answered(stub_->ReportStep(&call.context, report_request(step, loss, tokens, timings), &response));
  }
  finish_call(s, "ReportStep");
  last_step_ = step;
  return response.committed();
}

bool WorkerSession::commit_checkpoint(uint64_t step, const std::string& path, const std::string& digest) {
  v1::CommitCheckpointResponse response;
  grpc::Status s;
  {
    Call call(*this, kCallTimeout, "CommitCheckpoint");
    s = call.answered(stub_->CommitCheckpoint(&call.context, checkpoint_request(step, path, digest), &response));
  }
  finish_call(s, "CommitCheckpoint");
  return response.committed();
}

void WorkerSession::report_failure(const std::string& reason, bool leaving) {
  if (worker_id().empty()) return;  // never registered
  v1::ReportFailureRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  request.set_reason(reason.substr(0, protocol::kMaxReason));
  request.set_leaving(leaving);
  v1::ReportFailureResponse response;
  Call call(*this, kCallTimeout);
  (void)stub_->ReportFailure(&call.context, request, &response);
}

std::vector<v1::MicroBatch> WorkerSession::eval_batches() {
  v1::EvalBatchesRequest request;
  request.set_worker_id(worker_id());
  request.set_attempt(attempt());
  Call call(*this, std::chrono::minutes(10));
  auto reader = stub_->EvalBatches(&call.context, request);
  std::vector<v1::MicroBatch> out;
  for (v1::MicroBatch b; reader->Read(&b);) out.push_back(std::move(b));
  finish_call(reader->Finish(), "EvalBatches");
  return out;
}

void WorkerSession::drain() {
  v1::OperatorResponse response;
  Call call(*this, kCallTimeout);
  const auto s = stub_->Drain(&call.context, v1::DrainRequest(), &response);
  // FAILED_PRECONDITION: the job has ended already.
  if (!s.ok() && s.error_code() != StatusCode::FAILED_PRECONDITION) throw CallError("Drain", s);
}

v1::HeartbeatRequest WorkerSession::heartbeat_request_locked() const {
  v1::HeartbeatRequest request;
  request.set_worker_id(worker_id_);
  request.set_attempt(gang_.attempt);
  request.set_step(last_step_);
  request.mutable_stats()->set_tokens_per_second(tokens_per_second_);
  return request;
}

// When the coordinator says the attempt is over, the stream is cancelled so that the
// training loop leaves the step it waits in.
void WorkerSession::heartbeat_answered_locked(const v1::HeartbeatRequest& sent, const grpc::Status& s,
                                              const v1::HeartbeatResponse& response) {
  if (s.ok()) draining_ = response.state() == v1::DRAINING;
  const uint64_t attempt = sent.attempt();
  const bool over = s.ok() ? attempt != 0 && (response.attempt() != attempt || response.state() == v1::RECOVERING)
                           : s.error_code() == StatusCode::NOT_FOUND && sent.worker_id() == worker_id_;
  if (over && attempt == gang_.attempt) {
    over_attempt_ = attempt;
    if (stream_context_) stream_context_->TryCancel();
  }
}

void WorkerSession::heartbeat_loop() {
  std::unique_lock lock(mutex_);
  auto interval = [&] {
    return options_.heartbeat_interval_s > 0
               ? std::chrono::duration<double>(options_.heartbeat_interval_s)
               : std::chrono::duration<double>(std::min(1.0, static_cast<double>(lease_s_) / 3));
  };
  // Workers start at different times: spread the heartbeats over the interval.
  const double phase = static_cast<double>(std::hash<std::string>{}(options_.host) % 1000) / 1000.0;
  wake_.wait_for(lock, interval() * phase, [&] { return stop_; });
  while (!stop_) {
    if (!heartbeats_stopped_ && !worker_id_.empty()) {
      const v1::HeartbeatRequest request = heartbeat_request_locked();
      v1::HeartbeatResponse response;
      grpc::ClientContext context;
      prepare(context, options_.client.token, kCallTimeout);
      in_flight_.insert(&context);
      lock.unlock();
      const auto start = Clock::now();
      const auto s = stub_->Heartbeat(&context, request, &response);
      observe("Heartbeat", s, start);
      lock.lock();
      in_flight_.erase(&context);
      heartbeat_answered_locked(request, s, response);
    }
    wake_.wait_for(lock, interval(), [&] { return stop_; });
  }
}

}  // namespace herd::client
