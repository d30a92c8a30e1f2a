#include "worker/train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace herd::train {

double lr_factor(const std::string& kind, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (kind == "constant") return 1.0;
  const double remaining = static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (kind == "linear") return std::max(0.0, static_cast<double>(total - step) / remaining);
  if (kind == "cosine") {
    const double progress = static_cast<double>(step - warmup) / remaining;
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  }
  throw std::invalid_argument("unknown lr_scheduler '" + kind + "'");
}

}  // namespace herd::train
