// FSDP-style sharding with two ranks as threads (Gloo over loopback): each rank
// holds half of the frozen bytes, computes the logits one whole model computes,
// and ends a step with the sum over ranks of the LoRA gradients one model gets
// from both ranks' inputs.
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
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

class Sharded : public ::testing::TestWithParam<Sharding> {};

TEST_P(Sharded, TwoRanksComputeWhatOneModelDoes) {
  const auto config = model::tiny_config();
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

  comm::InMemoryStore store;
  std::vector<std::string> failures(2);
  std::vector<int64_t> held(2), whole(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        comm::CollectiveOptions co;
        co.rank = r;
        co.size = 2;
        co.hostname = "127.0.0.1";
        co.timeout = std::chrono::seconds(30);
        auto group = comm::connect("gloo", store, co);
        ShardedWeights weights(*group, GetParam());
        auto options = nf4_with_lora();
        options.on_layer = [&](int64_t i, model::DecoderLayer& layer) { weights.adopt_layer(i, layer); };
        auto m = Llama::from_tensors(config, tensors, options);
        weights.attach(m);
        held[static_cast<size_t>(r)] = weights.shard_bytes();
        whole[static_cast<size_t>(r)] = weights.model_bytes();
        model::set_lora_b(m, 11);
        m.set_training(true);
        m.set_activation_checkpointing(true);
        {
          torch::NoGradGuard no_grad;
          if (!torch::equal(m.forward(batch(0)), logits)) failures[static_cast<size_t>(r)] += "logits differ; ";
        }
        auto mine = m.trainable_parameters();
        for (auto& p : mine) p.set_requires_grad(true);
        weights.set_sync_gradients(true);
        loss_of(m.forward(batch(r))).backward();
        weights.finish_gradients();
        for (size_t i = 0; i < mine.size(); ++i) {
          if (!torch::allclose(mine[i].grad(), params[i].grad(), 1e-5, 1e-6)) {
            failures[static_cast<size_t>(r)] += "gradient " + std::to_string(i) + " differs; ";
          }
        }
      } catch (const std::exception& e) {
        failures[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  EXPECT_EQ(failures, (std::vector<std::string>{"", ""}));
  EXPECT_EQ(held[0], held[1]);
  if (GetParam() == Sharding::kFullShard) {
    EXPECT_GE(held[0] * 2, whole[0]);
    EXPECT_LE(held[0] * 2, whole[0] + 64 * 2 * 3 * 30);  // 64-byte alignment of each tensor, 3 buffers
  } else {
    EXPECT_EQ(held[0], whole[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Sharded, ::testing::Values(Sharding::kFullShard, Sharding::kNoShard));

}  // namespace
}  // namespace herd::train
