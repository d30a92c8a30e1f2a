// The training loop of one worker.
//
// run_worker: joins the job through the client's WorkerSession, and for each gang
// it is given connects the gang's collective (Gloo or NCCL), loads its share of
// the base model (sharding.h), resumes from the checkpoint the coordinator names
// and trains LoRA adapters on the micro-batches the coordinator streams it, with
// AdamW, the config's learning-rate schedule, gradient accumulation and clipping.
// Gradients, the step's loss and a stop flag are summed over the ranks, so every
// rank takes the same optimizer step and stops at the same step. Rank 0 writes
// checkpoints, the events file (run_record.h) and the PEFT adapter to
// {model_output_dir}/{model_name}_adapter. When its attempt ends (a member died,
// the coordinator restarted) a worker leaves the step, waits for the next gang
// and resumes from the last committed checkpoint.
#pragma once

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "client/client.h"
#include "worker/train/run_record.h"

namespace herd {
struct Config;
}

namespace herd::train {

struct TrainResult {
  std::vector<StepLog> steps;  // the whole run's, those before a resumed checkpoint included
  uint64_t resumed_from = 0;   // the checkpoint's step, 0 for a fresh run
  bool interrupted = false;    // stopped (a signal, a drain) at a committed checkpoint
  std::vector<std::pair<uint64_t, double>> evals;  // (step, loss on the held-out split)
  double seconds = 0;
  uint64_t tokens = 0;
  uint64_t peak_memory_bytes = 0;  // this process's peak resident memory
  std::filesystem::path adapter_dir;
};

struct WorkerOptions {
  // Gloo: the address other ranks reach this one at ("" : the host name's).
  std::string gloo_hostname;
  int local_rank = 0;  // the GPU of the NCCL backend
  bool progress_bar = false;
  // Set (by a signal handler): every rank stops after the step in which one rank
  // saw it set, with a committed checkpoint, and the job is STOPPED (a restart resumes).
  const volatile std::sig_atomic_t* stop = nullptr;
  // What resumes a stopped job in this launch mode, for the stop message.
  std::string resume_how = "`herd train CONFIG --resume`";
  // Called with each gang joined: the bytes of frozen base weights this rank holds
  // between uses, and the whole model's.
  std::function<void(const client::Gang&, int64_t held_bytes, int64_t model_bytes)> on_gang;
};

// The training loop against a coordinator. Returns when the job's last step is
// done or it was stopped at a checkpoint; throws client::JobOver when the job ended
// without this worker (it failed, was cancelled or drained before it joined).
TrainResult run_worker(const Config& config, client::WorkerSession& session, const WorkerOptions& options = {});

// Where a worker trains: trainer.device, with auto meaning the GPU named by
// LOCAL_RANK when one is visible (its name, as the coordinator records it).
std::string training_device_name(const Config& config, int local_rank);

}  // namespace herd::train
