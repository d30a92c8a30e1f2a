#include "common/packing.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <stdexcept>

namespace herd {

std::vector<std::vector<size_t>> pack_rows(const std::vector<size_t>& lengths, size_t window, uint64_t seed) {
  if (window == 0) throw std::invalid_argument("pack_rows: the window must hold at least one token");
  std::vector<std::vector<size_t>> rows;
  // Open rows by the room they have left; among rows with equal room, the first
  // opened comes first (a multimap keeps equal keys in insertion order).
  std::multimap<size_t, size_t> room;
  for (size_t i : seeded_permutation(lengths.size(), seed)) {
    const size_t len = std::min(lengths[i], window);
    auto fit = room.lower_bound(len);
    size_t row = rows.size(), left = window;
    if (fit != room.end()) {
      row = fit->second;
      left = fit->first;
      room.erase(fit);
    } else {
      rows.emplace_back();
    }
    rows[row].push_back(i);
    if (left > len) room.emplace(left - len, row);
  }
  return rows;
}

std::vector<std::vector<size_t>> pack_train_split(const std::vector<size_t>& train,
                                                  const std::vector<uint32_t>& lengths, size_t window,
                                                  uint64_t seed) {
  std::vector<size_t> mine;
  for (size_t s : train) mine.push_back(lengths.at(s));
  auto rows = pack_rows(mine, window, seed ^ 0xC2B2AE3D27D4EB4FULL);  // not the split's or an epoch's order
  for (auto& row : rows) {
    for (size_t& s : row) s = train[s];
  }
  return rows;
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
