// Training checkpoints: {trainer_output_dir}/checkpoint-STEP/ with the adapter
// (peft's files), the optimizer state, the RNG state, trainer_state.json (step,
// epoch, the loss history: transformers' layout) and checkpoint.json, a manifest of
// every file's size and hash written last. A checkpoint is written under a
// temporary name and renamed, so a crash never leaves a half one under the final
// name. Which checkpoint a job resumes from is the coordinator's choice
// (common/checkpoint_files.h): the newest committed one whose files match.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "worker/model/llama.h"
#include "worker/train/trainer.h"

namespace herd::train {

struct CheckpointMeta {
  std::string base_model, task_type = "CAUSAL_LM", bias = "none";
  uint64_t steps_per_epoch = 1, total_steps = 0;
};

// Writes checkpoint-STEP, removes any of a later step (a timeline the job left)
// and keeps the newest `keep_last`. Returns its path.
std::filesystem::path write_checkpoint(const std::filesystem::path& output_dir, uint64_t step, model::Llama& model,
                                       torch::optim::Optimizer& optimizer, const std::vector<StepLog>& history,
                                       const CheckpointMeta& meta, int64_t keep_last);

// Loads a checkpoint into the model and optimizer and restores the RNG; returns the
// loss history up to its step.
std::vector<StepLog> load_checkpoint(const std::filesystem::path& dir, model::Llama& model,
                                     torch::optim::Optimizer& optimizer);

}  // namespace herd::train
