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

}  // namespace herd::coordinator
