// Packing (data.packing: true) and the held-out eval split (data.eval_fraction).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace herd {

// Samples packed into rows of at most `window` tokens (data.packing): visited in an
// order shuffled by `seed`, each sample goes to the fullest row it still fits in
// (best fit), else it opens a row. A sample is never split (one longer than the
// window was already truncated to it). Rows are in the order they were opened, each
// row's samples in the order they joined it; the result indexes `lengths`. The
// same (lengths, window, seed) give the same rows on every machine.
std::vector<std::vector<size_t>> pack_rows(const std::vector<size_t>& lengths, size_t window, uint64_t seed);

// The rows a job trains (the coordinator's, and `herd data inspect`'s figures): the
// train split's sample ids, packed by pack_rows with the run's seed (trainer.seed)
// turned into a stream of its own. `lengths` is per sample id.
std::vector<std::vector<size_t>> pack_train_split(const std::vector<size_t>& train,
                                                  const std::vector<uint32_t>& lengths, size_t window,
                                                  uint64_t seed);

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
