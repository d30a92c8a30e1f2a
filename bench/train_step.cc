// QLoRA training-step throughput of herd's Llama on one device, through the
// trainer's own step (worker/train/step.h: micro-batch losses and backward, the sums
// over the ranks, gradient clipping, AdamW), on a random model of a given shape: NF4
// base weights, LoRA r 8 on q/k/v, activation recompute, micro-batches of --batch
// rows of --tokens random ids. --dense,
// --no-recompute, --eager, --autograd-sums, --torch-dropout, --keep-attention and
// --fp32-activations each change one thing, to see what it costs (the FLOPs are
// counted as for the default, so tokens/s and MFU compare directly).
// --profile FILE records one more step with the profiler (a Chrome trace;
// bench/kernel_time.py sums its GPU kernels).
//
// --config CONFIG instead trains the config's model on its data, as `herd train`
// does (a coordinator in this process streams the batches), and prints each step's
// loss and time as a JSON line: tests/integration/test_train.py checks that those
// are herd train's losses.
//
//   herd_bench_train_step --shape 1b --tokens 2048 --batch 8        (tokens/s, MFU)
//   herd_bench_train_step --shape 70b-layer --tokens 1024 4096       (one 70B decoder
//       layer's forward+recompute+backward, from a two-layer and a one-layer model,
//       and the 80-layer step it projects)
//
// FLOPs as herd counts them everywhere (worker/model/flops.h, docs/metrics.md):
// model FLOPs (GEMMs 4N, attention, LoRA; no recompute) for MFU, hardware FLOPs
// (plus the recompute of activation checkpointing) for HFU, both over
// --peak-tflops (default 989.4: H100/H200 SXM dense bf16); the model FLOP/s over a
// large bf16 GEMM measured in the same process is printed beside them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "client/client.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "host/coordinator_host.h"
#include "worker/comm/store.h"
#include "worker/model/llama.h"
#include "worker/train/step.h"

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
       keep_attention = false, dora = false;
};

// The config the benchmark's step runs under: the seed's LoRA (r 8, alpha 32,
// dropout 0.05 on q/k/v; DoRA's form of it with --dora), its optimizer and clipping,
// the variant's dtypes.
herd::Config bench_config(const Variant& v) {
  herd::Config c;
  c.lora.r = 8;
  c.lora.lora_alpha = 32;
  c.lora.lora_dropout = 0.05;
  c.lora.target_modules = {"q_proj", "k_proj", "v_proj"};
  c.lora.use_dora = v.dora;
  c.trainer.learning_rate = 1e-4;
  c.trainer.bf16 = v.bf16;
  c.trainer.gradient_checkpointing = v.recompute;
  c.quantization.enabled = v.quantize;
  c.quantization.compute_dtype = "bfloat16";
  return c;
}

// A one-rank replica of a random model of shape `s`, built as the trainer builds one.
void make_replica(herd::train::Replica& r, const herd::Config& config, const Shape& s, torch::Device device,
                  const Variant& v, int64_t layers) {
  LlamaConfig c;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = layers;
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
  for (int64_t i = 0; i < layers; ++i) {
    for (const auto& m : herd::model::linear_modules()) {
      auto [o, in] = c.linear_shape(m);
      t[herd::model::module_path(i, m) + ".weight"] = w(o, in);
    }
    t[fmt::format("model.layers.{}.input_layernorm.weight", i)] = torch::ones({s.hidden});
    t[fmt::format("model.layers.{}.post_attention_layernorm.weight", i)] = torch::ones({s.hidden});
  }
  auto o = herd::train::load_options(config, device);
  o.fused_kernels = v.fused;
  o.fused_gradient_sums = v.gradient_sums;
  if (!v.philox_dropout) o.lora_dropout = herd::model::LoraSpec::Dropout::kTorch;
  o.keep_attention = v.keep_attention;
  static herd::comm::InMemoryStore store;  // one rank: never used
  herd::train::build_replica(r, config, herd::comm::connect("local", store, {}), o,
                             [&](const herd::model::LoadOptions& options) { return Llama::from_tensors(c, t, options); });
}

// One step's micro-batch of `batch` rows of `tokens` random ids, every position counted.
herd::v1::MicroBatch random_batch(const Llama& model, int64_t batch, int64_t tokens) {
  herd::v1::MicroBatch b;
  auto ids = torch::randint(0, model.config().vocab_size, {batch * tokens}, torch::kInt32);
  b.mutable_token_ids()->Add(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + ids.numel());
  b.set_loss_mask(std::string(static_cast<size_t>(batch * tokens), '\1'));
  for (int64_t r = 0; r < batch; ++r) {
    b.add_sample_ids(static_cast<uint64_t>(r));
    b.add_lengths(static_cast<uint32_t>(tokens));
  }
  b.set_step(1);
  b.set_step_loss_tokens(static_cast<uint64_t>(batch * (tokens - 1)));
  return b;
}

void step(herd::train::Replica& r, const herd::Config& config, const std::vector<herd::v1::MicroBatch>& batches) {
  herd::train::train_step(r, config, batches, config.trainer.learning_rate, false);
}

// One step (after a warm-up step) recorded by the profiler, saved as a Chrome trace.
void profile_step(herd::train::Replica& r, const herd::Config& config, const std::vector<herd::v1::MicroBatch>& b,
                  const std::string& path) {
  namespace prof = torch::profiler::impl;
  const auto device = r.model->device();
  step(r, config, b);
  sync(device);
  const prof::ProfilerConfig profiler(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(profiler, activities);
  torch::autograd::profiler::enableProfiler(profiler, activities);
  step(r, config, b);
  sync(device);
  torch::autograd::profiler::disableProfiler()->save(path);
  std::printf("profile of one step: %s\n", path.c_str());
}

// The median time of the trainer's step over `steps` after `warmup`.
double time_steps(herd::train::Replica& r, const herd::Config& config, const std::vector<herd::v1::MicroBatch>& b,
                  int warmup, int steps) {
  const auto device = r.model->device();
  std::vector<double> times;
  for (int i = 0; i < warmup + steps; ++i) {
    sync(device);
    const double t0 = now();
    step(r, config, b);
    sync(device);
    if (i >= warmup) times.push_back(now() - t0);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// --config: the config's model on its data, the batches streamed by a coordinator
// in this process; one JSON line a step.
int train_config(const std::string& path, int steps) {
  const herd::Config config = herd::load_config(path);
  const auto base = herd::resolve_hub_path(config.base_model, herd::HubRepoType::Model, "base_model");
  const std::string token = herd::host::random_token();
  herd::host::CoordinatorHost hosted(config, {"127.0.0.1:0", token, 1, true});
  herd::client::SessionOptions session_options;
  session_options.client = hosted.client_options("127.0.0.1");
  session_options.job_id = config.model_name;
  herd::client::WorkerSession session(session_options);
  session.join();
  const auto gang = session.wait_for_gang(0);
  const torch::Device device(config.trainer.device == "cuda" ? "cuda:0" : "cpu");
  herd::train::Replica r;
  static herd::comm::InMemoryStore store;  // one rank: never used
  herd::train::build_replica(r, config, herd::comm::connect("local", store, {}),
                             herd::train::load_options(config, device),
                             [&](const herd::model::LoadOptions& o) { return Llama::load(base, o); });
  session.open_stream(1);
  const uint64_t last = std::min<uint64_t>(gang.total_steps, static_cast<uint64_t>(steps));
  for (uint64_t s = 1; s <= last; ++s) {
    const auto batches = session.next_step(s);
    sync(device);
    const double t0 = now();
    const auto o = herd::train::train_step(r, config, batches, herd::train::learning_rate(config, s, gang.total_steps),
                                           false);
    sync(device);
    const double seconds = now() - t0;
    session.report_step(s, o.loss, o.rank_tokens, herd::v1::StepTimings());
    std::printf("%s\n", nlohmann::json{{"step", s}, {"loss", o.loss}, {"grad_norm", o.grad_norm}, {"tokens", o.tokens},
                                       {"seconds", seconds}}
                            .dump()
                            .c_str());
  }
  session.close_stream();
  hosted.finish(0);
  return 0;
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

// The run's first line: the model, where it was built and the variant.
void print_model(const std::string& name, const Shape& shape, const herd::train::Replica& r, double build_s,
                 const torch::Device& device, const Variant& v) {
  std::printf(
      "model: %s, %lld layers, hidden %lld, %.3fB GEMM parameters, built in %.1f s on %s (%s base, %s "
      "activations%s%s%s%s%s%s)\n",
      name.c_str(), static_cast<long long>(shape.layers), static_cast<long long>(shape.hidden),
      r.flops.gemm_parameters() / 1e9, build_s, device.str().c_str(), v.quantize ? "NF4" : "bf16",
      v.bf16 ? "bf16" : "float32", v.recompute ? "" : ", no recompute", v.fused ? "" : ", eager ops",
      v.gradient_sums ? "" : ", autograd's gradient sums", v.philox_dropout ? "" : ", torch's dropout",
      v.keep_attention ? ", attention kept for the recompute" : "", v.dora ? ", DoRA" : "");
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
       autograd_sums = false, torch_dropout = false, keep_attention = false, dora = false;
  std::string profile, config_path;
  app.add_option("--config", config_path,
                 "Train this config's model on its data (as herd train does) for --steps steps: a JSON line a step");
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
  app.add_flag("--dora", dora, "DoRA adapters (lora.use_dora) instead of LoRA");
  app.add_flag("--keep-attention", keep_attention,
               "Keep each layer's attention for its recompute instead of running it again (what that saves)");
  app.add_option("--profile", profile, "Record one more step with the profiler into this Chrome trace");
  CLI11_PARSE(app, argc, argv);

  try {
    if (!config_path.empty()) return train_config(config_path, steps);
    torch::Device device(device_name);
    if (device.is_cuda() && !device.has_index()) device = torch::Device(torch::kCUDA, 0);
    if (device.is_cuda() && !torch::cuda::is_available()) {
      throw std::runtime_error("--device " + device_name + ": no CUDA GPU is visible here; use --device cpu");
    }
    const Shape shape = named_shape(shape_name);
    per_layer = per_layer || shape_name == "70b-layer";
    const double t_build = now();
    const Variant variant{.bf16 = !fp32_activations,
                          .quantize = !dense,
                          .recompute = !no_recompute,
                          .fused = !eager,
                          .gradient_sums = !autograd_sums,
                          .philox_dropout = !torch_dropout,
                          .keep_attention = keep_attention,
                          .dora = dora};
    const herd::Config config = bench_config(variant);
    auto replica = std::make_unique<herd::train::Replica>();
    make_replica(*replica, config, shape, device, variant, shape.layers);
    sync(device);
    print_model(shape_name, shape, *replica, now() - t_build, device, variant);
    const double ceiling = gemm_tflops(device);
    std::printf("GEMM ceiling measured here: %.4g TFLOP/s\n", ceiling);

    for (const int64_t tokens : token_counts) {
      const std::vector<herd::v1::MicroBatch> batches = {random_batch(*replica->model, batch, tokens)};
      if (!per_layer) {
        reset_peak(device);
        const double step_s = time_steps(*replica, config, batches, warmup, steps);
        const double tok_s = static_cast<double>(batch * tokens) / step_s;
        const herd::model::Flops f = replica->flops.rows(std::vector<int64_t>(static_cast<size_t>(batch), tokens));
        const double tflops = f.model / step_s / 1e12;
        std::printf(
            "train %s  batch %lld x %lld tokens: step %.1f ms, %.0f tokens/s, %.4g model TFLOP/s, MFU %.1f%% and HFU "
            "%.1f%% of %.0f, %.1f%% of the measured GEMM; peak memory %.1f GiB\n",
            shape_name.c_str(), static_cast<long long>(batch), static_cast<long long>(tokens), step_s * 1e3, tok_s,
            tflops, 100 * herd::model::mfu(f.model, step_s, peak * 1e12),
            100 * herd::model::mfu(f.hardware, step_s, peak * 1e12), peak, 100 * tflops / ceiling, peak_gib(device));
        if (!profile.empty()) profile_step(*replica, config, batches, profile);
        continue;
      }
      // The model's layers, then one fewer: the difference is one layer; the rest is the head.
      const double two = time_steps(*replica, config, batches, warmup, steps);
      replica = std::make_unique<herd::train::Replica>();
      make_replica(*replica, config, shape, device, variant, shape.layers - 1);
      const double one = time_steps(*replica, config, batches, warmup, steps);
      replica = std::make_unique<herd::train::Replica>();
      make_replica(*replica, config, shape, device, variant, shape.layers);
      const double layer = two - one, head = one - (shape.layers - 1) * layer;
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
