#include "coordinator/sim_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include <fmt/format.h>

#include "common/token_cache.h"

namespace herd::coordinator {

namespace v1 = herd::v1;
using grpc::StatusCode;

namespace {
constexpr auto kCallTimeout = std::chrono::seconds(30);

double since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

std::string scrape_metrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

SimWorker::SimWorker(SimWorkerOptions options) : options_(std::move(options)) {
  // Each simulated worker gets its own connection, as a separate process would.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options_.client.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.client.tls_ca_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  channel_ = grpc::CreateCustomChannel(options_.client.address, credentials, args);
  stub_ = v1::Coordinator::NewStub(channel_);
}

SimWorker::~SimWorker() {
  stop_ = true;
  wake();
  {
    std::lock_guard lock(mutex_);
    if (stream_context_) stream_context_->TryCancel();
  }
  if (main_.joinable()) main_.join();
  if (heartbeat_.joinable()) heartbeat_.join();
}

void SimWorker::start() {
  main_ = std::thread([this] { main_loop(); });
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

void SimWorker::crash() {
  crashed_ = true;
  wake();
  std::lock_guard lock(mutex_);
  if (stream_context_) stream_context_->TryCancel();
}

void SimWorker::wake() {
  std::lock_guard lock(wake_mutex_);
  wake_.notify_all();
}

void SimWorker::hang() { hung_ = true; }

std::string SimWorker::outcome() const {
  std::lock_guard lock(mutex_);
  return outcome_;
}

std::vector<StepRecord> SimWorker::log() const {
  std::lock_guard lock(mutex_);
  return log_;
}

std::vector<float> SimWorker::heartbeat_latencies() const {
  std::lock_guard lock(mutex_);
  return heartbeat_latency_;
}

std::vector<float> SimWorker::report_latencies() const {
  std::lock_guard lock(mutex_);
  return report_latency_;
}

void SimWorker::finish(std::string outcome) {
  std::lock_guard lock(mutex_);
  outcome_ = std::move(outcome);
  finished_ = true;
}

void SimWorker::sleep_for(double seconds) {
  std::unique_lock lock(wake_mutex_);
  wake_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stop_ || crashed_; });
}

bool SimWorker::register_worker() {
  double backoff = 0.05;
  while (!stopped()) {
    v1::RegisterRequest request;
    request.set_job_id(options_.job_id);
    request.set_host(options_.host);
    request.add_devices("cpu");
    request.add_capabilities("gloo");
    v1::RegisterResponse response;
    grpc::ClientContext context;
    prepare(context, options_.client.token, kCallTimeout);
    auto status = stub_->Register(&context, request, &response);
    if (status.ok()) {
      std::lock_guard lock(mutex_);
      worker_id_ = response.worker_id();
      reregister_ = false;
      return true;
    }
    if (status.error_code() != StatusCode::UNAVAILABLE && status.error_code() != StatusCode::DEADLINE_EXCEEDED) {
      finish(fmt::format("Register: {} {}", static_cast<int>(status.error_code()), status.error_message()));
      return false;
    }
    sleep_for(backoff);  // the coordinator is (re)starting: back off
    backoff = std::min(backoff * 2, 1.0);
  }
  return false;
}

void SimWorker::heartbeat_loop() {
  // Workers start at different times: spread the heartbeats over the interval.
  sleep_for(options_.heartbeat_interval_s * static_cast<double>(hash_bytes(options_.host) % 1000) / 1000.0);
  while (!stop_ && !crashed_ && !finished_) {
    if (!hung_) {
      std::string id;
      {
        std::lock_guard lock(mutex_);
        id = worker_id_;
      }
      if (!id.empty()) {
        v1::HeartbeatRequest request;
        request.set_worker_id(id);
        request.set_step(step_);
        request.set_attempt(attempt_);
        request.mutable_stats()->set_tokens_per_second(1000);
        v1::HeartbeatResponse response;
        grpc::ClientContext context;
        prepare(context, options_.client.token, kCallTimeout);
        const auto start = std::chrono::steady_clock::now();
        auto status = stub_->Heartbeat(&context, request, &response);
        const double took = since(start);
        std::lock_guard lock(mutex_);
        if (status.ok()) {
          heartbeat_latency_.push_back(static_cast<float>(took));
          // The gang broke: leave the stream at once and rejoin.
          if (response.state() == v1::RECOVERING && attempt_ == response.attempt() && stream_context_) {
            stream_context_->TryCancel();
          }
        } else if (status.error_code() == StatusCode::NOT_FOUND && id == worker_id_) {
          reregister_ = true;  // the coordinator restarted
          if (stream_context_) stream_context_->TryCancel();
        }
      }
    }
    sleep_for(options_.heartbeat_interval_s);
  }
}

void SimWorker::main_loop() {
  if (!register_worker()) return;
  while (!stopped()) {
    if (reregister_ && !register_worker()) return;
    if (!run_attempt()) return;
  }
}

bool SimWorker::run_attempt() {
  std::string id;
  {
    std::lock_guard lock(mutex_);
    id = worker_id_;
  }
  v1::WaitForGangRequest wait;
  wait.set_worker_id(id);
  wait.set_timeout_seconds(5);
  v1::WaitForGangResponse gang;
  {
    grpc::ClientContext context;
    prepare(context, options_.client.token, std::chrono::seconds(10));
    auto status = stub_->WaitForGang(&context, wait, &gang);
    if (!status.ok()) {
      switch (status.error_code()) {
        case StatusCode::DEADLINE_EXCEEDED: return true;
        case StatusCode::UNAVAILABLE: sleep_for(0.2); return true;
        case StatusCode::NOT_FOUND: reregister_ = true; return true;
        default:
          finish(fmt::format("WaitForGang: {} {}", static_cast<int>(status.error_code()), status.error_message()));
          return false;
      }
    }
  }
  attempt_ = gang.attempt();
  rank_ = gang.rank();
  step_ = gang.resume_step();

  // Meet the other ranks in the store, as a collective's bootstrap would.
  if (gang.world_size() <= options_.kv_handshake_max_world) {
    v1::KvSetRequest set;
    set.set_worker_id(id);
    set.set_attempt(gang.attempt());
    set.set_key(fmt::format("rank/{}", gang.rank()));
    set.set_value(options_.host);
    v1::KvSetResponse set_response;
    grpc::ClientContext set_context;
    prepare(set_context, options_.client.token, kCallTimeout);
    if (!stub_->KvSet(&set_context, set, &set_response).ok()) return true;
    v1::KvWaitRequest meet;
    meet.set_worker_id(id);
    meet.set_attempt(gang.attempt());
    for (uint32_t r = 0; r < gang.world_size(); ++r) meet.add_keys(fmt::format("rank/{}", r));
    meet.set_timeout_ms(10000);
    v1::KvWaitResponse meet_response;
    grpc::ClientContext meet_context;
    prepare(meet_context, options_.client.token, kCallTimeout);
    if (!stub_->KvWait(&meet_context, meet, &meet_response).ok()) return true;
  }

  v1::StreamBatchesRequest request;
  request.set_worker_id(id);
  request.set_attempt(gang.attempt());
  request.set_from_step(gang.resume_step() + 1);
  grpc::ClientContext context;
  prepare(context, options_.client.token, std::chrono::hours(24));
  {
    std::lock_guard lock(mutex_);
    if (stopped()) return false;
    stream_context_ = &context;
  }
  auto reader = stub_->StreamBatches(&context, request);
  v1::MicroBatch batch;
  StepRecord record;
  bool rejoin = false;
  while (!rejoin && !hung_ && reader->Read(&batch)) {
    record.attempt = gang.attempt();
    record.step = batch.step();
    record.rank = gang.rank();
    record.samples.insert(record.samples.end(), batch.sample_ids().begin(), batch.sample_ids().end());
    if (batch.micro_step() + 1 < gang.gradient_accumulation_steps()) continue;

    sleep_for(options_.step_seconds);  // "training"
    if (crashed_ || hung_) break;
    v1::ReportStepRequest report;
    report.set_worker_id(id);
    report.set_attempt(gang.attempt());
    report.set_step(batch.step());
    report.set_loss(2.0 / static_cast<double>(batch.step()));
    report.set_tokens(static_cast<uint64_t>(batch.token_ids_size()));
    v1::ReportStepResponse reported;
    grpc::ClientContext report_context;
    prepare(report_context, options_.client.token, kCallTimeout);
    const auto start = std::chrono::steady_clock::now();
    auto status = stub_->ReportStep(&report_context, report, &reported);
    const double took = since(start);
    if (!status.ok()) {
      rejoin = true;
      break;
    }
    {
      std::lock_guard lock(mutex_);
      report_latency_.push_back(static_cast<float>(took));
      log_.push_back(std::move(record));
    }
    record = StepRecord{};
    step_ = batch.step();
    ++steps_trained_;
    const bool last = batch.step() == gang.total_steps();
    if (last || (options_.checkpoint_every && batch.step() % options_.checkpoint_every == 0)) {
      v1::CommitCheckpointRequest commit;
      commit.set_worker_id(id);
      commit.set_attempt(gang.attempt());
      commit.set_step(batch.step());
      commit.set_path(fmt::format("ckpt/checkpoint-{}", batch.step()));
      const uint64_t h = hash_bytes(fmt::format("{}/{}", batch.step(), gang.rank()));
      commit.set_digest(fmt::format("{:016x}{:016x}{:016x}{:016x}", h, h ^ 1, h ^ 2, h ^ 3));
      v1::CommitCheckpointResponse committed;
      grpc::ClientContext commit_context;
      prepare(commit_context, options_.client.token, kCallTimeout);
      if (!stub_->CommitCheckpoint(&commit_context, commit, &committed).ok()) rejoin = true;
    }
  }
  if (hung_) {
    while (!stop_) sleep_for(1);  // hold the stream open, say nothing
  }
  // Leave the stream: unread micro-batches would hold Finish back. Cancelling a
  // stream of an attempt that is over costs nothing; of a running one, it is
  // quitting (the coordinator declares this worker dead).
  context.TryCancel();
  const auto status = reader->Finish();
  {
    std::lock_guard lock(mutex_);
    stream_context_ = nullptr;
  }
  (void)status;
  // Whatever ended the stream, WaitForGang says what comes next: a new attempt,
  // or the job's end (FAILED_PRECONDITION naming DONE, STOPPED or FAILED).
  return !stopped();
}

}  // namespace herd::coordinator
