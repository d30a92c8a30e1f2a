// A simulated worker: the shipping gang loop (gang_loop.h) and client (client.h)
// with a recipe whose step is fake. It meets its gang in the rendezvous store,
// reads its batch stream, "trains" for step_seconds, reports every step and
// commits checkpoints. The coordinator's integration tests drive coordinators
// with these; it can also crash or hang on demand. Having no collective to agree
// on a stop, it ignores a drain: the coordinator ends its attempt instead.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "client/gang_loop.h"

namespace herd::client {

struct SimWorkerOptions {
  ClientOptions client;
  std::string job_id;
  std::string host = "sim";
  double heartbeat_interval_s = 1.0;
  double step_seconds = 0;               // simulated compute per step
  uint64_t checkpoint_every = 0;         // commit a checkpoint every N steps (and always at the last step)
  // Empty: checkpoints are committed as ckpt/checkpoint-STEP with made-up digests and
  // no files. Set (the job's trainer_output_dir): as the trainer commits them, with a
  // manifest of no files written there, so that a restarted coordinator finds them.
  std::string output_dir;
  uint32_t kv_handshake_max_world = 16;  // ranks meet in the store when the gang is at most this big
  std::function<void(const char*, const grpc::Status&, double)> on_call;  // SessionOptions::on_call
};

// One trained step of one rank, as the worker saw it.
struct TrainedStep {
  uint64_t attempt = 0, step = 0;
  uint32_t rank = 0;
  std::vector<uint64_t> samples;
};

// GET /metrics from a Prometheus endpoint on this machine ("" when unreachable).
std::string scrape_metrics(int port);

class SimWorker : private Recipe {
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
  std::vector<TrainedStep> log() const;
  uint32_t rank() const { return rank_; }
  uint64_t steps_trained() const { return steps_trained_; }

 private:
  void run();
  // The recipe: the rendezvous handshake, a sleep for a step, checkpoints of no files.
  void setup(const Gang& gang) override;
  void step(const std::vector<herd::v1::MicroBatch>& batches, bool stop_requested, StepRecord& record) override;
  void recorded(const StepRecord& record) override;  // the step was reported: it goes into the log
  CheckpointRef save_checkpoint(uint64_t step) override;
  void finish(uint64_t, bool, uint64_t) override {}
  void release() override;  // a hung worker stays here until it is destroyed
  void sleep_for(double seconds);  // wakes early on stop, crash or hang
  void finish(std::string outcome);

  const SimWorkerOptions options_;
  WorkerSession session_;
  std::thread main_;
  std::atomic<bool> crashed_{false}, hung_{false}, stop_{false}, finished_{false};
  std::atomic<uint64_t> steps_trained_{0};
  std::atomic<uint32_t> rank_{0};
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  mutable std::mutex mutex_;
  std::string outcome_;
  Gang gang_;
  TrainedStep pending_;  // the step being trained
  std::vector<TrainedStep> log_;
};

}  // namespace herd::client
