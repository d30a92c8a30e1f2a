#include "coordinator/step_planner.h"

#include <algorithm>

namespace herd::coordinator {

StepPlanner::StepPlanner(std::shared_ptr<const SampleSource> samples, std::vector<size_t> train, uint64_t seed,
                         const PlanShape& shape)
    : samples_(std::move(samples)), train_(std::move(train)), seed_(seed), shape_(shape) {
  lengths_.resize(samples_->size());
  loss_tokens_.resize(samples_->size());
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  for (size_t i = 0; i < samples_->size(); ++i) {
    lengths_[i] = samples_->length(i);
    ids.resize(lengths_[i]);
    mask.resize(lengths_[i]);
    samples_->read(i, ids.data(), mask.data());
    loss_tokens_[i] = mask.size() > 1 ? static_cast<uint32_t>(std::count(mask.begin() + 1, mask.end(), uint8_t{1})) : 0;
  }
  const uint64_t global = uint64_t{shape.batch_size} * shape.gradient_accumulation_steps * shape.world_size;
  steps_per_epoch_ = (train_.size() + global - 1) / global;
  for (size_t s : train_) train_tokens_ += lengths_.at(s);
}

void StepPlanner::set_shape(const PlanShape& shape) {
  if (shape.gradient_accumulation_steps != shape_.gradient_accumulation_steps || shape.world_size != shape_.world_size) {
    epochs_.clear();
  }
  shape_ = shape;
}

const StepPlanner::Epoch& StepPlanner::epoch(uint64_t index) {
  auto it = epochs_.find(index);
  if (it != epochs_.end()) return it->second;
  if (epochs_.size() >= 2) epochs_.erase(epochs_.begin());  // old epochs are not streamed again
  Epoch e{EpochPlan::build(train_, lengths_, seed_, index, shape_), {}};
  for (const auto& st : e.plan.steps()) {
    uint64_t tokens = 0;
    for (const auto& rank : st.ranks)
      for (const auto& m : rank)
        for (size_t s : m) tokens += loss_tokens_[s];
    e.loss_tokens.push_back(tokens);
  }
  return epochs_.emplace(index, std::move(e)).first->second;
}

StepPlanner::Planned StepPlanner::step(uint64_t step) {
  const Epoch& e = epoch((step - 1) / steps_per_epoch_);
  const size_t index = (step - 1) % steps_per_epoch_;
  return {e.plan.steps().at(index), e.loss_tokens.at(index)};
}

std::pair<double, double> StepPlanner::imbalance(uint64_t index) {
  const EpochPlan& plan = epoch(index).plan;
  double sum = 0;
  for (const auto& st : plan.steps()) sum += st.imbalance;
  return {plan.max_imbalance(), sum / static_cast<double>(plan.steps().size())};
}

herd::v1::MicroBatch StepPlanner::micro_batch(const std::vector<size_t>& rows) const {
  herd::v1::MicroBatch batch;
  uint32_t width = 0;
  for (size_t s : rows) width = std::max(width, lengths_[s]);
  batch.mutable_token_ids()->Resize(static_cast<int>(rows.size() * width), 0);
  std::string mask(rows.size() * width, '\0');
  for (size_t r = 0; r < rows.size(); ++r) {
    batch.add_sample_ids(rows[r]);
    batch.add_lengths(lengths_[rows[r]]);
    samples_->read(rows[r], batch.mutable_token_ids()->mutable_data() + r * width,
                   reinterpret_cast<uint8_t*>(mask.data()) + r * width);
  }
  batch.set_loss_mask(std::move(mask));
  return batch;
}

}  // namespace herd::coordinator
