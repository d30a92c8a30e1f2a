// `herd plan`'s arithmetic against figures worked out here by hand for Llama-2-70B.
#include <gtest/gtest.h>

#include "worker/train/memory_plan.h"

namespace herd::train {
namespace {

double item(const std::vector<PlanItem>& items, const std::string& prefix) {
  for (const auto& i : items) {
    if (i.what.rfind(prefix, 0) == 0) return i.bytes;
  }
  ADD_FAILURE() << "no item " << prefix;
  return 0;
}

PlanInput seed(int64_t workers) {
  PlanInput in;
  in.shape = known_shape("TheBloke/Llama-2-70B-fp16")->second;
  in.workers = workers;
  set_lora(in, 8, {"q_proj", "k_proj", "v_proj"}, false);
  return in;
}

TEST(MemoryPlan, Llama2_70BOnOneRank) {
  const auto in = seed(1);
  EXPECT_EQ(in.lora_parameters, 22'282'240);  // peft's count for r 8 on q/k/v
  const auto items = memory_plan(in);
  // Per layer: q 8192x8192, k and v 1024x8192, o 8192x8192, three 28672x8192.
  const double weights = 80.0 * (2 * 8192.0 * 8192 + 2 * 1024.0 * 8192 + 3 * 28672.0 * 8192);
  EXPECT_EQ(weights, 68'451'041'280.0);
  const double nf4 = weights / 2 + weights / 64 + weights / 64 / 256 * 4 + 80 * 2 * 8192 * 4;
  EXPECT_DOUBLE_EQ(item(items, "base weights"), nf4);
  EXPECT_DOUBLE_EQ(item(items, "embedding"), 2.0 * 32000 * 8192 * 4 + 8192 * 4);
  EXPECT_DOUBLE_EQ(item(items, "gathered"), 0);
  EXPECT_DOUBLE_EQ(item(items, "LoRA"), 22'282'240.0 * 16);
  EXPECT_DOUBLE_EQ(item(items, "activations"), 80.0 * 4096 * 8192 * 4);
  EXPECT_DOUBLE_EQ(item(items, "logits"), 2.0 * 4096 * 32000 * 4);  // on a GPU: no softmax kept
}

// DoRA: a magnitude per output feature (8192 + 1024 + 1024 a layer) with its gradient and
// moments, the float32 ||W + s B A|| of q_proj (8192 x 8192), and per token the base and
// adapter outputs of q, k and v kept for backward in the layer computing (float32).
TEST(MemoryPlan, DoraAddsItsMagnitudesItsNormBufferAndWhatItKeeps) {
  const auto lora = seed(1);
  auto dora = seed(1);
  set_lora(dora, 8, {"q_proj", "k_proj", "v_proj"}, true);
  EXPECT_EQ(dora.lora_parameters, 22'282'240 + 80 * (8192 + 1024 + 1024));
  const auto with = memory_plan(dora), without = memory_plan(lora);
  EXPECT_DOUBLE_EQ(item(with, "LoRA"), (22'282'240.0 + 819'200) * 16);
  EXPECT_DOUBLE_EQ(item(with, "DoRA: ||W + s B A||"), 8192.0 * 8192 * 4);
  EXPECT_DOUBLE_EQ(item(with, "one layer recomputed") - item(without, "one layer recomputed"), 4096.0 * 10240 * 4 * 2);
  EXPECT_DOUBLE_EQ(plan_total(dora) - plan_total(lora), 819'200.0 * 16 + 8192.0 * 8192 * 4 + 4096.0 * 10240 * 8);
  for (const auto& i : without) EXPECT_EQ(i.what.find("DoRA"), std::string::npos) << i.what;
}

TEST(MemoryPlan, Bf16StreamHalvesTheLayerInputsAndTheLogits) {
  auto in = seed(1);
  in.stream_bytes = 2;
  const auto items = memory_plan(in);
  EXPECT_DOUBLE_EQ(item(items, "activations: each layer's input (bfloat16"), 80.0 * 4096 * 8192 * 2);
  EXPECT_DOUBLE_EQ(item(items, "logits and their gradient (bfloat16"), 2.0 * 4096 * 32000 * 2);
  in.gpu = false;  // the CPU's loss: float32 logits, softmax and gradient
  EXPECT_DOUBLE_EQ(item(memory_plan(in), "logits, their softmax"), 3.0 * 4096 * 32000 * 4);
}

TEST(MemoryPlan, FullShardHoldsOneNthAndTwoLayersInFlight) {
  const auto one = memory_plan(seed(1)), eight = memory_plan(seed(8));
  EXPECT_DOUBLE_EQ(item(eight, "base weights") * 8, item(one, "base weights"));
  EXPECT_DOUBLE_EQ(item(eight, "embedding") * 8, item(one, "embedding"));
  // lm_head and the final norm: the embedding's buffer, as large, is never gathered with it
  EXPECT_DOUBLE_EQ(item(eight, "gathered"), item(one, "base weights") / 80 * 2 + 32000.0 * 8192 * 4 + 8192 * 4);
  EXPECT_DOUBLE_EQ(item(eight, "LoRA"), item(one, "LoRA"));  // replicated
  auto no_shard = seed(8);
  no_shard.full_shard = false;
  EXPECT_DOUBLE_EQ(item(memory_plan(no_shard), "base weights"), item(one, "base weights"));
}

TEST(MemoryPlan, ChunkedLossKeepsAChunksLogitsAndTheHiddenStatesGradient) {
  auto in = seed(1);
  in.loss_chunk = 1024;
  auto items = memory_plan(in);
  EXPECT_DOUBLE_EQ(item(items, "loss in chunks of 1024"), 2.0 * 1024 * 32000 * 4 + 4096.0 * 8192 * 4);
  in.loss_chunk = 100000;  // more than the row: the row's
  EXPECT_DOUBLE_EQ(item(memory_plan(in), "loss in chunks"), 2.0 * 4096 * 32000 * 4 + 4096.0 * 8192 * 4);
  in.loss_chunk = 512;
  in.gpu = false;  // the CPU's loss: float32 logits, softmax and gradient
  EXPECT_DOUBLE_EQ(item(memory_plan(in), "loss in chunks"), 3.0 * 512 * 32000 * 4 + 4096.0 * 8192 * 4);
}

TEST(MemoryPlan, OffloadedActivationsKeepTwoLayerInputsOnTheGpu) {
  auto in = seed(1);
  in.offload_activations = true;
  EXPECT_DOUBLE_EQ(item(memory_plan(in), "activations: 2 layers' inputs (float32; 10.00 GiB in pinned host"),
                   2.0 * 4096 * 8192 * 4);
}

// The seed's job on two 24 GB GPUs at 2,048-token rows needs all three features;
// on one 80 GiB GPU none.
TEST(MemoryPlan, FitTurnsOnTheCheapestFeaturesFirstAndOnlyAsNeeded) {
  auto in = seed(2);
  in.tokens = 2048;
  const double capacity = 24e9;  // --gpu-mem 24GB
  const auto f = fit(in, capacity);
  ASSERT_TRUE(f.fits);
  EXPECT_EQ(f.changes, (std::vector<std::pair<std::string, std::string>>{
                           {"trainer.loss_chunk_tokens", "1024"}, {"trainer.bf16", "true"},
                           {"trainer.offload_activations", "true"}}));
  EXPECT_EQ(f.input.loss_chunk, 1024);
  EXPECT_EQ(f.input.stream_bytes, 2);
  EXPECT_TRUE(f.input.offload_activations);
  EXPECT_LE(plan_total(f.input), capacity);
  auto without_offload = f.input;
  without_offload.offload_activations = false;
  EXPECT_GT(plan_total(without_offload), capacity);
  EXPECT_TRUE(fit(seed(1), 80.0 * (1 << 30)).changes.empty());
  // Nothing makes 4,096-token rows of 70B fit on one 24 GB GPU: every feature is on, and it says so.
  const auto alone = fit(seed(1), capacity);
  EXPECT_FALSE(alone.fits);
  EXPECT_EQ(alone.changes.size(), 3u);
}

TEST(MemoryPlan, SizesAndNames) {
  EXPECT_DOUBLE_EQ(*parse_bytes("80GiB"), 80.0 * (1 << 30));
  EXPECT_DOUBLE_EQ(*parse_bytes("24GB"), 24e9);
  EXPECT_DOUBLE_EQ(*parse_bytes("512MiB"), 512.0 * (1 << 20));
  EXPECT_FALSE(parse_bytes("lots"));
  EXPECT_FALSE(parse_bytes("-3GiB"));
  EXPECT_EQ(known_shape("meta-llama/Llama-2-7b-hf")->first, "Llama-2-7B");
  EXPECT_EQ(known_shape("meta-llama/Meta-Llama-3-8B")->first, "Llama-3-8B");
  EXPECT_FALSE(known_shape("mistralai/Mistral-7B"));
}

TEST(MemoryPlan, TheOtherFamiliesPublishedShapes) {
  // The shapes of their repositories' config.json files.
  const auto llama31 = known_shape("meta-llama/Llama-3.1-70B-Instruct");
  ASSERT_TRUE(llama31);
  EXPECT_EQ(llama31->first, "Llama-3.1-70B");
  ASSERT_TRUE(llama31->second.rope_scaling);
  EXPECT_EQ(llama31->second.rope_scaling->type, "llama3");
  EXPECT_EQ(llama31->second.max_position_embeddings, 131072);
  EXPECT_EQ(known_shape("meta-llama/Llama-3.3-70B-Instruct")->first, "Llama-3.3-70B");
  EXPECT_EQ(known_shape("unsloth/llama3.1-8b")->first, "Llama-3.1-8B");
  const auto qwen = known_shape("Qwen/Qwen2.5-72B-Instruct");
  ASSERT_TRUE(qwen);
  EXPECT_EQ(qwen->first, "Qwen2.5-72B");
  EXPECT_EQ(qwen->second.family->name, "qwen2");
  EXPECT_EQ(qwen->second.vocab_size, 152064);
  // 72.7B parameters, as its model card says: 80 layers, q/k/v biases, untied embeddings.
  const auto& c = qwen->second;
  int64_t params = 2 * c.vocab_size * c.hidden_size + c.hidden_size;
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
    auto [out, in] = c.linear_shape(m);
    params += c.num_hidden_layers * out * in;
  }
  params +=
      c.num_hidden_layers * (2 * c.hidden_size + c.linear_shape("q_proj").first + 2 * c.linear_shape("k_proj").first);
  EXPECT_NEAR(static_cast<double>(params) / 1e9, 72.7, 0.05);
  const auto nemo = known_shape("mistralai/Mistral-Nemo-Instruct-2407");
  ASSERT_TRUE(nemo);
  EXPECT_EQ(nemo->first, "Mistral-Nemo-12B");
  EXPECT_EQ(nemo->second.head_dim, 128);
  EXPECT_EQ(nemo->second.linear_shape("q_proj"), (std::pair<int64_t, int64_t>{4096, 5120}));
}

}  // namespace
}  // namespace herd::train
