// The job a coordinator owns: its state machine (docs/protocol.md) and its journal,
// the facade over its parts — the workers and the gang (roster.h), the attempt's
// rendezvous store (rendezvous_store.h), what each step trains (step_planner.h) and
// what was committed (commit_ledger.h). Plain C++ behind one mutex, so it is tested without a network; the gRPC service
// (service.h) authenticates a call and hands it here. Every method validates its
// request and answers a precise grpc::Status; none throws on bad input.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "coordinator/commit_ledger.h"
#include "coordinator/epoch_plan.h"
#include "coordinator/journal.h"
#include "coordinator/rendezvous_store.h"
#include "coordinator/roster.h"
#include "coordinator/samples.h"
#include "coordinator/step_planner.h"
#include "herd/proto/herd.pb.h"

namespace herd {
struct Config;
}

namespace herd::coordinator {

struct JobSettings {
  std::string job_id;
  uint32_t world_size = 1;
  uint32_t min_workers = 1;
  uint32_t batch_size = 1;
  uint32_t gradient_accumulation_steps = 1;
  uint64_t seed = 42;
  double num_train_epochs = 1;
  uint64_t max_steps = 0;  // 0: num_train_epochs
  double heartbeat_timeout_s = 30;
  double replacement_timeout_s = 60;
  bool regrow = true;            // a gang below world_size takes spares back in at a checkpoint
  double regrow_after_s = 30;    // how long a spare must have been alive before it counts for that
  uint32_t lookahead_steps = 2;  // how far a stream runs ahead of the last committed step
  uint64_t pack_window = 0;      // data.packing: rows packed to this many tokens (the context window)
  std::map<std::string, std::string> shared;  // shared_settings(config): what a worker's config must match
  // trainer_output_dir: a committed checkpoint's path must be its checkpoint-STEP, so
  // that no call names a file outside the job's directories. Empty: any path (tests).
  std::string checkpoint_root;

  static JobSettings from_config(const Config& config);
  uint64_t global_batch() const { return uint64_t{batch_size} * gradient_accumulation_steps * world_size; }  // rows
};

// Journal record types (payloads are JSON).
enum RecordType : uint32_t {
  kStart = 1,       // a coordinator process started: {incarnation, job_id, plan fingerprint}
  kGang = 2,        // a gang formed: {attempt, world_size, accumulation, resume_step, workers, reason}
  kStep = 3,        // a step committed: {step, attempt, loss, tokens, samples}
  kCheckpoint = 4,  // a checkpoint committed: {step, attempt, paths, digests}
  kWorkerLost = 5,  // a gang member died: {worker, rank, attempt, reason}
  kCancel = 6,      // {reason}
  kDone = 7,        // {step}
};

// The samples of every step that counts, from a journal: a step committed and then
// rolled back by a recovery (a gang that resumed from an earlier checkpoint) is
// dropped, so over a finished job each sample of an epoch appears exactly once.
std::map<uint64_t, std::vector<uint64_t>> trained_samples(const std::vector<JournalRecord>& records);

// How a job's end reads as a process's exit status (herd-coordinator's, a worker's):
// DONE 0, STOPPED (drained, or stopped by a signal at a checkpoint) 130, FAILED 1.
constexpr int kExitStopped = 130;
inline int exit_status(herd::v1::JobState state) {
  return state == herd::v1::DONE ? 0 : state == herd::v1::STOPPED ? kExitStopped : 1;
}

class Job;

// The job a config describes: its train split of the tokenized dataset (built
// once into the token cache, common/token_cache.h) and its journal.
std::unique_ptr<Job> load_job(const Config& config, const std::filesystem::path& journal_file);

class Job {
  friend std::unique_ptr<Job> load_job(const Config&, const std::filesystem::path&);

 public:
  using Clock = std::function<double()>;  // monotonic seconds
  static Clock steady_clock();

  // `train`: the sample ids of the train split. `journal_file` empty: nothing is
  // persisted (tests); otherwise the job resumes from what the journal holds (the
  // newest committed checkpoint whose files still match), and a journal of another
  // job or plan is refused (JournalError). This is the one place a resume is decided.
  Job(JobSettings settings, std::shared_ptr<const SampleSource> samples, std::vector<size_t> train,
      const std::filesystem::path& journal_file, Clock clock = steady_clock());
  ~Job();

  // Rows of a plan as one right-padded micro-batch (what the stream sends; step_planner.h).
  herd::v1::MicroBatch micro_batch(const std::vector<size_t>& rows) const;

  uint64_t total_steps() const { return total_steps_; }
  uint64_t steps_per_epoch() const { return planner_->steps_per_epoch(); }
  size_t train_samples() const { return planner_->train_samples(); }
  size_t rows_per_epoch() const { return planner_->rows_per_epoch(); }
  double packing_efficiency() const { return planner_->packing_efficiency(); }
  // "packing: N samples in R rows of W tokens, E% full"; empty when the job is not packed.
  std::string packing_summary() const;
  const JobSettings& settings() const { return settings_; }
  herd::v1::JobState state() const;
  // Max and mean over an epoch's steps of max / mean tokens per rank, under the
  // current gang's shape.
  std::pair<double, double> epoch_imbalance(uint64_t epoch);

  // The committed checkpoints a restart passed over because their files no longer
  // match (newest first): "skipping PATH: what is wrong".
  const std::vector<std::string>& resume_warnings() const { return resume_warnings_; }

  grpc::Status Register(const herd::v1::RegisterRequest& request, herd::v1::RegisterResponse* response);
  grpc::Status Heartbeat(const herd::v1::HeartbeatRequest& request, herd::v1::HeartbeatResponse* response);
  // Blocking calls poll `cancelled` (the client went away) while they wait.
  grpc::Status WaitForGang(const herd::v1::WaitForGangRequest& request, herd::v1::WaitForGangResponse* response,
                           const std::function<bool()>& cancelled);
  grpc::Status KvSet(const herd::v1::KvSetRequest& request);
  grpc::Status KvGet(const herd::v1::KvGetRequest& request, herd::v1::KvGetResponse* response);
  grpc::Status KvWait(const herd::v1::KvWaitRequest& request, const std::function<bool()>& cancelled);
  grpc::Status KvAdd(const herd::v1::KvAddRequest& request, herd::v1::KvAddResponse* response);
  // The batch stream, polled (the service drives it without a thread per stream):
  // OpenStream validates the request; NextStep answers step `step`'s micro-batches
  // for the caller's rank, nothing when it is not time yet, or how the stream ends
  // (OK at the end of the run, ABORTED when the attempt is over, ...). StreamLost
  // declares a worker whose stream broke dead.
  struct StreamStep {
    std::optional<grpc::Status> end;          // set: the stream ends with this
    std::vector<herd::v1::MicroBatch> batches;  // empty: not yet
  };
  grpc::Status OpenStream(const herd::v1::StreamBatchesRequest& request);
  StreamStep NextStep(const herd::v1::StreamBatchesRequest& request, uint64_t step);
  void StreamLost(const herd::v1::StreamBatchesRequest& request, const std::string& reason);
  // A counter that moves on every change a stream may wait for (commits, states,
  // gangs, shutdown); WaitForChange returns when it differs from `seen` or after
  // `timeout`.
  uint64_t WaitForChange(uint64_t seen, std::chrono::milliseconds timeout) const;
  grpc::Status ReportStep(const herd::v1::ReportStepRequest& request, herd::v1::ReportStepResponse* response);
  // A member's collective failed: a new gang of the live workers (proto: ReportFailureRequest).
  grpc::Status ReportFailure(const herd::v1::ReportFailureRequest& request);
  // The caller's share of the held-out split (proto/herd.proto, EvalBatchesRequest).
  grpc::Status EvalBatches(const herd::v1::EvalBatchesRequest& request, std::vector<herd::v1::MicroBatch>* out);
  grpc::Status CommitCheckpoint(const herd::v1::CommitCheckpointRequest& request,
                                herd::v1::CommitCheckpointResponse* response);
  // `ranks`: also one RankStatus per gang member (the main loop and metrics skip them).
  void GetStatus(herd::v1::JobStatus* response, bool ranks = true) const;
  grpc::Status Drain(herd::v1::OperatorResponse* response);
  grpc::Status Cancel(const herd::v1::CancelRequest& request, herd::v1::OperatorResponse* response);

  // The job has ended and every live worker knows it (a heartbeat, a gang wait or
  // its stream answered the end; or, DONE, it reported its share of the last
  // checkpoint): the coordinator of a batch job may exit.
  bool everyone_told() const;

  // Declares workers whose heartbeat is overdue dead, forms a smaller gang when the
  // replacement wait is over, and asks a gang below the world size to stop at a
  // checkpoint when spares can regrow it. The service calls it several times a second.
  void tick();
  // Ends every blocking call (UNAVAILABLE): the server is going away.
  void shutdown();

 private:
  using Worker = Roster::Worker;
  using Lock = std::unique_lock<std::mutex>;
  bool training_locked() const;  // RUNNING or DRAINING
  bool terminal_locked() const;  // DONE, FAILED or STOPPED
  // The caller as a member of the current gang in `attempt`, or the status that refuses it.
  grpc::Status member_locked(const std::string& worker_id, uint64_t attempt, Worker** out);
  void try_form_gang_locked(double now);
  // The largest gang of at most `workers` (and the world size) that keeps the global
  // batch and min_workers; 0 when none does.
  uint32_t largest_gang_locked(size_t workers) const;
  void try_regrow_locked(double now);
  // `reason`: "start", "failure", "shrink" or "regrow" (WaitForGangResponse.reason).
  void form_gang_locked(uint32_t size, const std::vector<Worker*>& alive, const char* reason);
  void mark_dead_locked(Worker& w, const std::string& reason, double now);
  void set_state_locked(herd::v1::JobState state, std::string message);
  void journal_locked(RecordType type, const std::string& payload);
  grpc::Status same_settings(const google::protobuf::Map<std::string, std::string>& theirs) const;
  void replay(const std::vector<JournalRecord>& records);

  const JobSettings settings_;
  std::unique_ptr<StepPlanner> planner_;  // built once the settings are checked
  std::vector<size_t> eval_;
  uint64_t total_steps_ = 0;
  const Clock clock_;
  std::unique_ptr<Journal> journal_;

  void changed_locked();  // bumps version_ and wakes the waiters

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;  // state, gang or committed step
  uint64_t version_ = 0;
  std::condition_variable kv_changed_;  // the store, or the attempt
  herd::v1::JobState state_ = herd::v1::REGISTERING;
  std::string message_;
  bool drain_requested_ = false;
  bool shutdown_ = false;
  uint64_t incarnation_ = 0;
  Roster roster_;
  uint64_t attempt_ = 0;
  double recovering_since_ = 0;
  bool failure_reported_ = false;  // RECOVERING because a member's collective failed
  std::string attempt_reason_;     // why the current attempt was formed
  uint64_t regrow_step_ = 0;       // the step whose batches end the attempt for a regrow (0: none)
  CommitLedger ledger_;
  RendezvousStore store_;  // the current attempt's
  std::vector<std::string> resume_warnings_;
};

}  // namespace herd::coordinator
