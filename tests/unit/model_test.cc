#include <unistd.h>

#include <atomic>
#include <functional>
#include <filesystem>
#include <limits>
#include <string_view>
#include <tuple>

#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/record_function.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/nf4.h"
#include "tests/unit/tiny_llama.h"
#include "worker/model/dropout.h"
#include "worker/model/frozen_matmul.h"
#include "worker/model/linear_group.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/model/rng.h"
#include "worker/train/fused_adamw.h"

namespace herd::model {
namespace {

LoadOptions plain() {
  LoadOptions o;
  o.quantize = false;
  return o;
}

TEST(Llama, ChangingATokenLeavesEarlierLogitsUnchanged) {
  auto config = tiny_config();
  auto model = Llama::from_tensors(config, random_tensors(config, 1), plain());
  auto ids = torch::tensor({{1, 5, 9, 33, 70, 2, 11}}, torch::kInt64);
  torch::NoGradGuard g;
  auto a = model.forward(ids);
  auto changed = ids.clone();
  changed[0][4] = 40;
  auto b = model.forward(changed);
  EXPECT_TRUE(torch::equal(a.slice(1, 0, 4), b.slice(1, 0, 4)));
  EXPECT_GT((a.slice(1, 4) - b.slice(1, 4)).abs().max().item<float>(), 1e-3);  // and later ones do change
}

// With a bfloat16 hidden stream the frozen embedding and lm_head are only used in
// bfloat16, so they are kept so: half the memory, and the very logits the float32
// copies (cast at each use) gave.
TEST(Llama, ABfloat16StreamKeepsTheFrozenHeadInBfloat16WithTheSameLogits) {
  auto config = tiny_config();
  auto tensors = random_tensors(config, 1);
  LoadOptions o = plain();
  o.activation_dtype = torch::kBFloat16;
  auto model = Llama::from_tensors(config, tensors, o);
  const auto embed = tensors.at("model.embed_tokens.weight"), head = tensors.at("lm_head.weight");
  ASSERT_EQ(model.embed_tokens().scalar_type(), torch::kBFloat16);
  ASSERT_EQ(model.lm_head().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(model.embed_tokens(), embed.to(torch::kBFloat16)));
  auto ids = torch::tensor({{1, 5, 9, 33, 70, 2, 11}}, torch::kInt64);
  torch::NoGradGuard g;
  auto kept = model.forward(ids);
  model.embed_tokens() = embed.clone();  // float32, as before
  model.lm_head() = head.clone();
  EXPECT_TRUE(torch::equal(model.forward(ids), kept));
  EXPECT_EQ(Llama::from_tensors(config, tensors, plain()).lm_head().scalar_type(), torch::kFloat32);  // a float32 stream
}

// Position t's loss is -log softmax(logits[t])[ids[t + 1]], by hand in float64.
TEST(Llama, NextTokenLossIsTheShiftedCrossEntropy) {
  auto config = tiny_config();
  auto model = Llama::from_tensors(config, random_tensors(config, 1), plain());
  auto ids = torch::tensor({{1, 5, 9, 33, 70}, {2, 8, 8, 0, 95}}, torch::kInt64);
  torch::NoGradGuard g;
  auto loss = model.next_token_loss(ids);
  ASSERT_EQ(loss.sizes(), (std::vector<int64_t>{2, 4}));
  auto logits = model.forward(ids).to(torch::kFloat64);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t t = 0; t < 4; ++t) {
      auto row = logits[b][t];
      const double expected = (row.exp().sum().log() - row[ids[b][t + 1].item<int64_t>()]).item<double>();
      EXPECT_NEAR(loss[b][t].item<double>(), expected, 1e-5) << b << "," << t;
    }
  }
}

TEST(Llama, GroupedQueryAttentionEqualsMultiHeadWithSharedKeys) {
  // kv_heads = 2 for 4 query heads is the same model as 4 KV heads where heads 0,1
  // carry KV head 0's weights and heads 2,3 carry KV head 1's.
  auto gqa = tiny_config(4, 2), mha = tiny_config(4, 4);
  auto t = random_tensors(gqa, 2);
  auto t_mha = t;
  for (int64_t i = 0; i < gqa.num_hidden_layers; ++i) {
    for (const char* m : {"k_proj", "v_proj"}) {
      auto w = t[module_path(i, m) + ".weight"].view({2, 8, 32});  // [kv_head, head_dim, hidden]
      t_mha[module_path(i, m) + ".weight"] = w.repeat_interleave(2, 0).reshape({32, 32});
    }
  }
  auto a = Llama::from_tensors(gqa, t, plain());
  auto b = Llama::from_tensors(mha, t_mha, plain());
  auto ids = torch::tensor({{1, 5, 9, 33, 70, 2}}, torch::kInt64);
  torch::NoGradGuard g;
  EXPECT_LT((a.forward(ids) - b.forward(ids)).abs().max().item<float>(), 1e-5);
}

TEST(Llama, RightPaddingDoesNotChangeRealTokens) {
  auto config = tiny_config();
  auto model = Llama::from_tensors(config, random_tensors(config, 3), plain());
  torch::NoGradGuard g;
  auto alone = model.forward(torch::tensor({{1, 7, 8, 9}}, torch::kInt64));
  auto batch = torch::tensor({{1, 7, 8, 9, 0, 0, 0}, {1, 2, 3, 4, 5, 6, 7}}, torch::kInt64);
  auto mask = torch::tensor({{1, 1, 1, 1, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1}}, torch::kInt64);
  auto padded = model.forward(batch, mask);
  EXPECT_LT((padded[0].slice(0, 0, 4) - alone[0]).abs().max().item<float>(), 1e-5);
}

TEST(Llama, PackedConversationsGetTheLogitsTheyGetAlone) {
  auto config = tiny_config();
  auto model = Llama::from_tensors(config, random_tensors(config, 7), plain());
  auto a = torch::tensor({{1, 7, 8, 9, 10}}, torch::kInt64), b = torch::tensor({{1, 30, 31}}, torch::kInt64);
  auto packed = torch::cat({a, b, torch::zeros({1, 2}, torch::kInt64)}, 1);  // a, b, two pad tokens
  auto segments = torch::tensor({{1, 1, 1, 1, 1, 2, 2, 2, 0, 0}}, torch::kInt64);
  torch::NoGradGuard g;
  auto out = model.forward(packed, {}, segments);
  EXPECT_LT((out[0].slice(0, 0, 5) - model.forward(a)[0]).abs().max().item<float>(), 1e-5);
  EXPECT_LT((out[0].slice(0, 5, 8) - model.forward(b)[0]).abs().max().item<float>(), 1e-5);
  // Without segments, b would see a: its logits differ.
  EXPECT_GT((model.forward(packed)[0].slice(0, 5, 8) - model.forward(b)[0]).abs().max().item<float>(), 1e-3);
}

// Mistral's sliding window of W: a position sees itself and the W - 1 before, in every
// path attention takes (no mask, padding, packing, a KV cache).
TEST(Llama, ASlidingWindowHoldsInEveryAttentionPath) {
  auto config = tiny_config();
  config.family = &families()[2];
  ASSERT_EQ(config.family->name, "mistral");
  config.sliding_window = 3;
  auto model = Llama::from_tensors(config, random_tensors(config, 11), plain());
  torch::NoGradGuard g;
  auto a = torch::tensor({{1, 7, 8, 9, 10, 11, 12, 13}}, torch::kInt64);
  auto alone = model.forward(a);
  // Two layers of a window of 3 reach 4 positions back: changing token 0 leaves the
  // logits from position 5 on unchanged, and changes those before.
  auto changed = a.clone();
  changed[0][0] = 40;
  auto other = model.forward(changed);
  EXPECT_LT((other[0].slice(0, 5) - alone[0].slice(0, 5)).abs().max().item<float>(), 1e-6);
  EXPECT_GT((other[0].slice(0, 1, 5) - alone[0].slice(0, 1, 5)).abs().max().item<float>(), 1e-3);
  // padding (an explicit mask)
  auto batch = torch::cat({a, torch::zeros({1, 2}, torch::kInt64)}, 1);
  auto mask = torch::cat({torch::ones({1, 8}, torch::kInt64), torch::zeros({1, 2}, torch::kInt64)}, 1);
  EXPECT_LT((model.forward(batch, mask)[0].slice(0, 0, 8) - alone[0]).abs().max().item<float>(), 1e-5);
  // packing
  auto b = torch::tensor({{1, 30, 31, 32, 33}}, torch::kInt64);
  auto packed = torch::cat({a, b}, 1);
  auto segments = torch::cat({torch::ones({1, 8}, torch::kInt64), torch::full({1, 5}, 2, torch::kInt64)}, 1);
  auto out = model.forward(packed, {}, segments);
  EXPECT_LT((out[0].slice(0, 0, 8) - alone[0]).abs().max().item<float>(), 1e-5);
  EXPECT_LT((out[0].slice(0, 8, 13) - model.forward(b)[0]).abs().max().item<float>(), 1e-5);
  // a KV cache: a prompt of 4, then one token at a time past the window
  Llama::KVCache cache;
  EXPECT_LT((model.decode(a.slice(1, 0, 4), cache)[0] - alone[0][3]).abs().max().item<float>(), 1e-5);
  for (int64_t t = 4; t < 8; ++t) {
    EXPECT_LT((model.decode(a.slice(1, t, t + 1), cache)[0] - alone[0][t]).abs().max().item<float>(), 1e-5) << t;
  }
}

// Qwen2's q/k/v biases: in the output, and the same through the fused linear groups.
TEST(Llama, QkvBiasesAreAddedOnEveryPath) {
  auto config = tiny_config();
  config.family = &families()[1];
  ASSERT_EQ(config.family->name, "qwen2");
  auto tensors = random_tensors(config, 12);
  auto model = Llama::from_tensors(config, tensors, plain());
  for (auto& [name, t] : tensors) {
    if (name.ends_with(".bias")) t = torch::zeros_like(t);  // not in place: the model holds these tensors
  }
  auto zero = Llama::from_tensors(config, tensors, plain());
  torch::NoGradGuard g;
  auto ids = torch::tensor({{1, 7, 8, 9, 10}}, torch::kInt64);
  auto with = model.forward(ids);
  EXPECT_GT((with - zero.forward(ids)).abs().max().item<float>(), 1e-3);
  auto fused_options = plain();
  fused_options.fused_on_cpu = true;
  auto fused = Llama::from_tensors(config, random_tensors(config, 12), fused_options);
  EXPECT_LT((fused.forward(ids) - with).abs().max().item<float>(), 1e-5);
}

// A packed row's summed loss has the LoRA gradients of its samples' losses summed
// alone, with and without recompute (each segment is attended alone).
TEST(Llama, PackedRowsGetTheGradientsOfTheirSamplesAlone) {
  const auto config = tiny_config();
  LoadOptions o = plain();
  LoraOptions lora;
  lora.r = 4;
  lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  o.lora = lora;
  auto model = Llama::from_tensors(config, random_tensors(config, 5), o);
  set_lora_b(model, 6);
  model.set_training(true);
  auto a = torch::tensor({{1, 7, 8, 9, 10}}, torch::kInt64), b = torch::tensor({{1, 30, 31, 32}}, torch::kInt64),
       c = torch::tensor({{1, 50, 51}}, torch::kInt64);
  // Row 0: a then b; row 1: c then padding. Positions that predict across a boundary
  // or from padding are left out of the sum, as the loss mask leaves them out.
  auto ids = torch::zeros({2, 9}, torch::kInt64);
  ids[0].slice(0, 0, 5).copy_(a[0]);
  ids[0].slice(0, 5, 9).copy_(b[0]);
  ids[1].slice(0, 0, 3).copy_(c[0]);
  auto segments = torch::tensor({{1, 1, 1, 1, 1, 2, 2, 2, 2}, {1, 1, 1, 0, 0, 0, 0, 0, 0}}, torch::kInt64);
  auto counted = torch::ones({2, 8});
  counted[0][4] = 0;  // the last token of a would predict b's BOS
  counted[1].slice(0, 2, 8).fill_(0);
  for (const bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "no recompute");
    model.set_activation_checkpointing(recompute);
    auto grads = [&](const std::function<torch::Tensor()>& loss) {
      for (auto& p : model.trainable_parameters()) p.mutable_grad() = torch::Tensor();
      loss().backward();
      std::vector<torch::Tensor> out;
      for (auto& p : model.trainable_parameters()) out.push_back(p.grad().clone());
      return out;
    };
    const auto packed = grads([&] { return (model.next_token_loss(ids, {}, segments) * counted).sum(); });
    const auto alone = grads([&] {
      return model.next_token_loss(a).sum() + model.next_token_loss(b).sum() + model.next_token_loss(c).sum();
    });
    ASSERT_EQ(packed.size(), alone.size());
    for (size_t i = 0; i < packed.size(); ++i) {
      const double scale = alone[i].abs().max().item<double>();
      EXPECT_GT(scale, 0) << i;
      EXPECT_LT((packed[i] - alone[i]).abs().max().item<double>(), 1e-5 * scale) << i;
    }
  }
}

TEST(FrozenWeight, MaterializeIsTheKernelsDequantizeOnEveryPath) {
  torch::manual_seed(4);
  auto w = torch::randn({48, 40}) * 0.1;  // 1920 elements: blocks cross rows
  for (bool dq : {false, true}) {
    auto f = FrozenWeight::quantize(w, dq);
    auto cpu = f.materialize(torch::kFloat32);
    auto generic = nf4_dequantize_torch(f.packed, f.block_absmax(), w.numel(), f.code_table).view({48, 40});
    EXPECT_TRUE(torch::equal(cpu, generic));
    // bfloat16: the float32 product rounded to nearest even
    EXPECT_TRUE(torch::equal(f.materialize(torch::kBFloat16).view(torch::kInt16),
                             generic.to(torch::kBFloat16).view(torch::kInt16)));
    EXPECT_LT((cpu - w).abs().max().item<float>(), 0.16 * w.abs().max().item<float>());
    EXPECT_LT(f.bytes(), static_cast<size_t>(w.numel()) / 2 + w.numel() / 64 * 4 + 64);
  }
}

TEST(LoraLinear, GradientsMatchADenseFloat32Reference) {
  torch::manual_seed(5);
  auto w = torch::randn({24, 40}) * 0.1;
  for (bool quantized : {true, false}) {
    FrozenWeight fw = quantized ? FrozenWeight::quantize(w, true) : FrozenWeight::dense_weight(w);
    auto dense = fw.materialize(torch::kFloat32);  // the reference uses exactly the weight herd uses
    LoraLinear layer(std::move(fw), torch::kFloat32, LoraSpec{4, 2.5, 0.0}, nullptr);
    {
      torch::NoGradGuard g;
      layer.lora_B().normal_(0, 0.3);  // B = 0 would hide errors in A's gradient
    }
    auto x = torch::randn({3, 5, 40}, torch::requires_grad());
    auto upstream = torch::randn({3, 5, 24});
    (layer.forward(x, true) * upstream).sum().backward();

    auto xr = x.detach().clone().requires_grad_(true);
    auto A = layer.lora_A().detach().clone().requires_grad_(true);
    auto B = layer.lora_B().detach().clone().requires_grad_(true);
    auto ref = torch::matmul(xr, dense.t()) + torch::matmul(torch::matmul(xr, A.t()), B.t()) * 2.5;
    (ref * upstream).sum().backward();
    EXPECT_LT((x.grad() - xr.grad()).abs().max().item<float>(), 1e-5) << quantized;
    EXPECT_LT((layer.lora_A().grad() - A.grad()).abs().max().item<float>(), 1e-5) << quantized;
    EXPECT_LT((layer.lora_B().grad() - B.grad()).abs().max().item<float>(), 1e-5) << quantized;
    EXPECT_GT(layer.lora_A().grad().abs().max().item<float>(), 1e-3);
  }
}

// The fused path's group of layers reading one input (worker/model/linear_group.h)
// against each layer's own forward and autograd: the same outputs and gradients,
// dropout's draws included (the same seed draws the same masks in the same order).
TEST(LinearGroup, MatchesEachLayerOnItsOwn) {
  torch::manual_seed(6);
  for (const double dropout : {0.0, 0.3}) {
    SCOPED_TRACE(testing::Message() << "dropout " << dropout);
    // herd's dropout, as on a GPU: the group takes no other
    const LoraSpec first{4, 2.5, dropout, false, LoraSpec::Dropout::kPhilox},
        third{2, 4.0, dropout, false, LoraSpec::Dropout::kPhilox};
    std::vector<std::unique_ptr<LoraLinear>> layers;
    layers.push_back(std::make_unique<LoraLinear>(FrozenWeight::quantize(torch::randn({24, 40}) * 0.1, true),
                                                  torch::kFloat32, first, nullptr));
    layers.push_back(std::make_unique<LoraLinear>(FrozenWeight::dense_weight(torch::randn({8, 40}) * 0.1),
                                                  torch::kFloat32, std::nullopt, nullptr));
    layers.push_back(std::make_unique<LoraLinear>(FrozenWeight::quantize(torch::randn({16, 40}) * 0.1, false),
                                                  torch::kFloat32, third, nullptr));
    std::vector<const LoraLinear*> group;
    for (auto& l : layers) {
      if (l->has_lora()) {
        torch::NoGradGuard g;
        l->lora_B().normal_(0, 0.3);  // B = 0 would hide errors in A's gradient
      }
      group.push_back(l.get());
    }
    auto x = torch::randn({3, 5, 40});
    std::vector<torch::Tensor> upstream;
    for (auto& l : layers) upstream.push_back(torch::randn({3, 5, l->weight().out_features}));
    // The outputs, then the gradients of x and of the adapters, after running `run`.
    auto gradients = [&](const std::function<std::vector<torch::Tensor>(const torch::Tensor&)>& run) {
      for (auto& l : layers) {
        if (l->has_lora()) l->lora_A().mutable_grad() = l->lora_B().mutable_grad() = torch::Tensor();
      }
      auto xg = x.clone().requires_grad_(true);
      torch::manual_seed(21);
      const auto ys = run(xg);
      auto loss = torch::zeros({});
      for (size_t i = 0; i < ys.size(); ++i) loss = loss + (ys[i] * upstream[i]).sum();
      loss.backward();
      std::vector<torch::Tensor> out = ys;
      out.push_back(xg.grad());
      for (auto& l : layers) {
        if (l->has_lora()) out.insert(out.end(), {l->lora_A().grad(), l->lora_B().grad()});
      }
      return out;
    };
    const auto expected = gradients([&](const torch::Tensor& xg) {
      std::vector<torch::Tensor> ys;
      for (auto& l : layers) ys.push_back(l->forward(xg, true));
      return ys;
    });
    const auto got = gradients([&](const torch::Tensor& xg) { return linear_group(group, xg, true); });
    ASSERT_EQ(got.size(), 3u + 1u + 4u);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].sizes(), expected[i].sizes()) << i;
      EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-5, 1e-6)) << i;
    }
  }
  // torch's dropout, the CPU's default, keeps masks the group has no place for: each
  // layer runs on its own.
  LoraLinear torch_dropout(FrozenWeight::dense_weight(torch::randn({8, 40})), torch::kFloat32, LoraSpec{4, 2.5, 0.3},
                           nullptr);
  EXPECT_TRUE(linear_group({&torch_dropout}, torch::randn({2, 40}), true).empty());
  EXPECT_EQ(linear_group({&torch_dropout}, torch::randn({2, 40}), false).size(), 1u);
}

// DoRA with dropout on, as peft computes it: the base term is the dropped input's
// product with W (not the layer's base output), scaled by m / ||W + s B A|| - 1; the
// same torch seed draws the same mask, so the expectation is written out here. The
// NF4 weight is dequantized once for the forward: W in the expectation is that.
TEST(LoraLinear, DoraWithDropoutIsPeftsFormula) {
  torch::manual_seed(5);
  for (const bool quantized : {false, true}) {
    SCOPED_TRACE(quantized);
    const auto w0 = torch::randn({24, 64});
    auto fw = quantized ? FrozenWeight::quantize(w0, true) : FrozenWeight::dense_weight(w0);
    const auto w = fw.materialize(torch::kFloat32);
    LoraSpec spec{.r = 4, .scaling = 2.5, .dropout = 0.4, .dora = true};
    LoraLinear layer(std::move(fw), torch::kFloat32, spec, nullptr);
    {
      torch::NoGradGuard no_grad;
      layer.lora_B().normal_(0.0, 0.3);
      EXPECT_TRUE(torch::allclose(layer.magnitude(), w.norm(2, {1}), 1e-6, 0));  // B = 0 at the start: ||W||
      layer.magnitude().mul_(torch::linspace(0.5, 1.5, 24));
    }
    const auto x = torch::randn({3, 64});
    torch::manual_seed(17);
    const auto y = layer.forward(x, true);
    torch::manual_seed(17);
    const auto h = torch::dropout(x, 0.4, true);
    const auto& a = layer.lora_A();
    const auto& b = layer.lora_B();
    const auto n = (w + 2.5 * torch::mm(b, a)).norm(2, {1});
    const auto scale = (layer.magnitude() / n).detach();
    const auto expected =
        torch::mm(x, w.t()) + (scale - 1) * torch::mm(h, w.t()) + scale * torch::mm(torch::mm(h, a.t()), b.t()) * 2.5;
    EXPECT_TRUE(torch::allclose(y, expected.detach(), 1e-5, 1e-5));
    EXPECT_FALSE(torch::allclose(y, layer.forward(x, false), 1e-3, 1e-3));  // the dropout term is there
    // The magnitude's gradient: d y / d m = (the base term + the adapter term) / n.
    y.sum().backward();
    const auto dm = ((torch::mm(h, w.t()) + torch::mm(torch::mm(h, a.t()), b.t()) * 2.5) / n).sum(0);
    EXPECT_TRUE(torch::allclose(layer.magnitude().grad(), dm.detach(), 1e-4, 1e-5));
  }
}

// g W for a frozen W, every form, against the float64 product: bfloat16 on the CPU
// takes the transposed operand, which rounds only once, as torch's own product does.
TEST(FrozenMatmul, TheInputsGradientIsGTimesWInEveryDtype) {
  torch::manual_seed(8);
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(testing::Message() << dtype);
    const auto w = torch::randn({48, 40}).to(dtype), g = torch::randn({2, 3, 48}).to(dtype);
    const auto expected = torch::matmul(g.to(torch::kFloat64), w.to(torch::kFloat64));
    // One rounding of the float32 sum to the dtype: half an ulp, plus the sum's own error.
    const double rtol = dtype == torch::kFloat32 ? 1e-5 : 1.0 / 256;
    EXPECT_TRUE(torch::allclose(input_grad(g, w).to(torch::kFloat64), expected, rtol, 1e-5));
    auto out = torch::full({6, 40}, 7.0, g.options());
    input_grad_out(out, g.view({6, 48}), w);
    EXPECT_TRUE(torch::allclose(out.view({2, 3, 40}).to(torch::kFloat64), expected, rtol, 1e-5));
    torch::Tensor dx;
    add_input_grad(dx, g.view({6, 48}), w);
    add_input_grad(dx, g.view({6, 48}), w);
    EXPECT_TRUE(torch::allclose(dx.view({2, 3, 40}).to(torch::kFloat64), 2 * expected, rtol, 1e-5));
    // Through autograd: x W^T forward, g W back, no gradient for W.
    const auto x = torch::randn({2, 3, 40}).to(dtype).requires_grad_(true);
    const auto y = frozen_matmul(x, w);
    EXPECT_TRUE(torch::equal(y, torch::matmul(x.detach(), w.t())));
    y.backward(g);
    EXPECT_TRUE(torch::allclose(x.grad().to(torch::kFloat64), expected, rtol, 1e-5));
  }
}

// herd's dropout (worker/model/dropout.h) on the CPU. Its Philox words are ATen's
// Philox engine's (the one torch's CUDA kernels count offsets for): key the seed,
// subsequence the group of four elements, offset the draw's block.
TEST(PhiloxDropout, WordsAreATensPhiloxEngines) {
  for (const auto [seed, group, offset] : {std::tuple<uint64_t, uint64_t, uint64_t>{0, 0, 0},
                                           {67280421310721ull, 5, 8},
                                           {0xfedcba9876543210ull, 0x123456789ull, 4ull << 33}}) {
    at::Philox4_32 engine(seed, group, offset / 4);
    uint32_t c[4] = {static_cast<uint32_t>(offset / 4), static_cast<uint32_t>(offset / 4 >> 32),
                     static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32)};
    kernels::philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    for (int i = 0; i < 4; ++i) EXPECT_EQ(engine(), c[i]) << seed << " " << i;
  }
}

TEST(PhiloxDropout, ForwardAndBackwardApplyTheDrawsMask) {
  torch::manual_seed(3);
  const auto d = kernels::dropout_draw(99, 12, 0.25);
  auto x = torch::randn({7, 9}).requires_grad_(true);
  auto g = torch::randn({7, 9});
  auto y = philox_dropout(x, d);
  y.backward(g);
  const auto mask = dropout_mask(d, x).to(torch::kFloat32);
  const double scale = 1 / 0.75;
  EXPECT_TRUE(torch::allclose(y, x.detach() * mask * scale, 0, 1e-6));
  EXPECT_TRUE(torch::allclose(x.grad(), g * mask * scale, 0, 1e-6));
  EXPECT_GT(mask.sum().item<double>(), 30);  // of 63, about 47 kept
  EXPECT_LT(mask.sum().item<double>(), 60);
  // A draw comes from the CPU's generator: the next differs, a restored state repeats it.
  const auto state = rng_state();
  const auto a = draw_dropout(torch::kCPU, 0.25), b = draw_dropout(torch::kCPU, 0.25);
  EXPECT_NE(a.seed, b.seed);
  set_rng_state(state);
  EXPECT_EQ(draw_dropout(torch::kCPU, 0.25).seed, a.seed);
  EXPECT_EQ(a.keep_below, d.keep_below);
  EXPECT_EQ(draw_from_ints(draw_to_ints(a)).seed, a.seed);
  EXPECT_EQ(draw_from_ints(draw_to_ints(d)).scale, d.scale);
  EXPECT_EQ(draw_from_ints(draw_to_ints(d)).offset, d.offset);
}

// The fused path's torch-op parts (LoadOptions::fused_on_cpu: the linear layers
// sharing an input as one node) in a model, with and without recompute: the eager
// path's loss and LoRA gradients, dropout included.
TEST(Llama, FusedLinearGroupsMatchTheEagerPath) {
  const auto config = tiny_config();
  auto make = [&](bool fused) {
    LoadOptions o;
    o.fused_kernels = o.fused_on_cpu = fused;
    o.lora_dropout = LoraSpec::Dropout::kPhilox;  // a GPU's dropout, which the fused path needs
    LoraOptions lora;
    lora.r = 4;
    lora.dropout = 0.2;
    lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"};
    o.lora = lora;
    auto m = Llama::from_tensors(config, random_tensors(config, 12), o);
    set_lora_b(m, 3);
    return m;
  };
  auto eager = make(false), fused = make(true);
  const auto ids = torch::randint(0, config.vocab_size, {2, 9}, torch::kInt64);
  for (const bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "no recompute");
    auto run = [&](Llama& m) {
      m.set_training(true);
      m.set_activation_checkpointing(recompute);
      for (auto& p : m.trainable_parameters()) p.mutable_grad() = torch::Tensor();
      torch::manual_seed(9);
      auto loss = m.next_token_loss(ids).mean();
      loss.backward();
      std::vector<torch::Tensor> out = {loss.detach()};
      for (auto& p : m.trainable_parameters()) out.push_back(p.grad());
      return out;
    };
    const auto expected = run(eager), got = run(fused);
    ASSERT_EQ(got.size(), expected.size());
    ASSERT_EQ(got.size(), 1u + 2u * 6u * static_cast<size_t>(config.num_hidden_layers));
    for (size_t i = 0; i < got.size(); ++i) {
      // float32 rounding apart: the gradients are summed in another order
      const double scale = expected[i].abs().max().item<double>();
      EXPECT_LT((got[i] - expected[i]).abs().max().item<double>(), 1e-5 * scale) << i;
      EXPECT_GT(scale, 0) << i;
    }
  }
}

// SDPA calls seen by a RecordFunction callback (KeptAttention's test).
std::atomic<int> sdpa_calls{0};

std::unique_ptr<at::ObserverContext> count_sdpa(const at::RecordFunction& fn) {
  if (std::string_view(fn.name()) == "aten::scaled_dot_product_attention") ++sdpa_calls;
  return nullptr;
}

// LoadOptions::keep_attention: the recompute takes attention from the forward
// instead of running it again, and the loss and LoRA gradients are the recompute's,
// with plain causal attention and with a padding mask.
TEST(Llama, KeptAttentionGivesTheRecomputesGradientsWithoutRunningItAgain) {
  const auto config = tiny_config();
  auto make = [&](bool keep) {
    LoadOptions o = plain();
    o.keep_attention = keep;
    LoraOptions lora;
    lora.r = 4;
    lora.dropout = 0.1;
    lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
    o.lora = lora;
    auto m = Llama::from_tensors(config, random_tensors(config, 14), o);
    set_lora_b(m, 3);
    m.set_training(true);
    m.set_activation_checkpointing(true);
    return m;
  };
  auto recomputed = make(false), kept = make(true);
  const auto ids = torch::randint(0, config.vocab_size, {2, 10}, torch::kInt64);
  auto padding = torch::ones({2, 10}, torch::kInt64);
  padding.slice(1, 7).select(0, 1).zero_();
  const auto handle = at::addGlobalCallback(at::RecordFunctionCallback(count_sdpa));
  for (const bool masked : {false, true}) {
    SCOPED_TRACE(masked ? "padding mask" : "causal");
    auto run = [&](Llama& m) {
      for (auto& p : m.trainable_parameters()) p.mutable_grad() = torch::Tensor();
      torch::manual_seed(2);
      sdpa_calls = 0;
      auto loss = m.next_token_loss(ids, masked ? padding : torch::Tensor()).mean();
      loss.backward();
      std::vector<torch::Tensor> out = {loss.detach()};
      for (auto& p : m.trainable_parameters()) out.push_back(p.grad());
      return std::pair{out, sdpa_calls.load()};
    };
    const auto [expected, expected_calls] = run(recomputed);
    const auto [got, calls] = run(kept);
    EXPECT_EQ(expected_calls, 2 * config.num_hidden_layers);  // forward and recompute
    EXPECT_EQ(calls, config.num_hidden_layers);               // forward only
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-6, 1e-7)) << i;
      EXPECT_GT(expected[i].abs().max().item<double>(), 0) << i;
    }
  }
  at::removeCallback(handle);
}

// trainer.loss_chunk_tokens and trainer.offload_activations change where the
// logits and the layer inputs live, not what is computed: the loss and LoRA
// gradients equal the plain path's (float32: to rounding; a bfloat16 stream: to
// bfloat16's, the chunked gradient being rounded once more), with and without a
// padding mask, and without gradients (evaluation).
TEST(Llama, ChunkedLossAndActivationOffloadGiveThePlainPathsLossAndGradients) {
  const auto config = tiny_config();
  for (const auto stream : {torch::kFloat32, torch::kBFloat16}) {
    const bool bf16 = stream == torch::kBFloat16;
    auto make = [&](int64_t chunk, bool offload) {
      LoadOptions o = plain();
      o.activation_dtype = stream;
      LoraOptions lora;
      lora.r = 4;
      lora.dropout = 0.1;
      lora.target_modules = {"q_proj", "v_proj", "down_proj"};
      o.lora = lora;
      auto m = Llama::from_tensors(config, random_tensors(config, 15), o);
      set_lora_b(m, 4);
      m.set_training(true);
      m.set_activation_checkpointing(true);
      m.set_loss_chunk(chunk);
      m.set_activation_offload(offload);
      return m;
    };
    const auto ids = torch::randint(0, config.vocab_size, {2, 11}, torch::kInt64);
    auto padding = torch::ones({2, 11}, torch::kInt64);
    padding.slice(1, 8).select(0, 1).zero_();
    auto plain_model = make(0, false);
    for (const auto& [chunk, offload] : {std::pair{int64_t{5}, false}, {int64_t{0}, true}, {int64_t{64}, true}}) {
      auto changed = make(chunk, offload);
      for (const bool masked : {false, true}) {
        SCOPED_TRACE(fmt::format("{} chunk {} offload {} {}", bf16 ? "bfloat16" : "float32", chunk, offload,
                                 masked ? "masked" : "causal"));
        auto run = [&](Llama& m) {
          for (auto& p : m.trainable_parameters()) p.mutable_grad() = torch::Tensor();
          torch::manual_seed(5);
          auto losses = m.next_token_loss(ids, masked ? padding : torch::Tensor());
          if (m.activation_offload()) EXPECT_EQ(m.activation_offload()->held(), 2u);  // one input a layer
          (losses * torch::linspace(0.5, 1.5, losses.numel()).view(losses.sizes())).sum().backward();
          if (m.activation_offload()) EXPECT_EQ(m.activation_offload()->held(), 0u);
          std::vector<torch::Tensor> out = {losses.detach()};
          for (auto& p : m.trainable_parameters()) out.push_back(p.grad());
          return out;
        };
        const auto expected = run(plain_model), got = run(changed);
        ASSERT_EQ(got.size(), expected.size());
        for (size_t i = 0; i < got.size(); ++i) {
          const double scale = expected[i].abs().max().item<double>(), tolerance = bf16 ? 2e-2 : 1e-5;
          EXPECT_GT(scale, 0) << i;
          EXPECT_LE((got[i] - expected[i]).abs().max().item<double>(), tolerance * scale) << i;
        }
        torch::NoGradGuard no_grad;
        auto evaluate = [&](Llama& m) {
          torch::manual_seed(6);
          return m.next_token_loss(ids, masked ? padding : torch::Tensor());
        };
        const auto want = evaluate(plain_model);
        EXPECT_LE((evaluate(changed) - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
      }
    }
  }
}

TEST(LoraLinear, InitIsPeftsKaimingUniformAndZeroB) {
  torch::Generator rng = at::detail::createCPUGenerator(9);
  LoraLinear layer(FrozenWeight::dense_weight(torch::zeros({16, 400})), torch::kFloat32, LoraSpec{8, 2.0, 0.0}, &rng);
  const float bound = 1.0f / std::sqrt(400.0f);
  EXPECT_LE(layer.lora_A().abs().max().item<float>(), bound);
  EXPECT_GT(layer.lora_A().abs().max().item<float>(), 0.9f * bound);
  EXPECT_EQ(layer.lora_B().abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(layer.lora_A().requires_grad() && layer.lora_B().requires_grad());
}

TEST(PeftAdapter, SeventyBShapeHas22282240TrainableParameters) {
  LlamaConfig c;  // Llama-2-70B
  c.vocab_size = 32000;
  c.hidden_size = 8192;
  c.intermediate_size = 28672;
  c.num_hidden_layers = 80;
  c.num_attention_heads = 64;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  const std::vector<std::string> qkv = {"q_proj", "k_proj", "v_proj"};
  EXPECT_EQ(c.lora_parameters(8, qkv), 22'282'240);
  LoraOptions lora;
  lora.r = 8;
  lora.target_modules = qkv;
  auto layout = adapter_layout(c, lora);
  ASSERT_EQ(layout.size(), 80u * 3 * 2);
  int64_t total = 0;
  for (const auto& [name, shape] : layout) total += shape[0] * shape[1];
  EXPECT_EQ(total, 22'282'240);
  EXPECT_EQ(layout[0].first, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(layout[0].second, (std::vector<int64_t>{8, 8192}));
  EXPECT_EQ(layout[1].first, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  EXPECT_EQ(layout[1].second, (std::vector<int64_t>{8192, 8}));
  EXPECT_EQ(layout[3].second, (std::vector<int64_t>{1024, 8}));  // k_proj's B: 8 KV heads x 128
  EXPECT_EQ(layout.back().first, "base_model.model.model.layers.79.self_attn.v_proj.lora_B.weight");
  // DoRA: a magnitude [out] after each module's B, 819,200 more parameters.
  lora.use_dora = true;
  layout = adapter_layout(c, lora);
  ASSERT_EQ(layout.size(), 80u * 3 * 3);
  EXPECT_EQ(layout[2].first, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");
  EXPECT_EQ(layout[5].second, (std::vector<int64_t>{1024}));
  int64_t with_dora = 0;
  for (const auto& [name, shape] : layout) with_dora += shape.size() == 1 ? shape[0] : shape[0] * shape[1];
  EXPECT_EQ(with_dora, c.lora_parameters(8, qkv, true));
  EXPECT_EQ(with_dora, 22'282'240 + 819'200);
}

TEST(PeftAdapter, SaveThenLoadGivesTheSameOutputs) {
  auto config = tiny_config();
  auto tensors = random_tensors(config, 6);
  LoadOptions options = plain();
  options.lora = LoraOptions{4, 8.0, 0.0, false, {"q_proj", "v_proj", "down_proj"}, 3};
  auto a = Llama::from_tensors(config, tensors, options);
  {
    torch::NoGradGuard g;
    for (auto& [name, t] : a.lora_tensors()) t.normal_(0, 0.2);
  }
  auto dir = std::filesystem::temp_directory_path() / ("herd-adapter-" + std::to_string(::getpid()));
  save_adapter(a, dir, "tiny");
  LoadOptions from_file = plain();
  from_file.lora = read_adapter_config(dir);
  EXPECT_EQ(from_file.lora->target_modules, (std::vector<std::string>{"q_proj", "v_proj", "down_proj"}));
  auto b = Llama::from_tensors(config, tensors, from_file);
  load_adapter_weights(b, dir);
  auto ids = torch::tensor({{1, 5, 9, 33}}, torch::kInt64);
  torch::NoGradGuard g;
  auto with_adapter = a.forward(ids);
  EXPECT_TRUE(torch::equal(with_adapter, b.forward(ids)));
  auto base = Llama::from_tensors(config, tensors, plain());
  EXPECT_GT((with_adapter - base.forward(ids)).abs().max().item<float>(), 1e-3);
  std::filesystem::remove_all(dir);
}

// The trainer's gradient clipping against torch::nn::utils::clip_grad_norm_: the same
// norm and gradients, clipped or not, a parameter without a gradient skipped.
TEST(ClipGradNorm, IsTorchsClipGradNorm) {
  torch::manual_seed(5);
  for (const double max_norm : {0.5, 1e3, std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(max_norm);
    std::vector<torch::Tensor> mine, theirs;
    for (const auto& shape : {std::vector<int64_t>{8, 40}, {40, 8}, {3}, {5, 5}}) {
      auto p = torch::randn(shape).requires_grad_(true);
      auto grad = torch::randn(shape);
      mine.push_back(p.detach().clone().requires_grad_(true));
      theirs.push_back(p.detach().clone().requires_grad_(true));
      if (shape.size() == 1) continue;  // no gradient
      mine.back().mutable_grad() = grad.clone();
      theirs.back().mutable_grad() = grad.clone();
    }
    const double norm = train::clip_grad_norm(mine, max_norm);
    const double expected = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
    EXPECT_NEAR(norm, expected, 1e-6 * expected);
    EXPECT_GT(norm, 10);  // 705 values of variance 1
    for (size_t i = 0; i < mine.size(); ++i) {
      if (!theirs[i].grad().defined()) {
        EXPECT_FALSE(mine[i].grad().defined());
        continue;
      }
      EXPECT_TRUE(torch::allclose(mine[i].grad(), theirs[i].grad(), 1e-6, 1e-7)) << i;
    }
  }
  std::vector<torch::Tensor> none = {torch::zeros({2}, torch::requires_grad())};
  EXPECT_EQ(train::clip_grad_norm(none, 1.0), 0.0);
}

// On the CPU the trainer's AdamW is torch::optim::AdamW, to the bit, and its state
// saves and loads as torch's does.
TEST(FusedAdamW, OnTheCpuIsTorchsAdamW) {
  torch::manual_seed(4);
  auto start = torch::randn({3, 50});
  auto a = start.clone().requires_grad_(true), b = start.clone().requires_grad_(true);
  auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW reference({a}, options);
  train::FusedAdamW fused({b}, options);
  for (int step = 0; step < 3; ++step) {
    auto grad = torch::randn({3, 50});
    a.mutable_grad() = grad.clone();
    b.mutable_grad() = grad.clone();
    reference.step();
    fused.step();
  }
  EXPECT_TRUE(torch::equal(a, b));
  std::stringstream saved;
  {
    torch::serialize::OutputArchive archive;
    fused.save(archive);
    archive.save_to(saved);
  }
  // A fresh torch AdamW that reads the fused one's state takes the same next step
  // (without the moments and step count it would not).
  auto c = b.detach().clone().requires_grad_(true);
  torch::optim::AdamW resumed({c}, options);
  torch::serialize::InputArchive archive;
  archive.load_from(saved);
  resumed.load(archive);
  auto grad = torch::randn({3, 50});
  b.mutable_grad() = grad.clone();
  c.mutable_grad() = grad.clone();
  fused.step();
  resumed.step();
  EXPECT_TRUE(torch::equal(b, c));
}

TEST(LlamaConfig, ReadsTheShapesOfPublishedModels) {
  // config.json keys as the Hugging Face repositories publish them.
  auto llama2_7b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "num_attention_heads": 32, "num_hidden_layers": 32, "rms_norm_eps": 1e-05, "vocab_size": 32000,
        "max_position_embeddings": 4096, "tie_word_embeddings": false, "rope_scaling": null})"),
      "llama-2-7b");
  EXPECT_EQ(llama2_7b.num_key_value_heads, 32);
  EXPECT_EQ(llama2_7b.head_dim, 128);
  EXPECT_EQ(llama2_7b.lora_parameters(8, {"q_proj", "v_proj"}), 4'194'304);  // peft's figure for 7B
  auto llama2_13b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
        "num_hidden_layers": 40, "num_key_value_heads": 40, "vocab_size": 32000})"),
      "llama-2-13b");
  EXPECT_EQ(llama2_13b.linear_shape("down_proj"), (std::pair<int64_t, int64_t>{5120, 13824}));
  auto llama2_70b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
        "num_hidden_layers": 80, "num_key_value_heads": 8, "vocab_size": 32000, "rms_norm_eps": 1e-05})"),
      "llama-2-70b");
  EXPECT_EQ(llama2_70b.linear_shape("k_proj"), (std::pair<int64_t, int64_t>{1024, 8192}));
  auto llama31_8b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_type": "llama3"}})"),
      "llama-3.1-8b");
  ASSERT_TRUE(llama31_8b.rope_scaling.has_value());
  EXPECT_EQ(llama31_8b.rope_scaling->type, "llama3");
  EXPECT_EQ(llama31_8b.bos_token_id, 128000);
  EXPECT_EQ(llama31_8b.lora_parameters(8, {"q_proj", "v_proj"}), 3'407'872);
  auto tinyllama = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
        "num_hidden_layers": 22, "num_key_value_heads": 4, "vocab_size": 32000, "rope_theta": 10000.0})"),
      "tinyllama");
  EXPECT_EQ(tinyllama.head_dim, 64);
  EXPECT_EQ(tinyllama.lora_parameters(8, {"q_proj", "v_proj"}), 1'126'400);
}

TEST(LlamaConfig, ReadsTheOtherFamiliesAsTheirRepositoriesPublishThem) {
  auto qwen25_72b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 8192,
        "intermediate_size": 29568, "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
        "vocab_size": 152064, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "sliding_window": 131072,
        "use_sliding_window": false, "max_window_layers": 70, "tie_word_embeddings": false,
        "bos_token_id": 151643, "eos_token_id": 151643, "max_position_embeddings": 32768})"),
      "qwen2.5-72b");
  EXPECT_EQ(qwen25_72b.family->name, "qwen2");
  EXPECT_TRUE(qwen25_72b.family->qkv_bias);
  EXPECT_EQ(qwen25_72b.sliding_window, 0);  // use_sliding_window: false
  EXPECT_EQ(qwen25_72b.linear_shape("k_proj"), (std::pair<int64_t, int64_t>{1024, 8192}));
  auto nemo = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 5120,
        "head_dim": 128, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 40,
        "num_key_value_heads": 8, "vocab_size": 131072, "rope_theta": 1000000.0, "sliding_window": null,
        "max_position_embeddings": 1024000})"),
      "mistral-nemo");
  EXPECT_EQ(nemo.family->name, "mistral");
  EXPECT_EQ(nemo.sliding_window, 0);
  EXPECT_EQ(nemo.linear_shape("q_proj"), (std::pair<int64_t, int64_t>{4096, 5120}));
  auto mistral_7b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "sliding_window": 4096})"),
      "mistral-7b-v0.1");
  EXPECT_EQ(mistral_7b.sliding_window, 4096);
  auto llama33_70b = LlamaConfig::from_json(
      nlohmann::json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
        "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
        "vocab_size": 128256, "eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})"),
      "llama-3.3-70b");
  EXPECT_EQ(llama33_70b.eos_token_id, 128001);
  EXPECT_EQ(llama33_70b.rope_theta, 500000.0);
  ASSERT_TRUE(llama33_70b.rope_scaling.has_value());
  EXPECT_EQ(llama33_70b.rope_scaling->type, "llama3");
}

TEST(LlamaConfig, BadKeysAreNamed) {
  auto error = [](const nlohmann::json& j) {
    try {
      LlamaConfig::from_json(j, "config.json");
    } catch (const ModelConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json ok = tiny_config().to_json();
  EXPECT_EQ(error(ok), "");
  auto j = ok;
  j.erase("hidden_size");
  EXPECT_EQ(error(j), "config.json: hidden_size: missing");
  j = ok;
  j["num_key_value_heads"] = 3;
  EXPECT_EQ(error(j), "config.json: num_key_value_heads: 3 does not divide num_attention_heads 4");
  j = ok;
  j["architectures"] = {"GemmaForCausalLM"};
  EXPECT_EQ(error(j),
            "config.json: architectures: 'GemmaForCausalLM' is not an architecture herd trains (LlamaForCausalLM, "
            "Qwen2ForCausalLM, MistralForCausalLM)");
  j = ok;
  j.erase("architectures");
  j["model_type"] = "gemma";
  EXPECT_EQ(error(j), "config.json: model_type: 'gemma' is not an architecture herd trains (LlamaForCausalLM, "
                      "Qwen2ForCausalLM, MistralForCausalLM)");
  j = ok;
  j["attention_bias"] = true;
  EXPECT_EQ(error(j), "config.json: attention_bias: true is not supported (Llama's checkpoints have no biases)");
  j = ok;
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  EXPECT_EQ(error(j), "config.json: use_sliding_window: true is not supported (Qwen2.5's checkpoints leave it false)");
  j = ok;
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = 0;
  EXPECT_EQ(error(j), "config.json: sliding_window: must be a positive integer, got 0");
  j = ok;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}};
  EXPECT_EQ(error(j), "config.json: rope_scaling.rope_type: 'yarn' is not supported (herd supports linear and llama3)");
  j = ok;
  j["vocab_size"] = -5;
  EXPECT_EQ(error(j), "config.json: vocab_size: must be a positive integer, got -5");
}

}  // namespace
}  // namespace herd::model
