// The training loop of one worker, and the local run built on it.
//
// run_worker: joins the job through a CoordinatorLink, and for each gang it is
// given connects the gang's collective (Gloo or NCCL), loads its share of the
// base model (sharding.h), resumes from the gang's checkpoint and trains LoRA
// adapters on the micro-batches the coordinator streams it, with AdamW, the
// config's learning-rate schedule, gradient accumulation and clipping. Gradients
// and the step's loss are summed over the ranks, so every rank takes the same
// optimizer step. Rank 0 writes checkpoints and the PEFT adapter to
// {model_output_dir}/{model_name}_adapter. When its attempt ends (a member died,
// the coordinator restarted) a worker leaves the step, waits for the next gang
// and resumes from the last committed checkpoint.
//
// train: `herd train CONFIG`: an in-process coordinator (the same Job, plan and
// batch stream a remote coordinator serves) and one worker.
#pragma once

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace herd {
struct Config;
}

namespace herd::train {

struct StepLog {
  uint64_t step = 0;
  double epoch = 0;  // fractional, as transformers logs it
  double loss = 0;   // token-weighted mean over the step's predicted tokens
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping
  uint64_t tokens = 0;   // tokens in the step (padding excluded)
};

struct TrainResult {
  std::vector<StepLog> steps;  // the whole run's, those before a resumed checkpoint included
  uint64_t resumed_from = 0;   // the checkpoint's step, 0 for a fresh run
  bool interrupted = false;    // stopped by a signal, at a checkpoint
  std::vector<std::pair<uint64_t, double>> evals;  // (step, loss on the held-out split)
  double seconds = 0;
  uint64_t tokens = 0;
  uint64_t peak_memory_bytes = 0;  // this process's peak resident memory
  std::filesystem::path adapter_dir;
};

class CoordinatorLink;
struct Gang;

struct TrainHooks {
  // Called after every step (tests and the progress display).
  std::function<void(const StepLog&, uint64_t total_steps)> on_step;
  // Lines for people: the log every logging_steps and the final summary.
  std::function<void(const std::string&)> print;
  // Damaged checkpoints passed over when resuming.
  std::function<void(const std::string&)> warn;
  // Set (by a signal handler): stop at the next step boundary with a checkpoint.
  const volatile std::sig_atomic_t* stop = nullptr;
};

// `resume` (or checkpoint.resume: auto): continue from the newest complete
// checkpoint in trainer_output_dir. Throws std::runtime_error (and the loaders'
// errors) with what went wrong.
TrainResult train(const Config& config, const TrainHooks& hooks = {}, bool resume = false);

struct WorkerOptions {
  std::string host = "local";
  // Gloo: the address other ranks reach this one at ("" : the host name's).
  std::string gloo_hostname;
  int local_rank = 0;  // the GPU of the NCCL backend
  // Called with each gang joined: the bytes of frozen base weights this rank holds
  // between uses, and the whole model's.
  std::function<void(const Gang&, int64_t held_bytes, int64_t model_bytes)> on_gang;
};

// The training loop against any coordinator. Returns when the job's last step is
// done (or, with one rank, when hooks.stop asks); throws JobOver when the job
// ended without this worker (it failed, was cancelled or drained).
TrainResult run_worker(const Config& config, CoordinatorLink& link, const TrainHooks& hooks,
                       const WorkerOptions& options = {});

}  // namespace herd::train
