// A simulated worker: speaks the whole worker side of proto/herd.proto (register,
// heartbeat, gang, rendezvous store, batch stream, step reports, checkpoints,
// recovery) without a model. The coordinator's integration tests and its load
// benchmark drive coordinators with these; it can also crash or hang on demand.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/auth.h"
#include "herd/proto/herd.grpc.pb.h"

namespace herd::coordinator {

struct SimWorkerOptions {
  ClientOptions client;
  std::string job_id;
  std::string host = "sim";
  double heartbeat_interval_s = 1.0;
  double step_seconds = 0;        // simulated compute per step
  uint64_t checkpoint_every = 0;  // commit a checkpoint every N steps (and always at the last step)
  uint32_t kv_handshake_max_world = 16;  // ranks meet in the store when the gang is at most this big
};

// One trained step of one rank, as the worker saw it.
struct StepRecord {
  uint64_t attempt = 0, step = 0;
  uint32_t rank = 0;
  std::vector<uint64_t> samples;
};

// GET /metrics from a Prometheus endpoint on this machine ("" when unreachable).
std::string scrape_metrics(int port);

class SimWorker {
 public:
  explicit SimWorker(SimWorkerOptions options);
  ~SimWorker();  // stops and joins

  void start();
  // Like SIGKILL: the process is gone, its connections drop.
  void crash();
  // A hung process: no more heartbeats or progress, connections stay open.
  void hang();

  bool finished() const { return finished_; }
  std::string outcome() const;  // how it ended ("" while running)
  std::vector<StepRecord> log() const;
  uint32_t rank() const { return rank_; }
  uint64_t steps_trained() const { return steps_trained_; }
  // Client-side latencies in seconds, for the load benchmark.
  std::vector<float> heartbeat_latencies() const;
  std::vector<float> report_latencies() const;

 private:
  void main_loop();
  void heartbeat_loop();
  bool stopped() const { return crashed_ || hung_ || stop_; }
  bool register_worker();
  // One attempt: gang, handshake, stream and train. Returns false when the run is over.
  bool run_attempt();
  void finish(std::string outcome);
  void sleep_for(double seconds);  // wakes early on stop or crash
  void wake();

  SimWorkerOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<herd::v1::Coordinator::Stub> stub_;
  std::thread main_, heartbeat_;
  std::atomic<bool> crashed_{false}, hung_{false}, stop_{false}, finished_{false};
  std::atomic<bool> reregister_{false};
  std::atomic<uint64_t> attempt_{0}, step_{0}, steps_trained_{0};
  std::atomic<uint32_t> rank_{0};
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  mutable std::mutex mutex_;
  std::string worker_id_;
  std::string outcome_;
  grpc::ClientContext* stream_context_ = nullptr;  // to cancel the stream on crash or recovery
  std::vector<StepRecord> log_;
  std::vector<float> heartbeat_latency_, report_latency_;
};

}  // namespace herd::coordinator
