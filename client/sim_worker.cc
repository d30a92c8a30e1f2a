#include "client/sim_worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "common/checkpoint_files.h"
#include "common/files.h"

namespace herd::client {

namespace v1 = herd::v1;

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

namespace {
SessionOptions session_options(const SimWorkerOptions& o) {
  SessionOptions s;
  s.client = o.client;
  s.job_id = o.job_id;
  s.host = o.host;
  s.heartbeat_interval_s = o.heartbeat_interval_s;
  s.on_call = o.on_call;
  return s;
}
}  // namespace

SimWorker::SimWorker(SimWorkerOptions options) : options_(std::move(options)), session_(session_options(options_)) {
  session_.set_tokens_per_second(1000);
}

SimWorker::~SimWorker() {
  stop_ = true;
  {
    std::lock_guard lock(wake_mutex_);
    wake_.notify_all();
  }
  session_.abandon();
  if (main_.joinable()) main_.join();
}

void SimWorker::start() {
  main_ = std::thread([this] { run(); });
}

void SimWorker::crash() {
  crashed_ = true;
  session_.abandon();
  std::lock_guard lock(wake_mutex_);
  wake_.notify_all();
}

void SimWorker::hang() {
  hung_ = true;
  session_.stop_heartbeats();
  std::lock_guard lock(wake_mutex_);
  wake_.notify_all();
}

std::string SimWorker::outcome() const {
  std::lock_guard lock(mutex_);
  return outcome_;
}

std::vector<TrainedStep> SimWorker::log() const {
  std::lock_guard lock(mutex_);
  return log_;
}

void SimWorker::finish(std::string outcome) {
  std::lock_guard lock(mutex_);
  outcome_ = std::move(outcome);
  finished_ = true;
}

void SimWorker::sleep_for(double seconds) {
  std::unique_lock lock(wake_mutex_);
  wake_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stop_ || crashed_ || hung_; });
}

void SimWorker::run() {
  try {
    LoopOptions loop;
    loop.checkpoint_every = options_.checkpoint_every;
    run_gang_loop(session_, *this, loop);
    session_.wait_for_gang(gang_.attempt);  // what comes next: the job's end (JobOver says how)
  } catch (const JobOver& e) {
    finish(fmt::format("{} ({})", e.what(), v1::JobState_Name(e.state())));
  } catch (const std::exception& e) {
    finish(e.what());
  }
}

void SimWorker::setup(const Gang& gang) {
  gang_ = gang;
  rank_ = gang.rank;
  // Meet the other ranks in the store, as a collective's bootstrap would.
  if (gang.world_size > options_.kv_handshake_max_world) return;
  try {
    session_.kv_set(fmt::format("rank/{}", gang.rank), options_.host);
    for (uint32_t r = 0; r < gang.world_size; ++r) session_.kv_get(fmt::format("rank/{}", r), std::chrono::seconds(10));
  } catch (const CallError& e) {  // the rendezvous broke: the attempt is over
    throw AttemptOver(e.what());
  }
}

void SimWorker::step(const std::vector<v1::MicroBatch>& batches, bool, StepRecord& record) {
  pending_ = {gang_.attempt, record.step, gang_.rank, {}};
  for (const auto& batch : batches) {
    pending_.samples.insert(pending_.samples.end(), batch.sample_ids().begin(), batch.sample_ids().end());
    for (uint32_t length : batch.lengths()) record.rank_tokens += length;
  }
  sleep_for(options_.step_seconds);  // "training"
  if (crashed_ || hung_ || stop_) throw AttemptOver("the simulated worker stopped");
  record.loss = 2.0 / static_cast<double>(record.step);
}

void SimWorker::recorded(const StepRecord&) {
  {
    std::lock_guard lock(mutex_);
    log_.push_back(std::move(pending_));
  }
  ++steps_trained_;
}

void SimWorker::release() {
  if (!hung_) return;
  // A hung process: it holds its connections and stream, says nothing, and never
  // asks for another gang.
  std::unique_lock lock(wake_mutex_);
  wake_.wait(lock, [this] { return stop_.load(); });
}

CheckpointRef SimWorker::save_checkpoint(uint64_t step) {
  if (options_.output_dir.empty()) {
    const uint64_t h = std::hash<std::string>{}(fmt::format("{}/{}", step, gang_.rank));
    return {fmt::format("ckpt/checkpoint-{}", step), fmt::format("{:016x}{:016x}{:016x}{:016x}", h, h ^ 1, h ^ 2, h ^ 3)};
  }
  const auto dir = checkpoint_dir(options_.output_dir, step);
  std::filesystem::create_directories(dir);
  const auto tmp = dir / fmt::format("manifest.tmp-{}", gang_.rank);
  write_file(tmp, fmt::format(R"({{"step": {}, "files": {{}}}})", step));
  std::filesystem::rename(tmp, dir / kCheckpointManifest);  // every rank writes the same bytes
  return {dir.string(), checkpoint_digest(dir)};
}

}  // namespace herd::client
