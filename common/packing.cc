#include "common/packing.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace herd {

std::vector<PackedWindow> pack_samples(const std::vector<size_t>& lengths, size_t window) {
  std::vector<PackedWindow> out;
  size_t used = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const size_t len = std::min(lengths[i], window);
    if (out.empty() || used + len > window) {
      out.emplace_back();
      used = 0;
    }
    PackedWindow& w = out.back();
    w.samples.push_back(i);
    const auto segment = static_cast<int32_t>(w.samples.size());
    for (size_t p = 0; p < len; ++p) {
      w.segment_ids.push_back(segment);
      w.positions.push_back(static_cast<int32_t>(p));
    }
    used += len;
  }
  return out;
}

std::vector<size_t> seeded_permutation(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);  // mt19937_64's output is fixed by the standard
  for (size_t i = n; i > 1; --i) {
    const uint64_t bound = i, limit = UINT64_MAX - UINT64_MAX % bound;  // no modulo bias
    uint64_t r;
    do {
      r = rng();
    } while (r >= limit);
    std::swap(order[i - 1], order[r % bound]);
  }
  return order;
}

EvalSplit split_eval(size_t n, double fraction, uint64_t seed) {
  EvalSplit s;
  size_t held = static_cast<size_t>(std::llround(static_cast<double>(n) * fraction));
  if (fraction > 0 && n > 1) held = std::clamp<size_t>(held, 1, n - 1);
  const auto order = seeded_permutation(n, seed);
  s.eval.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(held));
  s.train.assign(order.begin() + static_cast<std::ptrdiff_t>(held), order.end());
  std::sort(s.eval.begin(), s.eval.end());
  std::sort(s.train.begin(), s.train.end());
  return s;
}

}  // namespace herd
