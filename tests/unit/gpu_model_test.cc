// The model and the NCCL backend on a GPU (skipped where there is none; they run in
// scripts/gpu-check): the same logits and LoRA gradients as on the CPU, activation
// recompute replaying the GPU's dropout draws, the batch-1 NF4 gemv against the
// dequantized product, and NCCL's operations with one rank.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
#include "worker/comm/collective.h"
#include "worker/comm/store.h"

namespace herd::model {
namespace {

const torch::Device kGpu(torch::kCUDA, 0);

Llama tiny(torch::Device device, double dropout) {
  LoadOptions o;
  o.quantize = true;
  o.device = device;
  LoraOptions lora;
  lora.r = 4;
  lora.dropout = dropout;
  lora.target_modules = {"q_proj", "k_proj", "v_proj", "down_proj"};
  o.lora = lora;
  auto m = Llama::from_tensors(tiny_config(), random_tensors(tiny_config(), 11), o);
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (auto& [name, t] : m.lora_tensors()) {  // B != 0: every gradient is non-zero
    if (name.find("lora_B") != std::string::npos) t.copy_(torch::randn(t.sizes()) * 0.1);
  }
  return m;
}

// The LoRA gradients of the summed next-token loss on `ids` (CPU tensors back).
std::vector<torch::Tensor> lora_grads(Llama& m, const torch::Tensor& ids, bool recompute) {
  m.set_training(true);
  m.set_activation_checkpointing(recompute);
  for (auto& p : m.trainable_parameters()) p.mutable_grad() = torch::Tensor();
  auto x = ids.to(m.device());
  auto logits = m.forward(x);
  torch::nn::functional::cross_entropy(logits.slice(1, 0, -1).reshape({-1, logits.size(2)}),
                                       x.slice(1, 1).reshape({-1}))
      .backward();
  std::vector<torch::Tensor> out;
  for (auto& p : m.trainable_parameters()) out.push_back(p.grad().cpu());
  return out;
}

TEST(GpuModel, LogitsAndGradientsMatchTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto cpu = tiny(torch::kCPU, 0.0), gpu = tiny(kGpu, 0.0);
  auto ids = torch::randint(0, 96, {2, 12}, torch::kInt64);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(gpu.forward(ids).cpu(), cpu.forward(ids), 1e-4, 1e-4));
  {
    torch::AutoGradMode grad(true);
    auto a = lora_grads(cpu, ids, true), b = lora_grads(gpu, ids, true);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(b[i], a[i], 1e-4, 1e-5)) << i;
  }
}

TEST(GpuModel, RecomputeReplaysTheGpusDropoutDraws) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto m = tiny(kGpu, 0.3);
  auto ids = torch::randint(0, 96, {2, 12}, torch::kInt64);
  torch::cuda::manual_seed(5);
  auto plain = lora_grads(m, ids, false);
  torch::cuda::manual_seed(5);
  auto recomputed = lora_grads(m, ids, true);
  torch::cuda::manual_seed(6);
  auto other = lora_grads(m, ids, true);
  bool differs = false;
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(torch::allclose(recomputed[i], plain[i], 1e-5, 1e-6)) << i;
    differs = differs || !torch::allclose(other[i], plain[i], 1e-3, 1e-4);
  }
  EXPECT_TRUE(differs) << "other dropout draws should give other gradients";
}

TEST(Nf4Gemv, OneRowWithoutGradientsMatchesTheDequantizedProduct) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  torch::NoGradGuard no_grad;
  for (const auto [rows, cols] : {std::pair<int64_t, int64_t>{37, 72}, {64, 4096}, {300, 136}}) {
    for (const bool double_quant : {false, true}) {
      for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
        SCOPED_TRACE(testing::Message() << rows << "x" << cols << " double_quant " << double_quant << " " << dtype);
        auto w = FrozenWeight::quantize(torch::randn({rows, cols}) * 0.05, double_quant);
        const auto dense = w.materialize(torch::kFloat32).to(torch::kFloat64);
        LoraLinear layer(std::move(w), dtype, std::nullopt, nullptr);
        layer.to(kGpu);
        auto x = torch::randn({1, 1, cols}).to(dtype);
        auto y = layer.forward(x.to(kGpu), false).cpu();
        ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1, rows}));
        auto expected = torch::matmul(x.to(torch::kFloat64), dense.t());
        const double err = ((y.to(torch::kFloat64) - expected).abs().max() / expected.abs().max()).item<double>();
        EXPECT_LT(err, dtype == torch::kFloat32 ? 1e-5 : 1e-2);
      }
    }
  }
}

TEST(Nccl, EveryOperationWithOneRank) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  comm::InMemoryStore store;
  comm::CollectiveOptions o;
  o.device = 0;
  auto c = comm::connect("nccl", store, o);
  EXPECT_EQ(c->backend(), "nccl");
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(kGpu);
  auto in = torch::arange(6, opts), out = torch::zeros({6}, opts);
  c->all_gather(out, in).wait();
  EXPECT_TRUE(torch::equal(out.cpu(), in.cpu()));
  auto sum = torch::zeros({6}, opts);
  c->reduce_scatter(sum, in * 2).wait();
  EXPECT_TRUE(torch::equal(sum.cpu(), (in * 2).cpu()));
  auto t = torch::full({3}, 1.5, opts.dtype(torch::kBFloat16));
  c->all_reduce(t).wait();
  c->broadcast(t, 0).wait();
  EXPECT_TRUE(torch::equal(t.cpu(), torch::full({3}, 1.5, torch::kBFloat16)));
  c->barrier();
}

}  // namespace
}  // namespace herd::model
