// What each step of a job trains. The train split's sample lengths and loss tokens
// are read once; each epoch's plan (epoch_plan.h) is built under the gang's current
// shape when a stream first asks for it, with every step's count of predicted
// tokens (the loss's normaliser); micro-batches are cut from the samples as the
// stream sends them.
//
// The plan's unit is a row. Unpacked, a row is one sample and its id is the
// sample's. Packed (data.packing), the train split is packed once into rows of the
// context window (common/packing.h, pack_rows) and a row's id indexes those rows;
// each epoch shuffles the rows. The Job holds its lock around step() and set_shape();
// micro_batch() reads only what never changes, so a stream calls it unlocked.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "coordinator/epoch_plan.h"
#include "coordinator/samples.h"
#include "herd/proto/herd.pb.h"

namespace herd::coordinator {

class StepPlanner {
 public:
  // `shape`: the full gang's; its global batch (in rows) never changes (a smaller
  // gang raises accumulation). `pack_window` > 0: rows are packed to that many tokens.
  StepPlanner(std::shared_ptr<const SampleSource> samples, std::vector<size_t> train, uint64_t seed,
              const PlanShape& shape, size_t pack_window = 0);

  uint64_t steps_per_epoch() const { return steps_per_epoch_; }
  size_t train_samples() const { return train_.size(); }
  uint64_t train_tokens() const { return train_tokens_; }
  size_t rows_per_epoch() const { return units_.size(); }
  // Packed: real tokens / (rows × window); unpacked: 1.
  double packing_efficiency() const;
  const PlanShape& shape() const { return shape_; }
  // A new gang's shape: the plans of another shape are dropped.
  void set_shape(const PlanShape& shape);

  struct Planned {
    const StepPlan& plan;
    uint64_t loss_tokens;  // predicted tokens of every sample of the step
  };
  Planned step(uint64_t step);  // 1-based
  // The max and the mean over an epoch's steps of max / mean tokens per rank.
  std::pair<double, double> imbalance(uint64_t epoch);

  // Rows (as a plan names them) as one right-padded micro-batch (what the stream sends).
  herd::v1::MicroBatch micro_batch(const std::vector<size_t>& rows) const;
  const SampleSource& samples() const { return *samples_; }
  // The samples of a step, rank by rank, micro-batch by micro-batch, row by row.
  std::vector<uint64_t> samples_of(const StepPlan& step) const;

 private:
  struct Epoch {
    EpochPlan plan;
    std::vector<uint64_t> loss_tokens;  // per step
  };
  const Epoch& epoch(uint64_t index);

  const std::shared_ptr<const SampleSource> samples_;
  const std::vector<size_t> train_;
  const uint64_t seed_;
  const size_t pack_window_;
  std::vector<uint32_t> lengths_;      // per sample id
  std::vector<uint32_t> loss_tokens_;  // per sample id: mask[1:] set
  std::vector<std::vector<size_t>> packed_;  // packed: row id -> its samples
  std::vector<size_t> units_;                // the row ids an epoch plans
  std::vector<uint32_t> unit_lengths_;       // per row id: tokens
  std::vector<uint64_t> unit_loss_tokens_;   // per row id: predicted tokens
  uint64_t steps_per_epoch_ = 0, train_tokens_ = 0;
  PlanShape shape_;
  std::map<uint64_t, Epoch> epochs_;  // the newest two, for shape_
};

}  // namespace herd::coordinator
