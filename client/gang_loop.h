// The one gang loop: what a worker does with its membership of a job, whatever it
// trains. `herd worker` runs it with the trainer's recipe (worker/train/
// trainer.h); the coordinator's integration tests run it with a simulated recipe
// (sim_worker.h); a unit test runs it with a scripted one.
//
//   join; for each gang this worker is given:
//     leave the previous attempt's stream; the recipe sets up for the gang (meets
//     the other ranks, loads, resumes from the gang's checkpoint);
//     fetch the held-out split (when the recipe evaluates); open the batch stream;
//     for each step from the gang's resume step on:
//       read this rank's micro-batches; the recipe trains them; report the step;
//       the recipe records it; evaluate when due;
//       when every rank agreed to stop: ask the coordinator to drain, commit a
//       checkpoint of this step (unless one was), and end interrupted;
//       commit a checkpoint every checkpoint_every steps and at the last step;
//       when the step's batches say the attempt ends (the coordinator regrows the
//       gang): commit a checkpoint of it and wait for the next gang;
//     leave the stream; the recipe finishes the job.
//   After each attempt, however it ended, the recipe releases what it holds.
//   An attempt that ends early (AttemptOver: a member died, the coordinator
//   restarted) or fails here (GangError: a collective broke, which the coordinator
//   may not see; it is reported) is left for the next gang. JobOver ends the loop;
//   any other error is reported as this worker leaving the job, and thrown.
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "client/client.h"

namespace herd::client {

// Every figure of one step, made once (the recipe's figures, the loop's times and
// place in the job) and read by every sink: ReportStep, events.jsonl, the log line,
// the progress bar, Prometheus and TensorBoard.
struct StepRecord {
  uint64_t attempt = 0, step = 0, total_steps = 0, resume_step = 0, steps_per_epoch = 1;
  uint32_t rank = 0, world_size = 1;
  double epoch = 0;  // fractional, as transformers logs it
  double loss = 0;   // token-weighted mean over every rank's predicted tokens
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping
  uint64_t tokens = 0;   // every rank's tokens (padding excluded)
  uint64_t rank_tokens = 0, rank_samples = 0;  // this rank's
  double model_flops = 0, hardware_flops = 0;  // every rank's (worker/model/flops.h)
  double rank_model_flops = 0, rank_hardware_flops = 0;
  double seconds = 0;            // the step's wall time, from asking for its data to its report
  double data_wait_seconds = 0;  // of which waiting for its micro-batches
  std::map<std::string, double> collective_seconds;  // by operation
  std::map<std::string, double> memory_bytes;        // by kind: rss, gpu_allocated, gpu_reserved, gpu_peak
  bool stop = false;  // every rank agreed to stop after this step
};

// What ReportStep sends of a record.
herd::v1::StepTimings step_timings(const StepRecord& record);

struct CheckpointRef {
  std::string path, digest;
};

// What a worker trains. Every rank of a gang calls the same methods at the same
// steps; those that talk to the other ranks throw GangError when one is gone.
class Recipe {
 public:
  virtual ~Recipe() = default;
  // A gang's attempt starts: meet the other ranks, load, and resume from
  // gang.resume_checkpoint when gang.resume_step > 0.
  virtual void setup(const Gang& gang) = 0;
  // Trains this rank's micro-batches of the record's step and fills the record's
  // figures; `stop_requested`: this rank was asked to stop (record.stop says whether
  // every rank agreed).
  virtual void step(const std::vector<herd::v1::MicroBatch>& batches, bool stop_requested, StepRecord& record) = 0;
  // The step's record, once it is reported.
  virtual void recorded(const StepRecord& record) { (void)record; }
  // The held-out loss at `step` over this rank's share of the split.
  virtual void eval(uint64_t step, const std::vector<herd::v1::MicroBatch>& held_out) {
    (void)step;
    (void)held_out;
  }
  // Writes the checkpoint of `step`, complete on every rank's file system when it returns.
  virtual CheckpointRef save_checkpoint(uint64_t step) = 0;
  // The job's last step is trained (`interrupted`: false) or every rank stopped
  // after `step` with `checkpoint` committed.
  virtual void finish(uint64_t step, bool interrupted, uint64_t checkpoint) = 0;
  // The attempt is over, however it ended: let go of what it holds (a collective
  // of a gang that is gone, the model) before the next gang is waited for.
  virtual void release() {}
};

struct LoopOptions {
  uint64_t checkpoint_every = 0;  // 0: at the last step only (and where the ranks stop)
  bool eval = false;              // fetch the held-out split and call Recipe::eval
  uint64_t eval_every = 0;        // 0: at the last step only
  // Set (by a signal handler): this rank asks to stop; so does a draining job.
  const volatile std::sig_atomic_t* stop = nullptr;
  // A line for people (an attempt over, a gang failed); none when empty.
  std::function<void(const std::string&)> say;
};

enum class LoopEnd { kDone, kInterrupted };

// Runs the loop until this worker trained the job's last step or stopped at a
// committed checkpoint. Throws JobOver when the job ended without it.
LoopEnd run_gang_loop(WorkerSession& session, Recipe& recipe, const LoopOptions& options);

}  // namespace herd::client
