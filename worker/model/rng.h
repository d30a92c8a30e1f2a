// The CPU generator's state: LoRA dropout draws from it, activation checkpointing
// replays it, checkpoints save it.
#pragma once

#include <mutex>

#include <torch/torch.h>

namespace herd::model {

inline torch::Tensor cpu_rng_state() {
  at::Generator cpu = torch::globalContext().defaultGenerator(torch::kCPU);  // a handle on the default
  std::lock_guard lock(cpu.mutex());
  return cpu.get_state();
}

inline void set_cpu_rng_state(const torch::Tensor& state) {
  at::Generator cpu = torch::globalContext().defaultGenerator(torch::kCPU);
  std::lock_guard lock(cpu.mutex());
  cpu.set_state(state);
}

}  // namespace herd::model
