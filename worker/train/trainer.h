// One local training run, as `herd train CONFIG` does it: an in-process
// coordinator (the same Job, plan and batch stream a remote coordinator serves)
// feeds one worker that trains LoRA adapters on the config's base model with AdamW,
// the config's learning-rate schedule, gradient accumulation and clipping, and
// writes the PEFT adapter to {model_output_dir}/{model_name}_adapter.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
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
  std::vector<StepLog> steps;
  double seconds = 0;
  uint64_t tokens = 0;
  uint64_t peak_memory_bytes = 0;  // this process's peak resident memory
  std::filesystem::path adapter_dir;
};

struct TrainHooks {
  // Called after every step (tests and the progress display).
  std::function<void(const StepLog&, uint64_t total_steps)> on_step;
  // Lines for people: the log every logging_steps and the final summary.
  std::function<void(const std::string&)> print;
};

// Throws std::runtime_error (and the loaders' errors) with what went wrong.
TrainResult train(const Config& config, const TrainHooks& hooks = {});

}  // namespace herd::train
