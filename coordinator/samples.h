// What the coordinator streams: tokenized samples by index. The real job reads
// the token cache (common/token_cache.h); tests and the benchmark use synthetic
// samples of known lengths.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/token_cache.h"
#include "herd/proto/herd.pb.h"

namespace herd::coordinator {

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual size_t size() const = 0;
  virtual uint32_t length(size_t sample) const = 0;
  // Writes length(sample) token ids and loss-mask bytes. Thread-safe.
  virtual void read(size_t sample, int32_t* ids, uint8_t* mask) const = 0;
};

class CachedSamples final : public SampleSource {
 public:
  explicit CachedSamples(std::unique_ptr<TokenCache> cache) : cache_(std::move(cache)) {}
  size_t size() const override { return cache_->samples(); }
  uint32_t length(size_t sample) const override { return static_cast<uint32_t>(cache_->ids(sample).second); }
  void read(size_t sample, int32_t* ids, uint8_t* mask) const override;

 private:
  std::unique_ptr<TokenCache> cache_;
};

// Sample i has a length drawn from [min_length, max_length] by a hash of (seed, i),
// token j of it is (i * 31 + j) % 32000, and every token counts in the loss.
class SyntheticSamples final : public SampleSource {
 public:
  SyntheticSamples(size_t count, uint32_t min_length, uint32_t max_length, uint64_t seed);
  size_t size() const override { return lengths_.size(); }
  uint32_t length(size_t sample) const override { return lengths_[sample]; }
  void read(size_t sample, int32_t* ids, uint8_t* mask) const override;

 private:
  std::vector<uint32_t> lengths_;
};

// Rows of samples as one right-padded micro-batch (what a stream sends): a row's
// samples follow each other; `packed` sets row_samples (proto/herd.proto, MicroBatch).
herd::v1::MicroBatch make_micro_batch(const SampleSource& samples, const std::vector<std::vector<size_t>>& rows,
                                      bool packed);

// The held-out split's share of rank `rank` of `world`, a sample a row: every
// world-th sample from `rank`, `rows` of them a micro-batch. Every rank gets as many
// micro-batches (the last ones may be empty), so that ranks sharing the model's
// layers make the same collective calls. The coordinator streams these, and
// `herd eval CONFIG` evaluates them (one rank).
std::vector<herd::v1::MicroBatch> eval_micro_batches(const SampleSource& samples, const std::vector<size_t>& eval,
                                                     size_t rank, size_t world, size_t rows);

}  // namespace herd::coordinator
