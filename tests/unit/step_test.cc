// The step's loss over streamed micro-batches: a packed row (data.packing) gives
// each of its samples the loss it gets alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
#include "worker/comm/collective.h"
#include "worker/comm/store.h"
#include "worker/train/step.h"

namespace herd::train {
namespace {

struct Sample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
};

// Samples as the coordinator streams them: rows of `per_row` samples each, right-padded.
herd::v1::MicroBatch micro_batch(const std::vector<Sample>& samples, const std::vector<uint32_t>& per_row) {
  herd::v1::MicroBatch b;
  std::vector<size_t> widths;
  size_t next = 0;
  for (uint32_t n : per_row) {
    size_t w = 0;
    for (uint32_t k = 0; k < n; ++k) w += samples[next + k].ids.size();
    widths.push_back(w);
    next += n;
  }
  const size_t width = *std::max_element(widths.begin(), widths.end());
  std::string mask;
  next = 0;
  for (uint32_t n : per_row) {
    size_t used = 0;
    for (uint32_t k = 0; k < n; ++k, ++next) {
      const Sample& s = samples[next];
      b.add_sample_ids(next);
      b.add_lengths(static_cast<uint32_t>(s.ids.size()));
      for (size_t j = 0; j < s.ids.size(); ++j) {
        b.add_token_ids(s.ids[j]);
        mask.push_back(static_cast<char>(s.mask[j]));
      }
      used += s.ids.size();
    }
    for (; used < width; ++used) {
      b.add_token_ids(0);
      mask.push_back(0);
    }
    if (per_row.size() < samples.size()) b.add_row_samples(n);
  }
  b.set_loss_mask(mask);
  return b;
}

TEST(Step, APackedRowsLossIsTheSumOfItsSamplesLossesAlone) {
  const auto config = model::tiny_config();
  model::LoadOptions plain;
  plain.quantize = false;
  auto model = model::Llama::from_tensors(config, model::random_tensors(config, 11), plain);
  // Three samples; the first two mask their prompts out of the loss (BOS never counts).
  const std::vector<Sample> samples = {
      {{1, 17, 23, 5, 9, 41, 2}, {0, 0, 0, 1, 1, 1, 1}},
      {{1, 30, 31, 32, 2}, {0, 0, 1, 1, 1}},
      {{1, 60, 61, 62, 63, 64, 65, 66, 2}, {0, 1, 1, 1, 1, 1, 1, 1, 1}},
  };
  // Each alone: the sum of its counted positions' losses.
  double alone = 0;
  uint64_t predicted = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& s : samples) {
      auto ids = torch::tensor(std::vector<int64_t>(s.ids.begin(), s.ids.end())).view({1, -1});
      auto losses = model.next_token_loss(ids).view({-1});
      for (size_t j = 1; j < s.ids.size(); ++j) {
        if (s.mask[j]) {
          alone += losses[static_cast<int64_t>(j - 1)].item<double>();
          ++predicted;
        }
      }
    }
  }
  comm::InMemoryStore store;
  auto local = comm::connect("local", store, comm::CollectiveOptions{});
  // Rows {0, 1} and {2}: the first row packs two samples; and each sample a row.
  const auto packed = eval_loss(model, *local, {micro_batch(samples, {2, 1})});
  const auto unpacked = eval_loss(model, *local, {micro_batch(samples, {1, 1, 1})});
  for (const auto& r : {packed, unpacked}) {
    EXPECT_EQ(r.samples, 3u);
    EXPECT_EQ(r.predicted, predicted);
  }
  const double want = alone / static_cast<double>(predicted);
  EXPECT_NEAR(packed.loss, want, 1e-5 * want);
  EXPECT_NEAR(unpacked.loss, want, 1e-5 * want);
  // Without its segments the second sample would attend to the first: a different loss.
  auto leaky = micro_batch(samples, {2, 1});
  leaky.clear_row_samples();
  leaky.clear_sample_ids();
  leaky.clear_lengths();
  for (uint32_t r = 0; r < 2; ++r) {  // two plain rows of the same tokens
    leaky.add_sample_ids(r);
    leaky.add_lengths(static_cast<uint32_t>(leaky.token_ids_size() / 2));
  }
  EXPECT_GT(std::abs(eval_loss(model, *local, {leaky}).loss - want), 1e-3);
}

}  // namespace
}  // namespace herd::train
