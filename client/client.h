// The one client of proto/herd.proto. Torch-free: the worker, `herd status`,
// `herd drain`/`cancel`, the launchers, the coordinator's integration tests and
// its load benchmark all speak to a coordinator through this file.
//
// Coordinator: the calls that need no membership (status, the job's config,
// operators' drain and cancel, the gRPC health check).
//
// WorkerSession: one worker's membership of a job. It registers (again when the
// coordinator restarted or declared it dead), heartbeats from its own thread,
// waits for gangs, meets the other ranks in the attempt's rendezvous store, reads
// its batch stream, reports steps, commits checkpoints and reports failures. When
// the coordinator says the attempt is over (a heartbeat answers another attempt or
// RECOVERING) the stream is cancelled, so a worker waiting for a step leaves it.
// Calls that find the attempt over throw AttemptOver: leave the step, call
// wait_for_gang. A job that ended, or a coordinator gone for good, is JobOver.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "client/options.h"
#include "common/grpc_codes.h"
#include "herd/proto/herd.grpc.pb.h"

namespace herd::client {

// One connection of its own per channel (each worker of a test process is then
// like a process of its own), with keepalives.
std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options);
// Adds the token and a deadline to a call.
void prepare(grpc::ClientContext& context, const std::string& token, std::chrono::milliseconds timeout);
// "UNAVAILABLE: connection refused": a status by its code's name.
std::string describe(const grpc::Status& status);
using herd::code_name;  // common/grpc_codes.h

// A call the coordinator refused, or that did not reach it.
class CallError : public std::runtime_error {
 public:
  CallError(const std::string& what, const grpc::Status& status);
};

class Coordinator {
 public:
  explicit Coordinator(ClientOptions options);

  grpc::Status status(herd::v1::JobStatus* out, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  grpc::Status drain(herd::v1::OperatorResponse* out);
  grpc::Status cancel(const std::string& reason, herd::v1::OperatorResponse* out);
  // The job's config; a coordinator that is still starting is retried for `patience`.
  grpc::Status job_config(herd::v1::JobConfig* out, std::chrono::seconds patience = std::chrono::seconds(60));
  // grpc.health.v1.Health/Check of the whole server (no token: what a Kubernetes
  // probe asks): "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".
  grpc::Status health(std::string* out, std::chrono::milliseconds timeout = std::chrono::seconds(5));

 private:
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<herd::v1::Coordinator::Stub> stub_;
};

struct Gang {
  uint32_t rank = 0, world_size = 1, accumulation = 1;
  uint64_t attempt = 0, resume_step = 0, total_steps = 0, steps_per_epoch = 0;
  std::string resume_checkpoint;  // "" when resume_step is 0
  std::string reason;             // why the attempt was formed: start, failure, shrink or regrow
};

// This worker's attempt is over (a member died, the coordinator restarted or says
// RECOVERING): leave the step, wait for the next gang.
class AttemptOver : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The job ended without needing this worker any more, or its coordinator is gone.
class JobOver : public std::runtime_error {
 public:
  JobOver(const std::string& what, herd::v1::JobState state) : std::runtime_error(what), state_(state) {}
  // DONE, STOPPED or FAILED; JOB_STATE_UNSPECIFIED when the coordinator could not be asked.
  herd::v1::JobState state() const { return state_; }

 private:
  herd::v1::JobState state_;
};

struct SessionOptions {
  ClientOptions client;
  std::string job_id;
  std::string host = "local";
  std::string device = "cpu";
  double heartbeat_interval_s = 0;          // 0: a third of the lease, at most 1 s
  std::chrono::seconds give_up_after{300};  // unreachable this long: JobOver
  std::map<std::string, std::string> settings;  // RegisterRequest.settings: the config keys ranks share
  // Told of each answer to the calls a training loop makes every step (Heartbeat,
  // ReportStep, CommitCheckpoint) with the call's seconds: the load benchmark's clock.
  std::function<void(const char* method, const grpc::Status& status, double seconds)> on_call;
};

class WorkerSession {
 public:
  explicit WorkerSession(SessionOptions options);
  ~WorkerSession();  // stops the heartbeats and leaves the stream

  // Registers (retrying while the coordinator is unreachable) and starts heartbeating.
  void join();
  // Blocks until this worker holds a rank in a gang of an attempt after `after`.
  Gang wait_for_gang(uint64_t after);
  Gang gang() const;

  // The attempt's rendezvous store. kv_get waits until `key` is set.
  void kv_set(const std::string& key, const std::string& value);
  std::string kv_get(const std::string& key, std::chrono::milliseconds timeout);

  void open_stream(uint64_t from_step);
  // This rank's micro-batches of `step` (gang().accumulation of them).
  std::vector<herd::v1::MicroBatch> next_step(uint64_t step);
  // Leaves the attempt's stream (once a new gang formed, or at the end).
  void close_stream();
  // Both answer whether the call completed the commit (every rank has reported).
  bool report_step(uint64_t step, double loss, uint64_t tokens, const herd::v1::StepTimings& timings);
  bool commit_checkpoint(uint64_t step, const std::string& path, const std::string& digest);
  // This rank's collective failed: the coordinator starts a new attempt (best
  // effort: a refusal means one has started already). `leaving`: this worker cannot
  // go on and exits; the coordinator declares it dead at once.
  void report_failure(const std::string& reason, bool leaving = false);
  // This rank's share of the held-out split (empty: no eval).
  std::vector<herd::v1::MicroBatch> eval_batches();
  // Asks the coordinator to stop the job at the next committed checkpoint.
  void drain();

  void set_tokens_per_second(double value) { tokens_per_second_ = value; }
  // The last heartbeat found the job DRAINING (an operator, or a rank, asked it to stop).
  bool draining() const { return draining_; }

  // Faults, for tests: like a killed process (every call in flight is cancelled,
  // heartbeats stop, later calls throw JobOver), and like a hung one (heartbeats
  // stop, connections stay open).
  void abandon();
  void stop_heartbeats() { heartbeats_stopped_ = true; }

 private:
  class Call;
  void register_worker();
  // Waits `backoff` before a call is tried again; JobOver once this worker is
  // abandoned. While the channel is down the wait ends as soon as it connects: it
  // polls the channel, which otherwise sees its reconnection only at gRPC's backup
  // poll, every 5 s (that once added up to 5 s to a recovery from a restarted
  // coordinator or a healed partition).
  void wait_to_retry(std::chrono::duration<double> backoff);
  void heartbeat_loop();
  herd::v1::HeartbeatRequest heartbeat_request_locked() const;
  void heartbeat_answered_locked(const herd::v1::HeartbeatRequest& sent, const grpc::Status& status,
                                 const herd::v1::HeartbeatResponse& response);
  herd::v1::ReportStepRequest report_request(uint64_t step, double loss, uint64_t tokens,
                                             const herd::v1::StepTimings& timings) const;
  herd::v1::CommitCheckpointRequest checkpoint_request(uint64_t step, const std::string& path,
                                                       const std::string& digest) const;
  herd::v1::StreamBatchesRequest stream_request(uint64_t from_step) const;
  // A fresh stream context (cancelled at once when the attempt is known to be over).
  grpc::ClientContext* new_stream_context_locked();
  // Throws AttemptOver for a refusal that means "this attempt is over", else CallError.
  void finish_call(const grpc::Status& status, const char* what);
  void observe(const char* method, const grpc::Status& status, std::chrono::steady_clock::time_point start) const;
  herd::v1::JobState job_state();
  std::string worker_id() const;
  uint64_t attempt() const;

  const SessionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<herd::v1::Coordinator::Stub> stub_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false, abandoned_ = false;
  std::atomic<bool> heartbeats_stopped_{false}, draining_{false};
  std::atomic<double> tokens_per_second_{0};
  std::atomic<uint64_t> last_step_{0};
  std::string worker_id_;
  uint32_t lease_s_ = 30;
  Gang gang_;
  uint64_t over_attempt_ = 0;  // an attempt the heartbeats found over
  std::set<grpc::ClientContext*> in_flight_;
  std::unique_ptr<grpc::ClientContext> stream_context_;
  std::unique_ptr<grpc::ClientReader<herd::v1::MicroBatch>> reader_;
  std::thread heartbeat_;
};

}  // namespace herd::client
