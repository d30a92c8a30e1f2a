#include "coordinator/step_planner.h"

#include <algorithm>

#include "common/packing.h"

namespace herd::coordinator {

StepPlanner::StepPlanner(std::shared_ptr<const SampleSource> samples, std::vector<size_t> train, uint64_t seed,
                         const PlanShape& shape, size_t pack_window)
    : samples_(std::move(samples)), train_(std::move(train)), seed_(seed), pack_window_(pack_window), shape_(shape) {
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
  for (size_t s : train_) train_tokens_ += lengths_.at(s);
  if (pack_window_ == 0) {
    units_ = train_;
    unit_lengths_ = lengths_;
    unit_loss_tokens_.assign(loss_tokens_.begin(), loss_tokens_.end());
  } else {
    packed_ = pack_train_split(train_, lengths_, pack_window_, seed_);
    for (size_t r = 0; r < packed_.size(); ++r) {
      uint32_t tokens = 0;
      uint64_t predicted = 0;
      for (size_t s : packed_[r]) {
        tokens += lengths_[s];
        predicted += loss_tokens_[s];
      }
      units_.push_back(r);
      unit_lengths_.push_back(tokens);
      unit_loss_tokens_.push_back(predicted);
    }
  }
  const uint64_t global = shape.global();
  steps_per_epoch_ = (units_.size() + global - 1) / global;
}

double StepPlanner::packing_efficiency() const {
  if (pack_window_ == 0 || packed_.empty()) return 1.0;
  return static_cast<double>(train_tokens_) / static_cast<double>(packed_.size() * pack_window_);
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
  Epoch e{EpochPlan::build(units_, unit_lengths_, seed_, index, shape_), {}};
  for (const auto& st : e.plan.steps()) {
    uint64_t tokens = 0;
    for (const auto& rank : st.ranks)
      for (const auto& m : rank)
        for (size_t u : m) tokens += unit_loss_tokens_[u];
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

std::vector<uint64_t> StepPlanner::samples_of(const StepPlan& step) const {
  std::vector<uint64_t> out;
  for (const auto& rank : step.ranks) {
    for (const auto& m : rank) {
      for (size_t u : m) {
        if (pack_window_ == 0) {
          out.push_back(u);
        } else {
          out.insert(out.end(), packed_[u].begin(), packed_[u].end());
        }
      }
    }
  }
  return out;
}

herd::v1::MicroBatch StepPlanner::micro_batch(const std::vector<size_t>& rows) const {
  std::vector<std::vector<size_t>> samples;
  for (size_t u : rows) samples.push_back(pack_window_ == 0 ? std::vector<size_t>{u} : packed_[u]);
  return make_micro_batch(*samples_, samples, pack_window_ > 0);
}

}  // namespace herd::coordinator
