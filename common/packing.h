// Packing (data.packing: true) and the held-out eval split (data.eval_fraction).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace herd {

// Samples packed into windows of at most `window` tokens, in order: each window
// takes samples while they fit (a sample is never split; one longer than the
// window was already truncated to it).
struct PackedWindow {
  std::vector<size_t> samples;       // indices into the input
  std::vector<int32_t> segment_ids;  // per token: 1, 2, ... for the k-th sample of the window
  std::vector<int32_t> positions;    // per token: position within its own sample (RoPE restarts)
};
std::vector<PackedWindow> pack_samples(const std::vector<size_t>& lengths, size_t window);

// 0..n-1 in an order fixed by `seed` on every machine: Fisher-Yates driven by
// mt19937_64 with rejection sampling (std::shuffle's order is not portable).
std::vector<size_t> seeded_permutation(size_t n, uint64_t seed);

// A seeded split of n sample indices: round(n * fraction) of them (at least one
// when fraction > 0 and n > 1) held out for eval. The same (n, fraction, seed) gives
// the same split on every machine (its own shuffle; std::shuffle's is not portable).
struct EvalSplit {
  std::vector<size_t> train, eval;  // each ascending
};
EvalSplit split_eval(size_t n, double fraction, uint64_t seed);

}  // namespace herd
