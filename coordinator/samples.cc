#include "coordinator/samples.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace herd::coordinator {

void CachedSamples::read(size_t sample, int32_t* ids, uint8_t* mask) const {
  const auto [data, n] = cache_->ids(sample);
  std::memcpy(ids, data, n * sizeof(int32_t));
  std::memcpy(mask, cache_->mask(sample), n);
}

SyntheticSamples::SyntheticSamples(size_t count, uint32_t min_length, uint32_t max_length, uint64_t seed) {
  if (min_length == 0 || max_length < min_length) throw std::invalid_argument("synthetic samples: bad length range");
  lengths_.resize(count);
  for (size_t i = 0; i < count; ++i) {
    uint64_t h = (seed + i) * 0x9E3779B97F4A7C15ULL;  // splitmix64
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
    h ^= h >> 31;
    lengths_[i] = min_length + static_cast<uint32_t>(h % (max_length - min_length + 1));
  }
}

void SyntheticSamples::read(size_t sample, int32_t* ids, uint8_t* mask) const {
  for (uint32_t j = 0; j < lengths_[sample]; ++j) ids[j] = static_cast<int32_t>((sample * 31 + j) % 32000);
  std::fill(mask, mask + lengths_[sample], uint8_t{1});
}

herd::v1::MicroBatch make_micro_batch(const SampleSource& samples, const std::vector<std::vector<size_t>>& rows,
                                      bool packed) {
  herd::v1::MicroBatch batch;
  size_t width = 0;
  for (const auto& row : rows) {
    size_t tokens = 0;
    for (size_t s : row) tokens += samples.length(s);
    width = std::max(width, tokens);
  }
  batch.mutable_token_ids()->Resize(static_cast<int>(rows.size() * width), 0);
  std::string mask(rows.size() * width, '\0');
  for (size_t r = 0; r < rows.size(); ++r) {
    size_t at = r * width;
    for (size_t s : rows[r]) {
      batch.add_sample_ids(s);
      batch.add_lengths(samples.length(s));
      samples.read(s, batch.mutable_token_ids()->mutable_data() + at, reinterpret_cast<uint8_t*>(mask.data()) + at);
      at += samples.length(s);
    }
    if (packed) batch.add_row_samples(static_cast<uint32_t>(rows[r].size()));
  }
  batch.set_loss_mask(std::move(mask));
  return batch;
}

std::vector<herd::v1::MicroBatch> eval_micro_batches(const SampleSource& samples, const std::vector<size_t>& eval,
                                                     size_t rank, size_t world, size_t rows) {
  const size_t per_rank = (eval.size() + world - 1) / world;
  std::vector<size_t> mine;
  for (size_t i = rank; i < eval.size(); i += world) mine.push_back(eval[i]);
  std::vector<herd::v1::MicroBatch> out;
  for (size_t first = 0; first < per_rank; first += rows) {
    std::vector<std::vector<size_t>> batch;
    for (size_t i = first; i < std::min(first + rows, mine.size()); ++i) batch.push_back({mine[i]});
    out.push_back(batch.empty() ? herd::v1::MicroBatch() : make_micro_batch(samples, batch, false));
  }
  return out;
}

}  // namespace herd::coordinator
