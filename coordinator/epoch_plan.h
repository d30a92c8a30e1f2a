// The coordinator's plan of one epoch: which samples every rank trains in every
// micro-batch of every optimizer step. Deterministic from (seed, epoch, shape, the
// samples' lengths): any coordinator, restarted or not, computes the same plan.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace herd::coordinator {

struct PlanShape {
  size_t batch_size = 1;                   // samples per micro-batch per rank
  size_t gradient_accumulation_steps = 1;  // micro-batches per optimizer step
  size_t world_size = 1;                   // ranks

  size_t per_rank() const { return batch_size * gradient_accumulation_steps; }
  size_t global() const { return per_rank() * world_size; }
};

struct StepPlan {
  // ranks[r][m]: the samples of rank r's micro-batch m (batch_size of them; fewer
  // only in an epoch's last step, when the samples run out).
  std::vector<std::vector<std::vector<size_t>>> ranks;
  std::vector<uint64_t> rank_tokens;  // tokens each rank trains in this step
  double imbalance = 1.0;             // max / mean of rank_tokens
};

class EpochPlan {
 public:
  // `samples`: the sample ids to train this epoch (the train split); `lengths`:
  // tokens per sample id. The order is a seeded shuffle per epoch; every global
  // batch of shape.global() consecutive samples is split among the ranks so that
  // their token counts are as equal as a greedy longest-first assignment makes
  // them, and within a rank samples of similar length share a micro-batch (less
  // padding). Every sample appears exactly once.
  static EpochPlan build(const std::vector<size_t>& samples, const std::vector<uint32_t>& lengths, uint64_t seed,
                         uint64_t epoch, const PlanShape& shape);

  const std::vector<StepPlan>& steps() const { return steps_; }
  double max_imbalance() const;

 private:
  std::vector<StepPlan> steps_;
};

}  // namespace herd::coordinator
