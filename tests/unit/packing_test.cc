#include "common/packing.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace herd {
namespace {

// Every sample once, no row over the window, the same rows for the same seed.
TEST(Packing, RowsHoldEverySampleOnceWithinTheWindow) {
  std::vector<size_t> lengths;
  uint64_t x = 7;
  for (int i = 0; i < 1000; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    lengths.push_back(1 + (x >> 33) % 300);  // 1..300 tokens
  }
  lengths[10] = 5000;  // longer than the window: truncated already, it fills a row alone
  const size_t window = 1024;
  const auto rows = pack_rows(lengths, window, 42);
  std::vector<int> seen(lengths.size(), 0);
  size_t tokens = 0;
  for (const auto& row : rows) {
    size_t used = 0;
    for (size_t s : row) {
      ++seen[s];
      used += std::min(lengths[s], window);
    }
    EXPECT_LE(used, window);
    if (std::find(row.begin(), row.end(), 10) != row.end()) {
      EXPECT_EQ(row.size(), 1u);
    }
    tokens += used;
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 1000);
  EXPECT_EQ(pack_rows(lengths, window, 42), rows);
  EXPECT_NE(pack_rows(lengths, window, 43), rows);
  // Best fit fills rows better than taking the samples in order while they fit (next
  // fit), counted here on the same lengths.
  size_t next_fit = 0, used = window;
  for (size_t l : lengths) {
    l = std::min(l, window);
    if (used + l > window) {
      ++next_fit;
      used = 0;
    }
    used += l;
  }
  const double efficiency = static_cast<double>(tokens) / static_cast<double>(rows.size() * window);
  EXPECT_LT(rows.size(), next_fit);
  EXPECT_GT(efficiency, 0.97) << rows.size() << " rows, " << next_fit << " by next fit";
}

TEST(Packing, TheTrainSplitIsPackedBySampleId) {
  const std::vector<uint32_t> lengths{3, 4, 2, 6, 1, 8};  // per sample id
  const std::vector<size_t> train{1, 3, 4, 5};          // 4 + 6 + 1 + 8 = 19 tokens
  const auto rows = pack_train_split(train, lengths, 10, 5);
  std::vector<size_t> all;
  for (const auto& row : rows) {
    uint32_t used = 0;
    for (size_t s : row) used += lengths[s];
    EXPECT_LE(used, 10u);
    all.insert(all.end(), row.begin(), row.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, train);
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
