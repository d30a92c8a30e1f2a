#include "coordinator/epoch_plan.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "common/packing.h"

namespace herd::coordinator {

EpochPlan EpochPlan::build(const std::vector<size_t>& samples, const std::vector<uint32_t>& lengths, uint64_t seed,
                           uint64_t epoch, const PlanShape& shape) {
  if (shape.batch_size == 0 || shape.gradient_accumulation_steps == 0 || shape.world_size == 0) {
    throw std::invalid_argument("epoch plan: batch size, accumulation and world size must be positive");
  }
  for (size_t s : samples) {
    if (s >= lengths.size()) throw std::invalid_argument("epoch plan: sample id beyond the dataset");
  }
  // One shuffle per epoch, derived from the run's seed.
  const auto order = seeded_permutation(samples.size(), seed ^ (0x9E3779B97F4A7C15ULL * (epoch + 1)));
  EpochPlan plan;
  const size_t global = shape.global();
  for (size_t first = 0; first < order.size(); first += global) {
    std::vector<size_t> batch;
    for (size_t i = first; i < std::min(order.size(), first + global); ++i) batch.push_back(samples[order[i]]);
    // Longest first, each to the rank with the fewest tokens that still has room.
    std::stable_sort(batch.begin(), batch.end(), [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
    const size_t W = shape.world_size;
    const size_t capacity = (batch.size() + W - 1) / W;  // equal shares; the last step may be short
    std::vector<std::vector<size_t>> per_rank(W);
    StepPlan step;
    step.rank_tokens.assign(W, 0);
    for (size_t s : batch) {
      size_t best = W;
      for (size_t r = 0; r < W; ++r) {
        if (per_rank[r].size() < capacity && (best == W || step.rank_tokens[r] < step.rank_tokens[best])) best = r;
      }
      per_rank[best].push_back(s);
      step.rank_tokens[best] += lengths[s];
    }
    // Within a rank: similar lengths share a micro-batch.
    step.ranks.resize(W);
    for (size_t r = 0; r < W; ++r) {
      auto& mine = per_rank[r];
      std::stable_sort(mine.begin(), mine.end(), [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });
      for (size_t m = 0; m < mine.size(); m += shape.batch_size) {
        step.ranks[r].emplace_back(
            mine.begin() + static_cast<std::ptrdiff_t>(m),
            mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), m + shape.batch_size)));
      }
    }
    const double total =
        static_cast<double>(std::accumulate(step.rank_tokens.begin(), step.rank_tokens.end(), uint64_t{0}));
    const double most = static_cast<double>(*std::max_element(step.rank_tokens.begin(), step.rank_tokens.end()));
    step.imbalance = total > 0 ? most / (total / static_cast<double>(W)) : 1.0;
    plan.steps_.push_back(std::move(step));
  }
  return plan;
}

double EpochPlan::max_imbalance() const {
  double m = 1.0;
  for (const auto& s : steps_) m = std::max(m, s.imbalance);
  return m;
}

}  // namespace herd::coordinator
