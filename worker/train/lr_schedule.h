// Learning-rate schedules as transformers' Trainer applies them (the seed's trainer):
// optimizer step k (1-based) runs at learning_rate * lr_factor(kind, k - 1, ...).
#pragma once

#include <cstdint>
#include <string>

namespace herd::train {

// kind: linear (get_linear_schedule_with_warmup), cosine (get_cosine_schedule_with_warmup,
// half a cycle) or constant (get_constant_schedule_with_warmup). Throws
// std::invalid_argument for another kind.
double lr_factor(const std::string& kind, int64_t step_index, int64_t warmup_steps, int64_t total_steps);

}  // namespace herd::train
