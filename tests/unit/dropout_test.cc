// herd's counter-based dropout masks (kernels/dropout.h) on the CPU: Philox-4x32-10
// against the known-answer vectors of its authors' Random123 library, and the masks'
// keep rate, determinism and independence across draws.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/dropout.h"

namespace herd::kernels {
namespace {

TEST(Philox, MatchesRandom123sKnownAnswers) {
  struct Case {
    std::array<uint32_t, 4> counter;
    std::array<uint32_t, 2> key;
    std::array<uint32_t, 4> expected;
  };
  const Case cases[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const auto& c : cases) {
    uint32_t x[4] = {c.counter[0], c.counter[1], c.counter[2], c.counter[3]};
    philox4x32_10(x, c.key[0], c.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(x[i], c.expected[i]) << i;
  }
}

// The share of kept elements over n draws of a mask.
double kept(const DropoutDraw& d, size_t n) {
  std::vector<uint8_t> mask(n, 7);
  dropout_mask(d, n, mask.data());
  size_t ones = 0;
  for (const uint8_t m : mask) {
    EXPECT_LE(m, 1);
    ones += m;
  }
  return static_cast<double>(ones) / static_cast<double>(n);
}

TEST(DropoutMask, KeepsOneMinusPAndNothingElse) {
  const size_t n = 1 << 20;  // the share's standard deviation is below 0.0005
  for (const double p : {0.05, 0.3, 0.9}) EXPECT_NEAR(kept(dropout_draw(11, 0, p), n), 1 - p, 0.003) << p;
  const auto d = dropout_draw(11, 0, 0.05);
  EXPECT_FLOAT_EQ(d.scale, static_cast<float>(1 / 0.95));
  EXPECT_EQ(dropout_draw(1, 0, 1e-12).keep_below, 0xffffffffu);  // not wrapped to 0
}

TEST(DropoutMask, IsAFunctionOfTheDrawAndTheIndexOnly) {
  const size_t n = 4099;  // not a multiple of 4: the last group is partial
  auto mask = [&](const DropoutDraw& d, size_t len) {
    std::vector<uint8_t> m(len);
    dropout_mask(d, len, m.data());
    return m;
  };
  const auto base = mask(dropout_draw(5, 8, 0.5), n);
  EXPECT_EQ(mask(dropout_draw(5, 8, 0.5), n), base);
  const auto prefix = mask(dropout_draw(5, 8, 0.5), 37);  // a shorter tensor: the same leading mask
  EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), base.begin()));
  // Another seed or another offset: about half the elements differ (independent masks).
  for (const auto& other : {dropout_draw(6, 8, 0.5), dropout_draw(5, 12, 0.5)}) {
    const auto m = mask(other, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) differ += m[i] != base[i];
    EXPECT_NEAR(static_cast<double>(differ) / n, 0.5, 0.05);
  }
  // The four words of one Philox block serve four neighbouring elements.
  uint32_t c[4] = {2, 0, 3, 0};  // offset 8 (block 2), group 3
  philox4x32_10(c, 5, 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(base[12 + i], c[i] < dropout_draw(5, 8, 0.5).keep_below ? 1 : 0) << i;
}

}  // namespace
}  // namespace herd::kernels
