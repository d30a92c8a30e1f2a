// FSDP-style sharding with two ranks as threads (Gloo over loopback): each rank
// holds half of the frozen bytes, computes the logits one whole model computes,
// and ends a step with the sum over ranks of the LoRA gradients one model gets
// from both ranks' inputs.

#include <optional>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
#include "tests/unit/two_ranks.h"
#include "worker/comm/collective.h"
#include "worker/train/sharding.h"

namespace herd::train {
namespace {

using model::Llama;

model::LoadOptions nf4_with_lora() {
  model::LoadOptions o;
  o.quantize = true;
  model::LoraOptions lora;
  lora.r = 4;
  lora.lora_alpha = 8;
  lora.target_modules = model::linear_modules();
  lora.seed = 3;
  o.lora = lora;
  return o;
}

torch::Tensor batch(int rank) { return (torch::arange(12, torch::kInt64).view({2, 6}) * (rank + 3) + rank) % 96; }

// A loss that weighs every logit differently, fixed by a seed.
torch::Tensor loss_of(const torch::Tensor& logits) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(5);
  return (logits * torch::randn(logits.sizes(), g)).sum();
}

using comm::two_ranks;

class Sharded : public ::testing::TestWithParam<Sharding> {};

// Llama, and Qwen2 (whose q/k/v biases are sharded with the rest of a layer).
void two_ranks_compute_what_one_model_does(Sharding mode, const model::LlamaConfig& config) {
  const auto tensors = model::random_tensors(config, 5);

  auto reference = Llama::from_tensors(config, tensors, nf4_with_lora());
  model::set_lora_b(reference, 11);
  reference.set_training(true);
  reference.set_activation_checkpointing(true);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = reference.forward(batch(0));
  }
  auto params = reference.trainable_parameters();
  for (auto& p : params) p.set_requires_grad(true);
  (loss_of(reference.forward(batch(0))) + loss_of(reference.forward(batch(1)))).backward();

  std::vector<int64_t> held(2), whole(2);
  const auto failures = two_ranks([&](int r, comm::Collective& group) {
    std::string failure;
    std::optional<Llama> llama;  // outlives `weights`, whose destructor detaches from it
    ShardedWeights weights(group, mode);
    auto options = nf4_with_lora();
    options.on_layer = [&](int64_t i, model::DecoderLayer& layer) { weights.adopt_layer(i, layer); };
    auto& m = llama.emplace(Llama::from_tensors(config, tensors, options));
    weights.attach(m);
    held[static_cast<size_t>(r)] = weights.shard_bytes();
    whole[static_cast<size_t>(r)] = weights.model_bytes();
    model::set_lora_b(m, 11);
    m.set_training(true);
    m.set_activation_checkpointing(true);
    {
      torch::NoGradGuard no_grad;
      if (!torch::equal(m.forward(batch(0)), logits)) failure += "logits differ; ";
    }
    auto mine = m.trainable_parameters();
    for (auto& p : mine) p.set_requires_grad(true);
    weights.set_sync_gradients(true);
    loss_of(m.forward(batch(r))).backward();
    weights.finish_gradients();
    for (size_t i = 0; i < mine.size(); ++i) {
      if (!torch::allclose(mine[i].grad(), params[i].grad(), 1e-5, 1e-6)) {
        failure += "gradient " + std::to_string(i) + " differs; ";
      }
    }
    return failure;
  });
  EXPECT_EQ(failures, (std::vector<std::string>{"", ""}));
  EXPECT_EQ(held[0], held[1]);
  if (mode == Sharding::kFullShard) {
    EXPECT_GE(held[0] * 2, whole[0]);
    EXPECT_LE(held[0] * 2, whole[0] + 64 * 2 * 4 * 30);  // 64-byte alignment of each tensor, 4 buffers
  } else {
    EXPECT_EQ(held[0], whole[0]);
  }
}

TEST_P(Sharded, TwoRanksComputeWhatOneModelDoes) {
  SCOPED_TRACE("llama");
  two_ranks_compute_what_one_model_does(GetParam(), model::tiny_config());
  auto qwen2 = model::tiny_config();
  qwen2.family = &model::families()[1];
  SCOPED_TRACE("qwen2");
  two_ranks_compute_what_one_model_does(GetParam(), qwen2);
}

// With a chunked loss the sharded lm_head is released as soon as the loss's forward
// is done (its backward reads neither the logits nor lm_head), and two ranks' summed
// LoRA gradients are one model's with the plain loss, tied embeddings included.
TEST(Sharded, ChunkedLossGivesOneModelsGradients) {
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    auto config = model::tiny_config();
    config.tie_word_embeddings = tied;
    auto tensors = model::random_tensors(config, 6);
    if (tied) tensors.erase("lm_head.weight");
    auto reference = Llama::from_tensors(config, tensors, nf4_with_lora());
    model::set_lora_b(reference, 12);
    reference.set_training(true);
    reference.set_activation_checkpointing(true);
    auto params = reference.trainable_parameters();
    for (auto& p : params) p.set_requires_grad(true);
    (reference.next_token_loss(batch(0)).sum() + reference.next_token_loss(batch(1)).sum()).backward();

    const auto failures = two_ranks([&](int r, comm::Collective& group) {
      std::string failure;
      std::optional<Llama> llama;  // outlives `weights`, whose destructor detaches from it
      ShardedWeights weights(group, Sharding::kFullShard);
      auto options = nf4_with_lora();
      options.on_layer = [&](int64_t i, model::DecoderLayer& layer) { weights.adopt_layer(i, layer); };
      auto& m = llama.emplace(Llama::from_tensors(config, tensors, options));
      weights.attach(m);
      model::set_lora_b(m, 12);
      m.set_training(true);
      m.set_activation_checkpointing(true);
      m.set_loss_chunk(5);
      auto mine = m.trainable_parameters();
      for (auto& p : mine) p.set_requires_grad(true);
      weights.set_sync_gradients(true);
      auto loss = m.next_token_loss(batch(r)).sum();
      if (m.lm_head().defined() || m.embed_tokens().defined()) failure += "lm_head or embedding still gathered; ";
      loss.backward();
      weights.finish_gradients();
      for (size_t i = 0; i < mine.size(); ++i) {
        // float32 rounding apart: the chunked gradient is scaled by the loss's after the product with lm_head
        const double scale = params[i].grad().abs().max().item<double>();
        if ((mine[i].grad() - params[i].grad()).abs().max().item<double>() > 1e-5 * scale) {
          failure += "gradient " + std::to_string(i) + " differs; ";
        }
      }
      return failure;
    });
    EXPECT_EQ(failures, (std::vector<std::string>{"", ""}));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Sharded, ::testing::Values(Sharding::kFullShard, Sharding::kNoShard));

}  // namespace
}  // namespace herd::train
