#include "worker/train/link.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "coordinator/job.h"
#include "herd/proto/herd.grpc.pb.h"

namespace herd::train {

namespace v1 = herd::v1;
using grpc::StatusCode;

namespace {

constexpr auto kCallTimeout = std::chrono::seconds(30);

std::string describe(const grpc::Status& s) { return fmt::format("{} ({})", s.error_message(), static_cast<int>(s.error_code())); }

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
  return out;
}

// ---- In process ---------------------------------------------------------------

class LocalLink : public CoordinatorLink {
 public:
  LocalLink(coordinator::Job& job, std::string job_id) : job_(job), job_id_(std::move(job_id)) {}

  void join(const std::string& host, const std::string& device) override {
    v1::RegisterRequest request;
    request.set_job_id(job_id_);
    request.set_host(host);
    request.add_devices(device);
    v1::RegisterResponse response;
    check(job_.Register(request, &response), "register");
    id_ = response.worker_id();
  }
  Gang wait_for_gang(uint64_t after) override {
    v1::WaitForGangRequest request;
    request.set_worker_id(id_);
    request.set_after_attempt(after);
    v1::WaitForGangResponse response;
    auto s = job_.WaitForGang(request, &response, [] { return false; });
    if (s.error_code() == StatusCode::FAILED_PRECONDITION) throw JobOver(s.error_message());
    check(s, "gang");
    gang_ = to_gang(response);
    return gang_;
  }
  // One rank: its group is local and never rendezvouses.
  comm::Store& store() override { return store_; }
  void open_stream(uint64_t from_step) override {
    stream_.set_worker_id(id_);
    stream_.set_attempt(gang_.attempt);
    stream_.set_from_step(from_step);
    check(job_.OpenStream(stream_), "stream");
  }
  std::vector<v1::MicroBatch> next_step(uint64_t step) override {
    for (uint64_t seen = 0;;) {
      auto next = job_.NextStep(stream_, step);
      if (next.end) {
        if (next.end->ok() || attempt_ended(*next.end)) throw AttemptOver(next.end->error_message());
        check(*next.end, "stream");
      }
      if (!next.batches.empty()) return std::move(next.batches);
      seen = job_.WaitForChange(seen, std::chrono::milliseconds(200));
    }
  }
  void report_step(uint64_t step, double loss, uint64_t tokens, double seconds) override {
    v1::ReportStepRequest request;
    request.set_worker_id(id_);
    request.set_attempt(gang_.attempt);
    request.set_step(step);
    request.set_loss(loss);
    request.set_tokens(tokens);
    request.mutable_timings()->set_compute_seconds(seconds);
    v1::ReportStepResponse response;
    check(job_.ReportStep(request, &response), "report");
  }
  void commit_checkpoint(uint64_t step, const std::string& path, const std::string& digest) override {
    v1::CommitCheckpointRequest request;
    request.set_worker_id(id_);
    request.set_attempt(gang_.attempt);
    request.set_step(step);
    request.set_path(path);
    request.set_digest(digest);
    v1::CommitCheckpointResponse response;
    check(job_.CommitCheckpoint(request, &response), "checkpoint");
  }
  void close_stream() override {}
  void report_failure(const std::string& reason) override {
    v1::ReportFailureRequest request;
    request.set_worker_id(id_);
    request.set_attempt(gang_.attempt);
    request.set_reason(reason.substr(0, 1024));
    (void)job_.ReportFailure(request);
  }
  std::vector<v1::MicroBatch> eval_batches() override {
    v1::EvalBatchesRequest request;
    request.set_worker_id(id_);
    request.set_attempt(gang_.attempt);
    std::vector<v1::MicroBatch> out;
    check(job_.EvalBatches(request, &out), "eval batches");
    return out;
  }

 private:
  static void check(const grpc::Status& s, const char* what) {
    if (!s.ok()) throw std::runtime_error(fmt::format("{}: {}", what, s.error_message()));
  }

  coordinator::Job& job_;
  std::string job_id_, id_;
  Gang gang_;
  v1::StreamBatchesRequest stream_;
  comm::InMemoryStore store_;
};

// ---- Over gRPC ----------------------------------------------------------------

class GrpcLink : public CoordinatorLink, public comm::Store {
 public:
  GrpcLink(const coordinator::ClientOptions& client, std::string job_id)
      : client_(client), job_id_(std::move(job_id)), stub_(v1::Coordinator::NewStub(coordinator::make_channel(client))) {}
  ~GrpcLink() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    close_stream();
    if (heartbeat_.joinable()) heartbeat_.join();
  }

  void join(const std::string& host, const std::string& device) override {
    host_ = host;
    device_ = device;
    register_worker();
    if (!heartbeat_.joinable()) heartbeat_ = std::thread([this] { heartbeat_loop(); });
  }

  Gang wait_for_gang(uint64_t after) override {
    auto unreachable_since = std::chrono::steady_clock::now();
    for (;;) {
      v1::WaitForGangRequest request;
      request.set_worker_id(worker_id());
      request.set_timeout_seconds(5);
      request.set_after_attempt(after);
      v1::WaitForGangResponse response;
      grpc::ClientContext context;
      coordinator::prepare(context, client_.token, std::chrono::seconds(15));
      const auto s = stub_->WaitForGang(&context, request, &response);
      if (s.ok()) {
        std::lock_guard lock(mutex_);
        gang_ = to_gang(response);
        return gang_;
      }
      switch (s.error_code()) {
        case StatusCode::DEADLINE_EXCEEDED: break;
        case StatusCode::NOT_FOUND: register_worker(); break;  // the coordinator restarted, or declared us dead
        case StatusCode::UNAVAILABLE:
          if (std::chrono::steady_clock::now() - unreachable_since > std::chrono::minutes(5)) {
            throw JobOver("the coordinator at " + client_.address + " is unreachable: " + describe(s));
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
          continue;
        case StatusCode::FAILED_PRECONDITION: throw JobOver(s.error_message());
        default: throw std::runtime_error("WaitForGang: " + describe(s));
      }
      unreachable_since = std::chrono::steady_clock::now();
    }
  }

  comm::Store& store() override { return *this; }
  void set(const std::string& key, const std::string& value) override {
    v1::KvSetRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_key(key);
    request.set_value(value);
    v1::KvSetResponse response;
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, kCallTimeout);
    if (auto s = stub_->KvSet(&context, request, &response); !s.ok()) throw comm::CommError("store set: " + describe(s));
  }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    v1::KvWaitRequest wait;
    wait.set_worker_id(worker_id());
    wait.set_attempt(attempt());
    wait.add_keys(key);
    wait.set_timeout_ms(static_cast<uint32_t>(std::min<int64_t>(timeout.count(), 600000)));
    v1::KvWaitResponse waited;
    {
      grpc::ClientContext context;
      coordinator::prepare(context, client_.token, timeout + kCallTimeout);
      if (auto s = stub_->KvWait(&context, wait, &waited); !s.ok()) throw comm::CommError("store: " + describe(s));
    }
    v1::KvGetRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_key(key);
    v1::KvGetResponse response;
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, kCallTimeout);
    if (auto s = stub_->KvGet(&context, request, &response); !s.ok()) throw comm::CommError("store: " + describe(s));
    return response.value();
  }

  void open_stream(uint64_t from_step) override {
    close_stream();
    v1::StreamBatchesRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_from_step(from_step);
    std::lock_guard lock(mutex_);
    stream_context_ = std::make_unique<grpc::ClientContext>();
    coordinator::prepare(*stream_context_, client_.token, std::chrono::hours(24 * 365));
    if (recovering_attempt_ == gang_.attempt) stream_context_->TryCancel();
    reader_ = stub_->StreamBatches(stream_context_.get(), request);
  }

  std::vector<v1::MicroBatch> next_step(uint64_t step) override {
    std::vector<v1::MicroBatch> out;
    const uint32_t accumulation = [&] {
      std::lock_guard lock(mutex_);
      return gang_.accumulation;
    }();
    while (out.size() < accumulation) {
      v1::MicroBatch batch;
      if (!reader_ || !reader_->Read(&batch)) {
        throw AttemptOver(fmt::format("the batch stream of attempt {} ended before step {}", attempt(), step));
      }
      if (batch.step() != step) {
        throw std::runtime_error(fmt::format("the stream sent step {} while step {} was due", batch.step(), step));
      }
      out.push_back(std::move(batch));
    }
    return out;
  }

  void report_step(uint64_t step, double loss, uint64_t tokens, double seconds) override {
    v1::ReportStepRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_step(step);
    request.set_loss(loss);
    request.set_tokens(tokens);
    request.mutable_timings()->set_compute_seconds(seconds);
    v1::ReportStepResponse response;
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, kCallTimeout);
    finish_call(stub_->ReportStep(&context, request, &response), "ReportStep");
    last_step_ = step;
  }

  void commit_checkpoint(uint64_t step, const std::string& path, const std::string& digest) override {
    v1::CommitCheckpointRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_step(step);
    request.set_path(path);
    request.set_digest(digest);
    v1::CommitCheckpointResponse response;
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, kCallTimeout);
    finish_call(stub_->CommitCheckpoint(&context, request, &response), "CommitCheckpoint");
  }

  void report_failure(const std::string& reason) override {
    v1::ReportFailureRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    request.set_reason(reason.substr(0, 1024));
    v1::ReportFailureResponse response;
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, kCallTimeout);
    (void)stub_->ReportFailure(&context, request, &response);
  }

  std::vector<v1::MicroBatch> eval_batches() override {
    v1::EvalBatchesRequest request;
    request.set_worker_id(worker_id());
    request.set_attempt(attempt());
    grpc::ClientContext context;
    coordinator::prepare(context, client_.token, std::chrono::minutes(10));
    auto reader = stub_->EvalBatches(&context, request);
    std::vector<v1::MicroBatch> out;
    for (v1::MicroBatch b; reader->Read(&b);) out.push_back(std::move(b));
    finish_call(reader->Finish(), "EvalBatches");
    return out;
  }

  // Unread micro-batches would hold Finish back: cancel first.
  void close_stream() override {
    std::unique_ptr<grpc::ClientReader<v1::MicroBatch>> reader;
    {
      std::lock_guard lock(mutex_);
      if (stream_context_) stream_context_->TryCancel();
      reader = std::move(reader_);
    }
    if (reader) (void)reader->Finish();
    std::lock_guard lock(mutex_);
    stream_context_.reset();
  }

 private:
  void finish_call(const grpc::Status& s, const char* what) {
    if (s.ok()) return;
    if (attempt_ended(s)) throw AttemptOver(fmt::format("{}: {}", what, describe(s)));
    throw std::runtime_error(fmt::format("{}: {}", what, describe(s)));
  }

  std::string worker_id() {
    std::lock_guard lock(mutex_);
    return worker_id_;
  }
  uint64_t attempt() {
    std::lock_guard lock(mutex_);
    return gang_.attempt;
  }

  void register_worker() {
    const auto start = std::chrono::steady_clock::now();
    for (double backoff = 0.05;; backoff = std::min(backoff * 2, 1.0)) {
      v1::RegisterRequest request;
      request.set_job_id(job_id_);
      request.set_host(host_);
      request.add_devices(device_);
      request.add_capabilities("gloo");
      v1::RegisterResponse response;
      grpc::ClientContext context;
      coordinator::prepare(context, client_.token, kCallTimeout);
      const auto s = stub_->Register(&context, request, &response);
      if (s.ok()) {
        std::lock_guard lock(mutex_);
        worker_id_ = response.worker_id();
        lease_s_ = std::max<uint32_t>(1, response.lease_seconds());
        return;
      }
      const bool retry = s.error_code() == StatusCode::UNAVAILABLE || s.error_code() == StatusCode::DEADLINE_EXCEEDED;
      if (!retry || std::chrono::steady_clock::now() - start > std::chrono::minutes(5)) {
        throw JobOver(fmt::format("registering with the coordinator at {}: {}", client_.address, describe(s)));
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
    }
  }

  // Heartbeats; when the coordinator says the attempt is over, the stream is
  // cancelled so that the training loop leaves the step it waits in.
  void heartbeat_loop() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      const auto interval = std::chrono::milliseconds(std::min<int64_t>(1000, lease_s_ * 1000 / 3));
      const std::string id = worker_id_;
      const uint64_t attempt = gang_.attempt;
      lock.unlock();
      v1::HeartbeatRequest request;
      request.set_worker_id(id);
      request.set_attempt(attempt);
      request.set_step(last_step_);
      v1::HeartbeatResponse response;
      grpc::ClientContext context;
      coordinator::prepare(context, client_.token, kCallTimeout);
      const auto s = stub_->Heartbeat(&context, request, &response);
      lock.lock();
      const bool over = s.ok() ? attempt != 0 && (response.attempt() != attempt || response.state() == v1::RECOVERING)
                               : s.error_code() == StatusCode::NOT_FOUND;
      if (over && attempt == gang_.attempt) {
        recovering_attempt_ = attempt;
        if (stream_context_) stream_context_->TryCancel();
      }
      wake_.wait_for(lock, interval, [&] { return stop_; });
    }
  }

  const coordinator::ClientOptions client_;
  const std::string job_id_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  std::string host_, device_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::string worker_id_;
  uint32_t lease_s_ = 30;
  Gang gang_;
  uint64_t recovering_attempt_ = 0;
  std::atomic<uint64_t> last_step_{0};
  std::unique_ptr<grpc::ClientContext> stream_context_;
  std::unique_ptr<grpc::ClientReader<v1::MicroBatch>> reader_;
  std::thread heartbeat_;
};

}  // namespace

std::unique_ptr<CoordinatorLink> local_link(coordinator::Job& job, const std::string& job_id) {
  return std::make_unique<LocalLink>(job, job_id);
}

std::unique_ptr<CoordinatorLink> grpc_link(const coordinator::ClientOptions& client, const std::string& job_id) {
  return std::make_unique<GrpcLink>(client, job_id);
}

}  // namespace herd::train
