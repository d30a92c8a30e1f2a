// One step of LoRA training, the one every launch mode and bench/train_step take:
// this rank's micro-batches in; the step's loss, tokens and gradient norm out,
// summed over the ranks of the gang.
//
//   zero the adapters' gradients; for each micro-batch: forward, loss, backward
//   (the last one syncs the sharded gradients); sum loss, tokens and the stop flag
//   over the ranks; clip the gradient norm; AdamW.
//
// A Replica is what one gang attempt trains with: the collective, this rank's
// share of the frozen base weights (sharding.h), the model and the optimizer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "herd/proto/herd.pb.h"
#include "worker/comm/collective.h"
#include "worker/model/flops.h"
#include "worker/model/llama.h"
#include "worker/train/sharding.h"

namespace herd {
struct Config;
}

namespace herd::train {

// Members in the order they are built; destroyed in reverse (the weights let go of
// the model first).
struct Replica {
  std::unique_ptr<comm::Collective> comm;
  std::optional<model::Llama> model;
  std::unique_ptr<ShardedWeights> weights;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::vector<double> lr_ratios;  // each optimizer group's lr over the schedule's (LoRA+)
  model::FlopCounter flops;  // of the model as trained (its LoRA, its recompute)
};

// What the config says about loading the model: quantization, dtypes, LoRA.
model::LoadOptions load_options(const Config& config, torch::Device device);

// A replica over `comm`: the model comes from `load` (the base model's files for
// the trainer, random tensors of a shape for the benchmark), given `options` with
// this rank's sharding hook added; the optimizer is the config's AdamW: one group,
// or with lora.loraplus_lr_ratio peft's LoRA+ groups (create_loraplus_optimizer):
// the A matrices at the schedule's lr, the B matrices and DoRA's magnitudes (peft's
// 1-D parameters) at ratio times it; trainer.weight_decay in both.
void build_replica(Replica& r, const Config& config, std::unique_ptr<comm::Collective> comm,
                   model::LoadOptions options, const std::function<model::Llama(const model::LoadOptions&)>& load);

// The learning rate of step `step` (1-based) of `total`: trainer.learning_rate on
// the config's schedule, after its warmup.
double learning_rate(const Config& config, uint64_t step, uint64_t total);

struct StepOutcome {
  double loss = 0;  // token-weighted mean over the step's predicted tokens, every rank's
  uint64_t tokens = 0;       // every rank's tokens (padding excluded)
  uint64_t rank_tokens = 0;  // this rank's
  uint64_t rank_samples = 0;  // this rank's samples
  model::Flops flops;         // every rank's (worker/model/flops.h)
  model::Flops rank_flops;    // this rank's
  double grad_norm = 0;      // before clipping
  bool stop = false;         // some rank asked to stop after this step
};

StepOutcome train_step(Replica& r, const Config& config, const std::vector<herd::v1::MicroBatch>& batches, double lr,
                       bool stop_requested);

// Mean next-token loss over the held-out split (masked tokens only), without
// dropout or gradients: each rank's share, summed over the ranks. The trainer's
// periodic eval and `herd eval CONFIG` both take this path.
struct EvalResult {
  double loss = 0;         // over every rank's predicted tokens
  uint64_t samples = 0;    // the split's
  uint64_t predicted = 0;  // tokens counted in the loss
};
EvalResult eval_loss(model::Llama& model, comm::Collective& comm, const std::vector<herd::v1::MicroBatch>& batches);

// One training forward and backward of the mean next-token loss over the full rows
// `ids` [rows, tokens] (activation recompute on, dropout as the model's adapter
// says), for comparing with peft: the loss, every LoRA tensor and its gradient
// (NAME.grad), and each linear layer's base weight as herd computes with it (NF4
// dequantized), all float32 on the CPU.
std::vector<std::pair<std::string, torch::Tensor>> adapter_gradients(model::Llama& model, const torch::Tensor& ids);

}  // namespace herd::train
