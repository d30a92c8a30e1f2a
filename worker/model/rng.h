// The default generators' states: LoRA dropout draws from the generator of the
// device its tensors live on (the CPU's, or a GPU's), activation checkpointing
// replays it, checkpoints save it.
#pragma once

#include <mutex>

#include <torch/torch.h>

namespace herd::model {

inline torch::Tensor rng_state(torch::Device device = torch::kCPU) {
  at::Generator g = torch::globalContext().defaultGenerator(device);  // a handle on the default
  std::lock_guard lock(g.mutex());
  return g.get_state();
}

inline void set_rng_state(const torch::Tensor& state, torch::Device device = torch::kCPU) {
  at::Generator g = torch::globalContext().defaultGenerator(device);
  std::lock_guard lock(g.mutex());
  g.set_state(state);
}

}  // namespace herd::model
