// QLoRA training-step throughput of herd's Llama on one device, on a random model
// of a given shape: NF4 base weights, LoRA on q/k/v, the trainer's AdamW, activation
// recompute, micro-batches of --batch rows of --tokens random ids. --dense,
// --no-recompute, --eager, --autograd-sums, --torch-dropout, --keep-attention and
// --fp32-activations each change one thing, to see what it costs (the FLOPs are
// counted as for the default, so tokens/s and MFU compare directly).
// --profile FILE records one more step with the profiler (a Chrome trace;
// bench/kernel_time.py sums its GPU kernels).
//
//   herd_bench_train_step --shape 1b --tokens 2048 --batch 8        (tokens/s, MFU)
//   herd_bench_train_step --shape 70b-layer --tokens 1024 4096       (one 70B decoder
//       layer's forward+recompute+backward, from a two-layer and a one-layer model,
//       and the 80-layer step it projects)
//
// Model FLOPs per token: 6 x N, N the parameters of every GEMM (the decoder layers'
// linears and lm_head; not the embedding lookup): the forward, the recomputed
// forward and the input-gradient GEMMs, 2 x N each (the frozen base has no weight
// gradient). Attention's T x T products are not counted. MFU is that over
// --peak-tflops (default 989.4: H100/H200 SXM dense bf16); the ratio to a large
// bf16 GEMM measured in the same process is printed beside it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "worker/model/llama.h"
#include "worker/train/fused_adamw.h"

#ifdef HERD_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace {

using herd::model::Llama;
using herd::model::LlamaConfig;

struct Shape {
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab;
};

Shape named_shape(const std::string& name) {
  if (name == "1b") return {2048, 8192, 16, 32, 8, 32000};         // Llama-3.2-1B's body, Llama-2's vocabulary
  if (name == "70b-layer") return {8192, 28672, 2, 64, 8, 32000};  // Llama-2-70B's layer
  if (name == "tiny") return {128, 352, 2, 4, 2, 512};
  throw std::invalid_argument("--shape: 1b, 70b-layer or tiny");
}

void sync(torch::Device d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Variant {
  bool bf16 = true, quantize = true, recompute = true, fused = true, gradient_sums = true, philox_dropout = true,
       keep_attention = false;
};

Llama make_model(const Shape& s, torch::Device device, const Variant& v) {
  LlamaConfig c;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.hidden / s.heads;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  torch::manual_seed(1);
  // bfloat16 weights (a bf16 checkpoint): NF4 dequantizes straight into bf16.
  std::map<std::string, torch::Tensor> t;
  auto w = [&](int64_t o, int64_t i) { return (torch::randn({o, i}) * 0.02).to(torch::kBFloat16); };
  t["model.embed_tokens.weight"] = w(s.vocab, s.hidden);
  t["lm_head.weight"] = w(s.vocab, s.hidden);
  t["model.norm.weight"] = torch::ones({s.hidden});
  for (int64_t i = 0; i < s.layers; ++i) {
    for (const auto& m : herd::model::linear_modules()) {
      auto [o, in] = c.linear_shape(m);
      t[herd::model::module_path(i, m) + ".weight"] = w(o, in);
    }
    t[fmt::format("model.layers.{}.input_layernorm.weight", i)] = torch::ones({s.hidden});
    t[fmt::format("model.layers.{}.post_attention_layernorm.weight", i)] = torch::ones({s.hidden});
  }
  herd::model::LoadOptions o;
  o.quantize = v.quantize;
  o.double_quant = true;
  o.compute_dtype = torch::kBFloat16;
  o.activation_dtype = v.bf16 ? torch::kBFloat16 : torch::kFloat32;
  o.device = device;
  o.fused_kernels = v.fused;
  o.fused_gradient_sums = v.gradient_sums;
  if (!v.philox_dropout) o.lora_dropout = herd::model::LoraSpec::Dropout::kTorch;
  o.keep_attention = v.keep_attention;
  herd::model::LoraOptions lora;
  lora.r = 8;
  lora.lora_alpha = 32;
  lora.dropout = 0.05;
  lora.target_modules = {"q_proj", "k_proj", "v_proj"};
  o.lora = lora;
  Llama model = Llama::from_tensors(c, t, o);
  model.set_training(true);
  model.set_activation_checkpointing(v.recompute);
  return model;
}

int64_t gemm_params(const Llama& m) {
  const auto& c = m.config();
  int64_t n = c.vocab_size * c.hidden_size;  // lm_head
  for (const auto& mod : herd::model::linear_modules()) {
    auto [o, i] = c.linear_shape(mod);
    n += o * i * static_cast<int64_t>(m.layers().size());
  }
  return n;
}

// One optimizer step on the micro-batch `ids`, as the trainer takes it.
void train_step(Llama& model, torch::optim::Optimizer& opt, const torch::Tensor& ids) {
  opt.zero_grad();
  model.next_token_loss(ids).mean().backward();
  opt.step();
}

torch::Tensor random_ids(const Llama& model, int64_t batch, int64_t tokens) {
  return torch::randint(0, model.config().vocab_size, {batch, tokens},
                        torch::TensorOptions().dtype(torch::kInt64).device(model.device()));
}

// One step (after a warm-up step) recorded by the profiler, saved as a Chrome trace.
void profile_step(Llama& model, int64_t batch, int64_t tokens, const std::string& path) {
  namespace prof = torch::profiler::impl;
  auto params = model.trainable_parameters();
  herd::train::FusedAdamW opt(params, torch::optim::AdamWOptions(1e-4));
  auto ids = random_ids(model, batch, tokens);
  train_step(model, opt, ids);
  sync(model.device());
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (model.device().is_cuda()) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  train_step(model, opt, ids);
  sync(model.device());
  torch::autograd::profiler::disableProfiler()->save(path);
  std::printf("profile of one step: %s\n", path.c_str());
}

struct StepTimes {
  double step, forward, backward, optimizer;  // seconds, medians
};

// One optimizer step timed whole, and again in its parts (a synchronize between
// them); medians of `steps` after `warmup`.
StepTimes time_steps(Llama& model, int64_t batch, int64_t tokens, int warmup, int steps) {
  const auto device = model.device();
  auto params = model.trainable_parameters();
  herd::train::FusedAdamW opt(params, torch::optim::AdamWOptions(1e-4));
  auto ids = random_ids(model, batch, tokens);
  std::vector<double> whole, fwd, bwd, upd;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (const bool parts : {false, true}) {
    for (int i = 0; i < warmup + steps; ++i) {
      sync(device);
      const double t0 = now();
      opt.zero_grad();
      auto loss = model.next_token_loss(ids).mean();
      if (parts) sync(device);
      const double t1 = now();
      loss.backward();
      if (parts) sync(device);
      const double t2 = now();
      opt.step();
      sync(device);
      const double t3 = now();
      if (i < warmup) continue;
      if (!parts) {
        whole.push_back(t3 - t0);
      } else {
        fwd.push_back(t1 - t0);
        bwd.push_back(t2 - t1);
        upd.push_back(t3 - t2);
      }
    }
  }
  return {median(whole), median(fwd), median(bwd), median(upd)};
}

// TFLOP/s of a large bf16 GEMM on the device (the same process's ceiling).
double gemm_tflops(torch::Device device) {
  const int64_t n = device.is_cuda() ? 8192 : 1024;
  auto opts = torch::TensorOptions().dtype(device.is_cuda() ? torch::kBFloat16 : torch::kFloat32).device(device);
  auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  for (int i = 0; i < 3; ++i) torch::matmul(a, b);
  sync(device);
  const int reps = 10;
  const double t0 = now();
  for (int i = 0; i < reps; ++i) torch::matmul(a, b);
  sync(device);
  return 2.0 * n * n * n * reps / (now() - t0) / 1e12;
}

double peak_gib(torch::Device device) {
#ifdef HERD_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1 << 30);
  }
#endif
  (void)device;
  return 0;
}

void reset_peak(torch::Device device) {
#ifdef HERD_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"herd's QLoRA training step on one device: tokens/s and MFU"};
  std::string shape_name = "1b", device_name = "cuda";
  std::vector<int64_t> token_counts = {2048};
  int64_t batch = 1;
  int warmup = 2, steps = 5, projected_layers = 80;
  double peak = 989.4;
  bool fp32_activations = false, per_layer = false, dense = false, no_recompute = false, eager = false,
       autograd_sums = false, torch_dropout = false, keep_attention = false;
  std::string profile;
  app.add_option("--shape", shape_name, "1b | 70b-layer | tiny")->capture_default_str();
  app.add_option("--tokens", token_counts, "Tokens per row (one run each)")->capture_default_str();
  app.add_option("--batch", batch, "Rows per micro-batch")->capture_default_str();
  app.add_option("--device", device_name, "cuda | cuda:N | cpu")->capture_default_str();
  app.add_option("--warmup", warmup)->capture_default_str();
  app.add_option("--steps", steps, "Timed steps (the median is reported)")->capture_default_str();
  app.add_option("--peak-tflops", peak, "The device's dense bf16 peak")->capture_default_str();
  app.add_option("--project-layers", projected_layers, "70b-layer: the depth to project a step to")
      ->capture_default_str();
  app.add_flag("--per-layer", per_layer, "Time one decoder layer (on by default for 70b-layer)");
  app.add_flag("--fp32-activations", fp32_activations, "Keep the hidden stream in float32 (trainer.bf16: false)");
  app.add_flag("--dense", dense, "bf16 base weights instead of NF4 (what dequantizing costs)");
  app.add_flag("--no-recompute", no_recompute, "Keep every layer's activations (what recompute costs)");
  app.add_flag("--eager", eager, "Eager ops instead of the fused GPU kernels (what fusing saves)");
  app.add_flag("--autograd-sums", autograd_sums,
               "Fused kernels, but autograd's pairwise gradient sums (what summing in one buffer saves)");
  app.add_flag("--torch-dropout", torch_dropout,
               "torch's LoRA dropout, its masks kept, instead of herd's regenerated ones (what that saves)");
  app.add_flag("--keep-attention", keep_attention,
               "Keep each layer's attention for its recompute instead of running it again (what that saves)");
  app.add_option("--profile", profile, "Record one more step with the profiler into this Chrome trace");
  CLI11_PARSE(app, argc, argv);

  try {
    torch::Device device(device_name);
    if (device.is_cuda() && !device.has_index()) device = torch::Device(torch::kCUDA, 0);
    const Shape shape = named_shape(shape_name);
    per_layer = per_layer || shape_name == "70b-layer";
    const double t_build = now();
    const Variant variant{.bf16 = !fp32_activations,
                          .quantize = !dense,
                          .recompute = !no_recompute,
                          .fused = !eager,
                          .gradient_sums = !autograd_sums,
                          .philox_dropout = !torch_dropout,
                          .keep_attention = keep_attention};
    Llama model = make_model(shape, device, variant);
    sync(device);
    std::printf(
        "model: %s, %lld layers, hidden %lld, %.3fB GEMM parameters, built in %.1f s on %s (%s base, %s "
        "activations%s%s%s%s%s)\n",
        shape_name.c_str(), static_cast<long long>(shape.layers), static_cast<long long>(shape.hidden),
        static_cast<double>(gemm_params(model)) / 1e9, now() - t_build, device.str().c_str(), dense ? "bf16" : "NF4",
        fp32_activations ? "float32" : "bf16", no_recompute ? ", no recompute" : "", eager ? ", eager ops" : "",
        autograd_sums ? ", autograd's gradient sums" : "", torch_dropout ? ", torch's dropout" : "",
        keep_attention ? ", attention kept for the recompute" : "");
    const double ceiling = gemm_tflops(device);
    std::printf("GEMM ceiling measured here: %.4g TFLOP/s\n", ceiling);

    for (const int64_t tokens : token_counts) {
      if (!per_layer) {
        reset_peak(device);
        const StepTimes t = time_steps(model, batch, tokens, warmup, steps);
        const double step = t.step;
        const double tok_s = static_cast<double>(batch * tokens) / step;
        const double tflops = 6.0 * static_cast<double>(gemm_params(model)) * tok_s / 1e12;
        std::printf(
            "train %s  batch %lld x %lld tokens: step %.1f ms, %.0f tokens/s, %.4g TFLOP/s (6N), MFU %.1f%% of %.0f, "
            "%.1f%% of the measured GEMM; peak memory %.1f GiB\n",
            shape_name.c_str(), static_cast<long long>(batch), static_cast<long long>(tokens), step * 1e3, tok_s,
            tflops, 100 * tflops / peak, peak, 100 * tflops / ceiling, peak_gib(device));
        std::printf("  parts: forward %.1f ms, backward (recompute + input gradients) %.1f ms, AdamW %.1f ms\n",
                    t.forward * 1e3, t.backward * 1e3, t.optimizer * 1e3);
        if (!profile.empty()) profile_step(model, batch, tokens, profile);
        continue;
      }
      // Two layers, then one: the difference is one layer; the rest is the head.
      const double two = time_steps(model, batch, tokens, warmup, steps).step;
      auto dropped = std::move(model.layers().back());
      model.layers().pop_back();
      const double one = time_steps(model, batch, tokens, warmup, steps).step;
      model.layers().push_back(std::move(dropped));
      const double layer = two - one, head = one - layer;
      const double projected = head + static_cast<double>(projected_layers) * layer;
      const double tok = static_cast<double>(batch * tokens);
      std::printf(
          "%s  batch %lld x %lld tokens: one decoder layer fwd+recompute+bwd %.1f ms, embedding+head %.1f ms; "
          "%d-layer step %.2f s = %.0f tokens/s\n",
          shape_name.c_str(), static_cast<long long>(batch), static_cast<long long>(tokens), layer * 1e3, head * 1e3,
          projected_layers, projected, tok / projected);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "herd_bench_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
