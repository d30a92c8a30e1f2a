#include "kernels/nf4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace herd::kernels {
namespace {

struct Quantized {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
};

Quantized quantize(const std::vector<float>& x) {
  Quantized q{std::vector<uint8_t>(nf4_packed_bytes(x.size()), 0xAB), std::vector<float>(nf4_blocks(x.size()))};
  nf4_quantize(x.data(), x.size(), q.packed.data(), q.absmax.data());
  return q;
}

std::vector<float> dequantize(const Quantized& q, size_t n) {
  std::vector<float> out(n, std::numeric_limits<float>::quiet_NaN());  // poisoned: every element must be written
  nf4_dequantize(q.packed.data(), q.absmax.data(), n, out.data());
  return out;
}

TEST(Nf4, FirstElementOfAPairIsTheHighNibble) {
  // absmax 1: 1.0 -> code 15, -1.0 -> 0, 0.0 -> 7 (seven thresholds are negative),
  // 0.5 -> 12 (0.5 is below the 0.5016634 threshold).
  auto q = quantize({1.0f, -1.0f, 0.0f, 0.5f});
  ASSERT_EQ(q.packed.size(), 2u);
  EXPECT_EQ(q.packed[0], 0xF0);
  EXPECT_EQ(q.packed[1], 0x7C);
  EXPECT_EQ(q.absmax, std::vector<float>{1.0f});
  EXPECT_EQ(dequantize(q, 4), (std::vector<float>{1.0f, -1.0f, 0.0f, 0.44070982933044434f}));
}

TEST(Nf4, AllZeroBlockPacksToZeroBytes) {
  std::vector<float> x(128, 0.0f);
  x[64] = 3.0f;  // the second block is not all zero
  auto q = quantize(x);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(q.packed[i], 0x00) << i;
  EXPECT_EQ(q.absmax[0], 0.0f);
  EXPECT_EQ(q.packed[32], 0xF7);  // 3.0 -> 15, then zeros -> 7
  EXPECT_EQ(q.packed[33], 0x77);
  auto d = dequantize(q, x.size());
  for (size_t i = 0; i < 64; ++i) EXPECT_EQ(d[i], 0.0f) << i;  // code 0 (-1.0) times absmax 0
  EXPECT_EQ(d[64], 3.0f);
}

TEST(Nf4, OneOutlierTakesTheBlock) {
  std::vector<float> x(64, 0.01f);
  x[10] = -100.0f;
  auto q = quantize(x);
  EXPECT_EQ(q.absmax[0], 100.0f);
  auto d = dequantize(q, 64);
  EXPECT_EQ(d[10], -100.0f);
  for (size_t i = 0; i < 64; ++i) {
    if (i != 10) {
      EXPECT_EQ(d[i], 0.0f) << i;  // 0.01 / 100 falls in code 7's interval
    }
  }
  EXPECT_EQ(q.packed[5], 0x07);  // elements 10 (code 0) and 11 (code 7)
}

TEST(Nf4, SizeNotAMultipleOf64) {
  std::vector<float> x(65, 0.25f);
  x[64] = -2.0f;  // alone in the last block: absmax 2, -2 * (1/2) = -1 -> code 0
  auto q = quantize(x);
  ASSERT_EQ(q.packed.size(), 33u);
  ASSERT_EQ(q.absmax.size(), 2u);
  EXPECT_EQ(q.absmax[1], 2.0f);
  EXPECT_EQ(q.packed[32], 0x07);  // the zero-filled partner is code 7
  auto d = dequantize(q, 65);
  EXPECT_EQ(d[64], -2.0f);
  EXPECT_EQ(q.absmax[0], 0.25f);
  EXPECT_EQ(d[0], 0.25f);  // 0.25 / 0.25 -> code 15 (1.0)
}

TEST(Nf4, TieAtAThresholdGoesToTheLowerCode) {
  const float t = kNf4Thresholds[7];  // between code 7 (0.0) and code 8
  auto q = quantize({1.0f, t, std::nextafter(t, 1.0f), -1.0f});
  EXPECT_EQ(q.packed[0], 0xF7);  // 1.0 -> 15, t -> 7
  EXPECT_EQ(q.packed[1], 0x80);  // just above t -> 8, -1 -> 0
}

TEST(Nf4, AbsmaxIgnoresNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto q = quantize({nan, 2.0f, -4.0f, 1.0f});
  EXPECT_EQ(q.absmax[0], 4.0f);
  EXPECT_EQ(q.packed[0] >> 4, 0);  // NaN is above no threshold
}

TEST(Nf4, RoundTripErrorIsWithinHalfTheWidestGap) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(64 * 1000 + 17);
  for (auto& v : x) v = normal(rng);
  auto q = quantize(x);
  auto d = dequantize(q, x.size());
  float widest_gap = 0;
  for (int c = 1; c < 16; ++c) widest_gap = std::max(widest_gap, kNf4Codes[c] - kNf4Codes[c - 1]);
  EXPECT_FLOAT_EQ(widest_gap, 1.0f - 0.6961928009986877f);  // between codes 0 and 1
  double sum_sq = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    float a = q.absmax[i / 64];
    ASSERT_LE(std::fabs(d[i] - x[i]), a * widest_gap / 2 * 1.0001f) << i;
    sum_sq += (d[i] - x[i]) * (d[i] - x[i]);
  }
  // NF4 on Gaussian weights: the RMS error is about a tenth of the weights' RMS.
  EXPECT_LT(std::sqrt(sum_sq / static_cast<double>(x.size())), 0.02 * 0.12);
}

TEST(Nf4, DequantizeMatchesTheTableForEveryByte) {
  // Random packed bytes over many blocks and a partial tail: the vectorized and
  // threaded path must equal table[nibble] * absmax exactly.
  std::mt19937 rng(2);
  const size_t n = 64 * 300 + 37;
  Quantized q{std::vector<uint8_t>(nf4_packed_bytes(n)), std::vector<float>(nf4_blocks(n))};
  for (auto& b : q.packed) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(0.001f, 3.0f);
  for (auto& a : q.absmax) a = u(rng);
  q.absmax[7] = std::numeric_limits<float>::quiet_NaN();  // NaN propagates the same way on every path
  auto d = dequantize(q, n);
  std::vector<uint16_t> bf(n);
  nf4_dequantize_bf16(q.packed.data(), q.absmax.data(), n, bf.data());
  for (size_t i = 0; i < n; ++i) {
    uint8_t byte = q.packed[i / 2];
    float expected = kNf4Codes[i % 2 == 0 ? byte >> 4 : byte & 15] * q.absmax[i / 64];
    ASSERT_EQ(std::memcmp(&d[i], &expected, 4), 0) << i << ": " << d[i] << " vs " << expected;
    ASSERT_EQ(bf[i], float_to_bf16(expected)) << i;
  }
}

TEST(Nf4, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3F80);      // halfway: stays even
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);  // halfway: rounds up to even
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(float_to_bf16(-2.5f), 0xC020);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
}

TEST(DynamicMap, ShapeAsBitsandbytesBuildsIt) {
  EXPECT_EQ(kDynamicMap[127], 0.0f);
  EXPECT_EQ(kDynamicMap[0], -0.99296874f);
  EXPECT_EQ(kDynamicMap[1], -0.9789063f);
  EXPECT_EQ(kDynamicMap[2], -0.96484375f);
  EXPECT_EQ(kDynamicMap[253], 0.9789063f);
  EXPECT_EQ(kDynamicMap[254], 0.99296874f);
  EXPECT_EQ(kDynamicMap[255], 1.0f);
  for (int i = 1; i < 256; ++i) EXPECT_LT(kDynamicMap[i - 1], kDynamicMap[i]) << i;
}

TEST(DoubleQuant, RoundTripAndOffset) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.01f, 0.2f);
  const size_t n = 256 * 3 + 5;
  std::vector<float> absmax(n);
  for (auto& a : absmax) a = u(rng);
  std::vector<uint8_t> codes(n);
  std::vector<float> nested(nested_blocks(n));
  float offset = 0;
  absmax_quantize(absmax.data(), n, codes.data(), nested.data(), &offset);
  double mean = 0;
  for (float a : absmax) mean += a;
  EXPECT_EQ(offset, static_cast<float>(mean / n));
  std::vector<float> back(n);
  absmax_dequantize(codes.data(), n, nested.data(), offset, back.data());
  for (size_t i = 0; i < n; ++i) {
    float v = absmax[i] - offset;
    float m = nested[i / 256];
    // The nearest map entry: within half the widest gap near the value (the map is
    // densest near 0 and about 0.014 apart near +-1).
    ASSERT_LE(std::fabs(back[i] - absmax[i]), m * 0.0071f + 1e-7f) << i << " v=" << v;
    ASSERT_EQ(back[i], kDynamicMap[codes[i]] * m + offset);
  }
}

TEST(DoubleQuant, EqualAbsmaxRoundTripsExactly) {
  std::vector<float> absmax(300, 0.125f);
  std::vector<uint8_t> codes(300);
  std::vector<float> nested(2), back(300);
  float offset = 0;
  absmax_quantize(absmax.data(), 300, codes.data(), nested.data(), &offset);
  EXPECT_EQ(offset, 0.125f);
  EXPECT_EQ(nested[0], 0.0f);
  absmax_dequantize(codes.data(), 300, nested.data(), offset, back.data());
  EXPECT_EQ(back, absmax);
}

}  // namespace
}  // namespace herd::kernels
