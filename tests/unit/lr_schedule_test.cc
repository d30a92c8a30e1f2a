// The learning-rate schedules against transformers' definitions
// (optimization.py: get_linear/cosine/constant_schedule_with_warmup), by hand.
#include "worker/train/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

namespace herd::train {
namespace {

TEST(LrSchedule, LinearWarmsUpThenDecaysToZeroAtTheLastStep) {
  EXPECT_DOUBLE_EQ(lr_factor("linear", 0, 100, 1000), 0.0);  // the first step runs at 0 (as HF's)
  EXPECT_DOUBLE_EQ(lr_factor("linear", 50, 100, 1000), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 100, 100, 1000), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 550, 100, 1000), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 999, 100, 1000), 1.0 / 900);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 1000, 100, 1000), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor("linear", 0, 0, 10), 1.0);  // no warmup
}

TEST(LrSchedule, CosineIsHalfACycleAfterWarmup) {
  EXPECT_DOUBLE_EQ(lr_factor("cosine", 10, 20, 220), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor("cosine", 20, 20, 220), 1.0);
  EXPECT_NEAR(lr_factor("cosine", 70, 20, 220), 0.5 * (1 + std::sqrt(0.5)), 1e-15);  // a quarter: cos(pi/4)
  EXPECT_NEAR(lr_factor("cosine", 120, 20, 220), 0.5, 1e-15);
  EXPECT_NEAR(lr_factor("cosine", 220, 20, 220), 0.0, 1e-15);
}

TEST(LrSchedule, ConstantAfterWarmupAndUnknownKindsRefused) {
  EXPECT_DOUBLE_EQ(lr_factor("constant", 3, 4, 100), 0.75);
  EXPECT_DOUBLE_EQ(lr_factor("constant", 80, 4, 100), 1.0);
  EXPECT_THROW(lr_factor("polynomial", 80, 4, 100), std::invalid_argument);
}

}  // namespace
}  // namespace herd::train
