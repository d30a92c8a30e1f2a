// The model and the NCCL backend on a GPU (skipped where there is none; they run in
// scripts/gpu-check): the same logits and LoRA gradients as on the CPU, activation
// recompute replaying the GPU's dropout draws, the fused element-wise kernels
// against the formulas they replace (alone and in a model), the batch-1 NF4 gemv
// against the dequantized product, and NCCL's operations with one rank.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
#include "tests/unit/two_ranks.h"
#include "worker/comm/collective.h"
#include "worker/comm/store.h"
#include "worker/model/dropout.h"
#include "worker/model/fused.h"
#include "worker/model/rng.h"
#include "worker/train/fused_adamw.h"

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
  set_lora_b(m, 3);
  return m;
}

// The LoRA gradients of the summed next-token loss on `ids` (CPU tensors back).
std::vector<torch::Tensor> lora_grads(Llama& m, const torch::Tensor& ids, bool recompute) {
  m.set_training(true);
  m.set_activation_checkpointing(recompute);
  for (auto& p : m.trainable_parameters()) p.mutable_grad() = torch::Tensor();
  auto x = ids.to(m.device());
  m.next_token_loss(x).mean().backward();
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

// max |a - b| / max |b|, in float64 on the CPU.
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.cpu().to(torch::kFloat64), y = b.cpu().to(torch::kFloat64);
  return ((x - y).abs().max() / y.abs().max()).item<double>();
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  auto h = x.chunk(2, -1);
  return torch::cat({-h[1], h[0]}, -1);
}

// Each fused kernel and its backward against the eager formula in float64.
TEST(Fused, KernelsMatchTheEagerFormulasWithGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  torch::manual_seed(7);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(testing::Message() << dtype);
    const double tol = dtype == torch::kFloat32 ? 1e-5 : 2e-2;
    auto on_gpu = [&](const torch::Tensor& t) { return t.to(kGpu, dtype).detach().requires_grad_(true); };
    auto f64 = [](const torch::Tensor& t) { return t.detach().cpu().to(torch::kFloat64).requires_grad_(true); };
    {  // RMSNorm over 96 columns
      auto x = on_gpu(torch::randn({3, 5, 96}) * 2);
      auto w = (1 + 0.1 * torch::randn({96})).to(kGpu);
      auto g = torch::randn({3, 5, 96});
      auto y = fused_rms_norm(x, w, 1e-5);
      ASSERT_TRUE(y.defined());
      y.backward(g.to(kGpu, dtype));
      auto xr = f64(x);
      auto yr = w.cpu().to(torch::kFloat64) * xr * torch::rsqrt(xr.pow(2).mean(-1, true) + 1e-5);
      yr.backward(g.to(torch::kFloat64));
      EXPECT_LT(rel_err(y, yr), tol);
      EXPECT_LT(rel_err(x.grad(), xr.grad()), 2 * tol);

      // With the residual's gradient summed in by the backward kernel.
      auto x2 = on_gpu(x.detach());
      auto g_residual = torch::randn({3, 5, 96});
      auto both = fused_rms_norm_residual(x2, w, 1e-5);
      ASSERT_EQ(both.size(), 2u);
      EXPECT_EQ(both[0].data_ptr(), x2.data_ptr());  // x itself, not a copy
      EXPECT_TRUE(torch::equal(both[1], y));
      torch::autograd::backward({both[0], both[1]}, {g_residual.to(kGpu, dtype), g.to(kGpu, dtype)});
      EXPECT_LT(rel_err(x2.grad(), xr.grad() + g_residual.to(dtype).to(torch::kFloat64)), 2 * tol);
    }
    for (const bool per_batch : {false, true}) {  // rotary, head_dim 32
      SCOPED_TRACE(per_batch ? "cos per batch" : "cos per token");
      const int64_t B = 2, T = 5, NH = 3, D = 32;
      auto x = on_gpu(torch::randn({B, T, NH, D}));
      auto angles = torch::rand({per_batch ? B : 1, T, D / 2}) * 6;
      auto emb = torch::cat({angles, angles}, -1);
      auto cos = emb.cos(), sin = emb.sin();
      if (per_batch) {
        cos = cos.view({B, 1, T, D});
        sin = sin.view({B, 1, T, D});
      } else {
        cos = cos.view({T, D});
        sin = sin.view({T, D});
      }
      auto g = torch::randn({B, NH, T, D});
      auto y = fused_rotary(x, cos.to(kGpu, dtype), sin.to(kGpu, dtype));
      ASSERT_TRUE(y.defined());
      ASSERT_EQ(y.sizes(), (std::vector<int64_t>{B, T, NH, D}));
      y.transpose(1, 2).backward(g.to(kGpu, dtype));
      auto xr = f64(x);
      auto c = cos.to(dtype).to(torch::kFloat64), s = sin.to(dtype).to(torch::kFloat64);
      auto t = xr.transpose(1, 2);
      auto yr = t * c + rotate_half(t) * s;  // [B, NH, T, D]
      yr.backward(g.to(torch::kFloat64));
      EXPECT_LT(rel_err(y.transpose(1, 2), yr), tol);
      EXPECT_LT(rel_err(x.grad(), xr.grad()), tol);
    }
    {  // the adapters' part of their input's gradient: one term under dropout, one not
      const int64_t rows = 6, cols = 40;
      auto dx = torch::randn({rows, cols});
      std::vector<LoraInputTerm> terms = {
          {torch::randn({rows, 3}), torch::randn({3, cols}), kernels::dropout_draw(1234, 8, 0.3)},
          {torch::randn({rows, 8}), torch::randn({8, cols}), std::nullopt}};
      auto expected = dx.to(dtype).to(torch::kFloat64);
      for (auto& t : terms) {
        t.d_low = t.d_low.to(kGpu, dtype);
        t.a = t.a.to(kGpu, dtype);
        auto part = torch::mm(t.d_low.cpu().to(torch::kFloat64), t.a.cpu().to(torch::kFloat64));
        // the mask the CPU reference regenerates from the same draw
        if (t.dropout) part = part * dropout_mask(*t.dropout, dx).to(torch::kFloat64) * t.dropout->scale;
        expected = expected + part;
      }
      auto got = dx.to(kGpu, dtype);
      ASSERT_TRUE(fused_lora_input_grad(got, terms));
      EXPECT_LT(rel_err(got, expected), tol);
    }
    {  // silu(gate) * up
      auto gate = on_gpu(torch::randn({4, 40}) * 3), up = on_gpu(torch::randn({4, 40}));
      auto g = torch::randn({4, 40});
      auto y = fused_silu_mul(gate, up);
      ASSERT_TRUE(y.defined());
      y.backward(g.to(kGpu, dtype));
      auto gr = f64(gate), ur = f64(up);
      auto yr = torch::silu(gr) * ur;
      yr.backward(g.to(torch::kFloat64));
      EXPECT_LT(rel_err(y, yr), tol);
      EXPECT_LT(rel_err(gate.grad(), gr.grad()), 2 * tol);
      EXPECT_LT(rel_err(up.grad(), ur.grad()), tol);
    }
  }
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {  // cross-entropy over 40 classes
    SCOPED_TRACE(testing::Message() << "cross-entropy " << dtype);
    auto logits = (torch::randn({6, 40}) * 4).to(kGpu, dtype).requires_grad_(true);
    auto targets = torch::tensor({0, 39, 7, 7, 20, 1}, torch::kInt64);
    auto g = torch::rand({6});
    auto loss = fused_cross_entropy(logits, targets.to(kGpu));
    ASSERT_TRUE(loss.defined());
    ASSERT_EQ(loss.scalar_type(), torch::kFloat32);
    loss.backward(g.to(kGpu));
    auto ref = logits.detach().cpu().to(torch::kFloat64).requires_grad_(true);
    auto ref_loss = torch::nn::functional::cross_entropy(
        ref, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    ref_loss.backward(g.to(torch::kFloat64));
    EXPECT_LT(rel_err(loss, ref_loss), 1e-5);  // from the same stored logits: float32 rounding only
    EXPECT_LT(rel_err(logits.grad(), ref.grad()), dtype == torch::kFloat32 ? 1e-5 : 1e-2);
  }
  // What the kernels do not take is left to the eager ops.
  EXPECT_FALSE(fused_rms_norm(torch::randn({2, 12}), torch::ones({12}), 1e-5).defined());  // on the CPU
  auto cpu_dx = torch::zeros({2, 8});
  EXPECT_FALSE(fused_lora_input_grad(cpu_dx, {{torch::ones({2, 1}), torch::ones({1, 8}), std::nullopt}}));
  EXPECT_FALSE(fused_rms_norm(torch::randn({2, 12}).to(kGpu), torch::ones({12}).to(kGpu), 1e-5).defined());
  EXPECT_FALSE(
      fused_rotary(torch::randn({1, 2, 2, 8}).to(kGpu), torch::ones({2, 8}).to(kGpu), torch::ones({2, 8}).to(kGpu))
          .defined());
}

// The dropout kernel against the CPU reference: the same masks and values, bit for
// bit, through the vectorized path, the one-at-a-time path (a length not a multiple
// of 8, a misaligned start) and more draws than one launch takes.
TEST(PhiloxDropout, TheKernelMatchesTheCpuBitForBit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  torch::manual_seed(8);
  std::vector<kernels::DropoutDraw> draws;
  for (uint64_t i = 0; i < 6; ++i) draws.push_back(kernels::dropout_draw(77 + i, 4 * i, i % 2 == 0 ? 0.05 : 0.5));
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const int64_t skip : {0, 1}) {
      for (const int64_t n : {8 * 1000, 1001}) {
        SCOPED_TRACE(testing::Message() << dtype << " n " << n << " skip " << skip);
        auto x = torch::randn({n + skip}).to(dtype);
        auto gpu = philox_dropouts(x.to(kGpu).slice(0, skip), draws);
        auto cpu = philox_dropouts(x.slice(0, skip), draws);
        ASSERT_EQ(gpu.size(), draws.size());
        for (size_t i = 0; i < draws.size(); ++i) EXPECT_TRUE(torch::equal(gpu[i].cpu(), cpu[i])) << i;
      }
    }
  }
  // Draws from the GPU's generator: each takes the next Philox offset; a restored
  // state draws them again.
  const auto state = rng_state(kGpu);
  const auto a = draw_dropout(kGpu, 0.1), b = draw_dropout(kGpu, 0.1);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(b.offset, a.offset + 4);
  set_rng_state(state, kGpu);
  EXPECT_EQ(draw_dropout(kGpu, 0.1).offset, a.offset);
}

// A model with head_dim 16, so that every fused kernel and SDPA's own grouped-query
// attention run; adapters with dropout on layers that share an input (q, k, v) and
// on both residual adds' layers (o_proj, down_proj).
Llama fusable(torch::Device device, bool fused, torch::ScalarType activations, double dropout,
              bool keep_attention = false) {
  auto c = tiny_config();
  c.hidden_size = 64;
  c.head_dim = 16;
  c.intermediate_size = 176;
  LoadOptions o;
  o.device = device;
  o.fused_kernels = fused;
  o.compute_dtype = activations;
  o.activation_dtype = activations;
  o.keep_attention = keep_attention;
  LoraOptions lora;
  lora.r = 4;
  lora.dropout = dropout;
  lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"};
  o.lora = lora;
  auto m = Llama::from_tensors(c, random_tensors(c, 13), o);
  set_lora_b(m, 3);
  return m;
}

// The fused GPU path against the eager one: equal to float32 rounding in float32,
// and in bfloat16 no further from the float32 reference than twice the eager
// bfloat16 path's error.
TEST(GpuModel, FusedKernelsMatchTheEagerOps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto ids = torch::randint(0, 96, {2, 24}, torch::kInt64);
  // With dropout in float32: both paths draw the same masks in the same order.
  auto grads = [&](Llama m) {
    torch::manual_seed(17);
    return lora_grads(m, ids, true);
  };
  auto expected = grads(fusable(kGpu, false, torch::kFloat32, 0.1));
  auto got = grads(fusable(kGpu, true, torch::kFloat32, 0.1));
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_LT(rel_err(got[i], expected[i]), 1e-4) << i;
  // bfloat16 without dropout (its masks need not be float32's).
  expected = grads(fusable(kGpu, false, torch::kFloat32, 0.0));
  auto e16 = grads(fusable(kGpu, false, torch::kBFloat16, 0.0));
  auto f16 = grads(fusable(kGpu, true, torch::kBFloat16, 0.0));
  for (size_t i = 0; i < expected.size(); ++i) {
    const double eager_err = rel_err(e16[i], expected[i]), fused_err = rel_err(f16[i], expected[i]);
    EXPECT_LT(fused_err, 2 * eager_err + 5e-3) << i << ": eager bf16 " << eager_err;
  }
}

// LoadOptions::keep_attention on the GPU (SDPA's own kernels, grouped-query heads
// inside them): the recompute's LoRA gradients, in float32 and bfloat16.
TEST(GpuModel, KeptAttentionGivesTheRecomputesGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto ids = torch::randint(0, 96, {2, 24}, torch::kInt64);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(testing::Message() << dtype);
    auto grads = [&](Llama m) {
      torch::manual_seed(17);
      return lora_grads(m, ids, true);
    };
    const auto expected = grads(fusable(kGpu, true, dtype, 0.1));
    const auto got = grads(fusable(kGpu, true, dtype, 0.1, /*keep_attention=*/true));
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_LT(rel_err(got[i], expected[i]), dtype == torch::kFloat32 ? 1e-5 : 1e-2) << i;
    }
  }
}

// trainer.loss_chunk_tokens (the fused loss kernels a chunk at a time) and
// trainer.offload_activations (layer inputs through pinned host memory on a copy
// stream) on the GPU: the plain path's LoRA gradients, in float32 and bfloat16.
TEST(GpuModel, ChunkedLossAndActivationOffloadGiveThePlainPathsGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto ids = torch::randint(0, 96, {2, 40}, torch::kInt64);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(testing::Message() << dtype);
    auto grads = [&](int64_t chunk, bool offload) {
      auto m = fusable(kGpu, true, dtype, 0.1);
      m.set_loss_chunk(chunk);
      m.set_activation_offload(offload);
      torch::manual_seed(18);
      auto g = lora_grads(m, ids, true);
      if (offload) EXPECT_EQ(m.activation_offload()->held(), 0u);
      return g;
    };
    const auto expected = grads(0, false);
    for (const auto& [chunk, offload] : {std::pair{int64_t{24}, false}, {int64_t{0}, true}, {int64_t{24}, true}}) {
      SCOPED_TRACE(testing::Message() << "chunk " << chunk << " offload " << offload);
      const auto got = grads(chunk, offload);
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_LT(rel_err(got[i], expected[i]), dtype == torch::kFloat32 ? 1e-5 : 2e-2) << i;
      }
    }
  }
}

// The fused AdamW step against torch::optim::AdamW's, from the same state.
TEST(FusedAdamW, StepsLikeTorchsAdamWOnTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  torch::manual_seed(4);
  auto start = torch::randn({3, 50}).to(kGpu);
  auto a = start.clone().requires_grad_(true), b = start.clone().requires_grad_(true);
  auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW reference({a}, options);
  train::FusedAdamW fused({b}, options);
  for (int step = 0; step < 4; ++step) {
    auto grad = torch::randn({3, 50}).to(kGpu);
    a.mutable_grad() = grad.clone();
    b.mutable_grad() = grad.clone();
    reference.step();
    fused.step();
  }
  EXPECT_LT(rel_err(b.detach(), a.detach()), 1e-6);
  EXPECT_GT(rel_err(b.detach(), start), 1e-3);  // it moved
}

// The foreach clipping's fast path (one launch for the norms, one for the scaling)
// against torch's clip_grad_norm_ on the CPU.
TEST(ClipGradNorm, OnTheGpuIsTorchsOnTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  torch::manual_seed(5);
  std::vector<torch::Tensor> gpu, cpu;
  for (int i = 0; i < 6; ++i) {
    auto p = torch::randn({8 + i, 40}).requires_grad_(true);
    p.mutable_grad() = torch::randn({8 + i, 40});
    cpu.push_back(p);
    auto q = p.detach().to(kGpu).requires_grad_(true);
    q.mutable_grad() = p.grad().to(kGpu);
    gpu.push_back(q);
  }
  const double norm = train::clip_grad_norm(gpu, 1.0), expected = torch::nn::utils::clip_grad_norm_(cpu, 1.0);
  EXPECT_NEAR(norm, expected, 1e-5 * expected);
  for (size_t i = 0; i < gpu.size(); ++i) EXPECT_LT(rel_err(gpu[i].grad(), cpu[i].grad()), 1e-5) << i;
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

// Gloo with GPU tensors (two ranks on one GPU, as threads): each operation goes
// through host copies and its result lands in the GPU tensor.
TEST(Gloo, StagesGpuTensorsThroughHostMemory) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  const auto failures = comm::two_ranks([](int r, comm::Collective& c) {
    auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(kGpu);
    auto out = torch::zeros({8}, opts);
    c.all_gather(out, torch::full({4}, r + 1.0, opts)).wait();
    auto sum = torch::zeros({2}, opts);
    c.reduce_scatter(sum, torch::arange(4, opts) * (r + 1)).wait();
    auto t = torch::full({3}, r + 1.0, opts);
    c.all_reduce(t).wait();
    auto b = torch::full({2}, static_cast<double>(r), opts.dtype(torch::kBFloat16));
    c.broadcast(b, 1).wait();
    std::string f;
    if (!out.is_cuda() || !torch::equal(out.cpu(), torch::tensor({1.f, 1.f, 1.f, 1.f, 2.f, 2.f, 2.f, 2.f}))) {
      f += "all_gather; ";
    }
    if (!torch::equal(sum.cpu(), (torch::arange(4, torch::kFloat32) * 3).slice(0, 2 * r, 2 * r + 2))) {
      f += "reduce_scatter; ";
    }
    if (!torch::equal(t.cpu(), torch::full({3}, 3.0f))) f += "all_reduce; ";
    if (!torch::equal(b.cpu(), torch::full({2}, 1.0, torch::kBFloat16))) f += "broadcast; ";
    return f;
  });
  EXPECT_EQ(failures, (std::vector<std::string>{"", ""}));
}

}  // namespace
}  // namespace herd::model
