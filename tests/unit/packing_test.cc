#include "common/packing.h"

#include <gtest/gtest.h>

namespace herd {
namespace {

TEST(Packing, FillsWindowsInOrderWithSegmentsAndRestartedPositions) {
  auto w = pack_samples({3, 4, 2, 6, 1}, 8);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].samples, (std::vector<size_t>{0, 1}));  // 3 + 4; the 2 would make 9
  EXPECT_EQ(w[0].segment_ids, (std::vector<int32_t>{1, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(w[0].positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(w[1].samples, (std::vector<size_t>{2, 3}));  // 2 + 6 = 8 exactly
  EXPECT_EQ(w[2].samples, (std::vector<size_t>{4}));
  EXPECT_EQ(w[2].positions, (std::vector<int32_t>{0}));
}

TEST(Packing, ALongSampleTakesAWindowAlone) {
  auto w = pack_samples({2, 12, 2}, 8);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[1].segment_ids.size(), 8u);
}

TEST(EvalSplit, SeededDisjointAndComplete) {
  auto a = split_eval(1000, 0.05, 42), b = split_eval(1000, 0.05, 42), c = split_eval(1000, 0.05, 43);
  EXPECT_EQ(a.eval, b.eval);
  EXPECT_NE(a.eval, c.eval);
  EXPECT_EQ(a.eval.size(), 50u);
  EXPECT_EQ(a.train.size(), 950u);
  std::vector<bool> seen(1000, false);
  for (auto v : {a.eval, a.train}) {
    for (size_t i : v) {
      EXPECT_FALSE(seen[i]);
      seen[i] = true;
    }
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), 1000);
  EXPECT_EQ(split_eval(10, 0.0, 7).eval.size(), 0u);
  EXPECT_EQ(split_eval(10, 0.01, 7).eval.size(), 1u);  // at least one when asked for any
}

}  // namespace
}  // namespace herd
