#include "worker/model/llama.h"

#include <cmath>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/safetensors.h"
#include "kernels/nf4.h"
#include "worker/model/chunked_loss.h"
#include "worker/model/frozen_matmul.h"
#include "worker/model/fused.h"
#include "worker/model/linear_group.h"
#include "worker/model/rng.h"
#include "worker/model/tensor_view.h"

namespace herd::model {

namespace fs = std::filesystem;
using nlohmann::json;

double LoraOptions::scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r)) : lora_alpha / static_cast<double>(r);
}

std::string module_path(int64_t layer, const std::string& module) {
  const bool attention = module == "q_proj" || module == "k_proj" || module == "v_proj" || module == "o_proj";
  return fmt::format("model.layers.{}.{}.{}", layer, attention ? "self_attn" : "mlp", module);
}

torch::ScalarType torch_dtype(DType d) {
  switch (d) {
    case DType::F32:
      return torch::kFloat32;
    case DType::F16:
      return torch::kFloat16;
    case DType::BF16:
      return torch::kBFloat16;
    case DType::U8:
      return torch::kUInt8;
    case DType::I8:
      return torch::kInt8;
    case DType::I32:
      return torch::kInt32;
    case DType::I64:
      return torch::kInt64;
  }
  throw SafetensorsError("unsupported dtype");
}

namespace {

// The mapping is read-only and outlives nothing: copy.
torch::Tensor to_tensor(const TensorView& v) { return view_tensor(v).clone(); }

}  // namespace

std::optional<FrozenWeight> read_prequantized(const SafetensorsCheckpoint& ckpt, const std::string& name,
                                              std::pair<int64_t, int64_t> shape) {
  const std::string state_name = name + ".quant_state.bitsandbytes__nf4";
  if (!ckpt.contains(state_name)) return std::nullopt;
  auto bad = [&](const std::string& what) {
    return SafetensorsError(fmt::format("pre-quantized tensor '{}': {}", name, what));
  };
  const TensorView& state = ckpt.tensor(state_name);
  json s = json::parse(std::string(reinterpret_cast<const char*>(state.data), state.nbytes), nullptr, false);
  if (s.is_discarded() || !s.is_object()) throw bad("quant_state is not a JSON object");
  if (s.value("quant_type", "") != "nf4") throw bad("quant_type must be nf4");
  if (s.value("blocksize", 0) != 64) throw bad("blocksize must be 64");
  if (!s.contains("shape") || s["shape"] != json::array({shape.first, shape.second})) {
    throw bad(fmt::format("shape {} does not match the config's [{}, {}]", s.value("shape", json()).dump(), shape.first,
                          shape.second));
  }
  const int64_t n = shape.first * shape.second;
  FrozenWeight f;
  const std::string dtype = s.value("dtype", "");
  if (dtype == "float32") {
    f.dtype = torch::kFloat32;
  } else if (dtype == "float16") {
    f.dtype = torch::kFloat16;
  } else if (dtype == "bfloat16") {
    f.dtype = torch::kBFloat16;
  } else {
    throw bad(fmt::format("quant_state dtype '{}' is not float32, float16 or bfloat16", dtype));
  }
  f.out_features = shape.first;
  f.in_features = shape.second;
  f.packed = to_tensor(ckpt.tensor(name)).reshape({-1});
  if (f.packed.scalar_type() != torch::kUInt8 || f.packed.numel() != (n + 1) / 2) {
    throw bad(fmt::format("packed weight must be {} uint8 bytes", (n + 1) / 2));
  }
  f.code_table = to_tensor(ckpt.tensor(name + ".quant_map")).to(torch::kFloat32);
  if (f.code_table.numel() != 16) throw bad("quant_map must have 16 values");
  auto absmax = to_tensor(ckpt.tensor(name + ".absmax"));
  const int64_t blocks = static_cast<int64_t>(kernels::nf4_blocks(static_cast<size_t>(n)));
  if (absmax.numel() != blocks) throw bad(fmt::format("absmax must have {} values", blocks));
  if (s.contains("nested_offset")) {
    if (absmax.scalar_type() != torch::kUInt8) throw bad("double-quantized absmax must be uint8");
    f.absmax_codes = absmax;
    f.nested_absmax = to_tensor(ckpt.tensor(name + ".nested_absmax")).to(torch::kFloat32);
    f.nested_map = to_tensor(ckpt.tensor(name + ".nested_quant_map")).to(torch::kFloat32);
    if (f.nested_absmax.numel() != static_cast<int64_t>(kernels::nested_blocks(static_cast<size_t>(blocks))) ||
        f.nested_map.numel() != 256) {
      throw bad("nested_absmax or nested_quant_map has the wrong size");
    }
    f.offset = s["nested_offset"].get<double>();
  } else {
    f.absmax = absmax.to(torch::kFloat32);
  }
  return f;
}

namespace {

// HF's LlamaRMSNorm: normalize in float32, then scale (float32 weights, as
// prepare_model_for_kbit_training keeps them), in the input's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps, bool fused) {
  if (fused) {
    if (auto y = fused_rms_norm(x, weight, eps); y.defined()) return y;
  }
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return (weight * h.to(x.scalar_type())).to(x.scalar_type());
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

// x [B, T, heads, D] rotated by position, returned as [B, heads, T, D].
torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool fused) {
  if (fused) {
    if (auto y = fused_rotary(x, cos, sin); y.defined()) return y.transpose(1, 2);
  }
  auto t = x.transpose(1, 2);
  return t * cos + rotate_half(t) * sin;
}

}  // namespace

Llama Llama::from_tensors(const LlamaConfig& config, const std::map<std::string, torch::Tensor>& tensors,
                          const LoadOptions& options) {
  Llama m;
  m.config_ = config;
  m.options_ = options;
  auto get = [&](const std::string& name) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw SafetensorsError(fmt::format("missing tensor '{}'", name));
    return it->second;
  };
  torch::Generator rng = at::detail::createCPUGenerator(options.lora ? options.lora->seed : 0);
  m.embed_tokens_ = get("model.embed_tokens.weight").to(m.head_dtype());
  m.layers_.reserve(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    m.add_layer(
        i, get, [](const std::string&, std::pair<int64_t, int64_t>) { return std::nullopt; }, &rng);
    if (options.on_layer) options.on_layer(i, m.layers_.back());
  }
  m.place_head(get);
  return m;
}

Llama Llama::load(const fs::path& dir, const LoadOptions& options) {
  Llama m;
  m.config_ = LlamaConfig::from_file(dir / "config.json");
  m.options_ = options;
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  auto get = [&](const std::string& name) { return to_tensor(ckpt.tensor(name)); };
  auto prequantized = [&](const std::string& name, std::pair<int64_t, int64_t> shape) {
    return read_prequantized(ckpt, name, shape);
  };
  torch::Generator rng = at::detail::createCPUGenerator(options.lora ? options.lora->seed : 0);
  m.embed_tokens_ = get("model.embed_tokens.weight").to(m.head_dtype());
  m.layers_.reserve(static_cast<size_t>(m.config_.num_hidden_layers));  // on_layer keeps pointers into them
  for (int64_t i = 0; i < m.config_.num_hidden_layers; ++i) {
    m.add_layer(i, get, prequantized, &rng);
    if (options.on_layer) options.on_layer(i, m.layers_.back());
  }
  m.place_head(get);
  const auto [vocab, hidden] = std::pair{m.embed_tokens_.size(0), m.embed_tokens_.size(1)};
  if (vocab != m.config_.vocab_size || hidden != m.config_.hidden_size) {
    throw ModelConfigError(fmt::format("{}: model.embed_tokens.weight is [{}, {}] but config.json says [{}, {}]",
                                       dir.string(), vocab, hidden, m.config_.vocab_size, m.config_.hidden_size));
  }
  return m;
}

void Llama::place_head(const std::function<torch::Tensor(const std::string&)>& get) {
  const auto device = options_.device;
  embed_tokens_ = embed_tokens_.to(device);
  norm_ = get("model.norm.weight").to(device, torch::kFloat32);
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : get("lm_head.weight").to(device, head_dtype());
}

torch::ScalarType Llama::head_dtype() const {
  // As prepare_model_for_kbit_training does, everything not quantized is float32;
  // but with a bfloat16 hidden stream the frozen embedding and lm_head are only ever
  // used in bfloat16 (the lookup and the logits are cast to it), so they are kept so:
  // the same numbers in half the memory.
  return options_.activation_dtype == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat32;
}

void Llama::add_layer(int64_t index, const std::function<torch::Tensor(const std::string&)>& get,
                      const PrequantizedLookup& prequantized, torch::Generator* rng) {
  DecoderLayer layer;
  const std::string prefix = fmt::format("model.layers.{}.", index);
  layer.input_layernorm = get(prefix + "input_layernorm.weight").to(options_.device, torch::kFloat32);
  layer.post_attention_layernorm = get(prefix + "post_attention_layernorm.weight").to(options_.device, torch::kFloat32);
  for (const auto& module : linear_modules()) {
    const std::string name = module_path(index, module) + ".weight";
    const auto shape = config_.linear_shape(module);
    std::optional<FrozenWeight> weight = prequantized(name, shape);
    if (!weight) {
      torch::Tensor w = get(name);  // one tensor at a time: quantized, then freed
      if (w.size(0) != shape.first || w.size(1) != shape.second) {
        throw ModelConfigError(fmt::format("{} is [{}, {}] but config.json implies [{}, {}]", name, w.size(0),
                                           w.size(1), shape.first, shape.second));
      }
      weight = options_.quantize ? FrozenWeight::quantize(w, options_.double_quant)
                                 : FrozenWeight::dense_weight(w.to(options_.compute_dtype));
    } else if (!options_.quantize) {
      weight = FrozenWeight::dense_weight(weight->materialize(options_.compute_dtype));
    }
    std::optional<LoraSpec> spec;
    const auto& targets = options_.lora ? options_.lora->target_modules : std::vector<std::string>{};
    if (std::find(targets.begin(), targets.end(), module) != targets.end()) {
      const auto& lora = *options_.lora;
      spec = LoraSpec{.r = lora.r,
                      .scaling = lora.scaling(),
                      .dropout = lora.dropout,
                      .in_input_dtype = options_.fused_kernels,
                      .dropout_kind = options_.lora_dropout,
                      .dora = lora.use_dora};
    }
    auto linear = std::make_unique<LoraLinear>(std::move(*weight), options_.compute_dtype, spec, rng);
    linear->to(options_.device);  // initialized on the CPU: the same adapter on any device
    layer.linear[module] = std::move(linear);
  }
  if (config_.family->qkv_bias) {
    for (const char* module : {"q_proj", "k_proj", "v_proj"}) {
      const std::string name = module_path(index, module) + ".bias";
      torch::Tensor b = get(name);
      if (b.dim() != 1 || b.size(0) != config_.linear_shape(module).first) {
        throw ModelConfigError(fmt::format("{} has shape {} but config.json implies [{}]", name,
                                           fmt::join(b.sizes(), ", "), config_.linear_shape(module).first));
      }
      layer.bias[module] = b.to(options_.device, options_.compute_dtype);
    }
  }
  layers_.push_back(std::move(layer));
}

std::vector<torch::Tensor> Llama::linears(const DecoderLayer& layer, const std::vector<const char*>& names,
                                          const torch::Tensor& x) const {
  std::vector<const LoraLinear*> group;
  for (const char* name : names) group.push_back(layer.linear.at(name).get());
  if (options_.fused_kernels && options_.fused_gradient_sums && (x.is_cuda() || options_.fused_on_cpu)) {
    if (auto ys = linear_group(group, x, training_); !ys.empty()) return ys;
  }
  std::vector<torch::Tensor> ys;
  for (const LoraLinear* l : group) ys.push_back(l->forward(x, training_));
  return ys;
}

// What keep_attention keeps of a layer's attention: its output and the graph that
// made it from q, k and v (leaves), whose backward holds what SDPA's backward needs.
struct AttentionStash {
  torch::Tensor out, q, k, v;
  bool replay = false;  // filled: the recompute takes it
};

namespace {

// The recompute's attention: the kept output, and in backward the kept graph's
// gradients of q, k and v, handed to the recomputed q, k and v.
struct KeptAttention : public torch::autograd::Function<KeptAttention> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor&, const torch::Tensor&,
                               const torch::Tensor&, AttentionStash* stash) {
    ctx->saved_data["stash"] = reinterpret_cast<int64_t>(stash);  // lives until the layer's backward is done
    return stash->out.detach();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto* stash = reinterpret_cast<AttentionStash*>(ctx->saved_data["stash"].toInt());
    auto g = torch::autograd::grad({stash->out}, {stash->q, stash->k, stash->v}, {grad[0]});
    return {g[0], g[1], g[2], torch::Tensor()};
  }
};

}  // namespace

namespace {

// Qwen2's q, k and v biases, added to the projections' outputs in their dtype.
void add_qkv_bias(const DecoderLayer& layer, std::vector<torch::Tensor>& qkv) {
  const char* names[] = {"q_proj", "k_proj", "v_proj"};
  for (size_t i = 0; i < 3; ++i) qkv[i] = qkv[i] + layer.bias.at(names[i]).to(qkv[i].scalar_type());
}

// A sliding window of W: the last `queries` of `keys` positions each see themselves
// and the W - 1 before; a [queries, keys] mask, true = may attend.
torch::Tensor window_mask(int64_t queries, int64_t keys, int64_t W, torch::Device device) {
  const auto options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto i = torch::arange(keys - queries, keys, options).view({-1, 1});
  auto j = torch::arange(keys, options).view({1, -1});
  return (j <= i) & (j > i - W);
}

}  // namespace

torch::Tensor Llama::attention(const DecoderLayer& layer, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& mask, AttentionStash* stash,
                               KVCache* cache, size_t cached) const {
  const int64_t B = x.size(0), T = x.size(1), H = config_.num_attention_heads, KV = config_.num_key_value_heads,
                D = config_.head_dim;
  const bool fused = options_.fused_kernels;
  auto qkv = linears(layer, {"q_proj", "k_proj", "v_proj"}, x);
  if (!layer.bias.empty()) add_qkv_bias(layer, qkv);
  auto q = rotary(qkv[0].view({B, T, H, D}), cos, sin, fused);
  auto k = rotary(qkv[1].view({B, T, KV, D}), cos, sin, fused);
  auto v = qkv[2].view({B, T, KV, D}).transpose(1, 2);
  int64_t past = 0;  // cached positions before these
  if (cache != nullptr) {
    auto& ck = cache->k[cached];
    auto& cv = cache->v[cached];
    past = ck.defined() ? ck.size(2) : 0;
    ck = past > 0 ? torch::cat({ck, k}, 2) : k.contiguous();
    cv = past > 0 ? torch::cat({cv, v}, 2) : v.contiguous();
    k = ck;
    v = cv;
  }
  // Grouped-query attention: each KV head serves H / KV query heads. On a GPU with
  // plain causal attention SDPA does that itself (its kernels read the shared
  // heads); otherwise the heads are copied.
  //
  // A packed batch's `mask` is its segment ids (int64 [B, T] in host memory, 0 =
  // padding): each segment is attended alone with causal attention, so a row costs
  // the sum of its samples' squared lengths, not its own, and padding gives zeros.
  const bool segmented = mask.defined() && mask.scalar_type() == torch::kLong;
  const bool sdpa_gqa = fused && x.is_cuda() && (!mask.defined() || segmented) && past == 0;
  const int64_t W = config_.sliding_window;  // Mistral's; 0: none
  auto window = [&](int64_t queries, int64_t keys) { return window_mask(queries, keys, W, x.device()); };
  auto causal = [&](const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value) {
    if (W > 0 && key.size(2) > W) {
      return at::scaled_dot_product_attention(query, key, value, window(query.size(2), key.size(2)), 0.0, false,
                                              std::nullopt, /*enable_gqa=*/sdpa_gqa && KV != H);
    }
    return at::scaled_dot_product_attention(query, key, value, {}, 0.0, /*is_causal=*/true, std::nullopt,
                                            /*enable_gqa=*/sdpa_gqa && KV != H);
  };
  auto sdpa = [&](const torch::Tensor& query, torch::Tensor key, torch::Tensor value) {
    if (KV != H && !sdpa_gqa) {
      key = key.repeat_interleave(H / KV, 1);
      value = value.repeat_interleave(H / KV, 1);
    }
    if (past > 0) {  // T new queries after `past` cached keys: query i sees keys 0..past+i
      if (W > 0 && past + T > W) return at::scaled_dot_product_attention(query, key, value, window(T, past + T));
      if (T == 1) return at::scaled_dot_product_attention(query, key, value);
      auto sees = torch::ones({T, past + T}, torch::TensorOptions().dtype(torch::kBool).device(query.device()));
      return at::scaled_dot_product_attention(query, key, value, sees.tril(past));
    }
    if (!segmented) {
      return mask.defined() ? at::scaled_dot_product_attention(query, key, value, mask) : causal(query, key, value);
    }
    const int64_t* seg = mask.data_ptr<int64_t>();
    std::vector<torch::Tensor> rows;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<torch::Tensor> parts;
      for (int64_t t = 0, end = 0; t < T; t = end) {
        for (end = t + 1; end < T && seg[b * T + end] == seg[b * T + t];) ++end;
        auto part = [&](const torch::Tensor& m) { return m.slice(0, b, b + 1).slice(2, t, end); };
        parts.push_back(seg[b * T + t] == 0 ? torch::zeros_like(part(query))
                                            : causal(part(query), part(key), part(value)));
      }
      rows.push_back(parts.size() == 1 ? parts[0] : torch::cat(parts, 2));
    }
    return rows.size() == 1 ? rows[0] : torch::cat(rows, 0);
  };
  torch::Tensor out;
  if (stash == nullptr) {
    out = sdpa(q, k, v);
  } else if (stash->replay) {
    out = KeptAttention::apply(q, k, v, stash);
  } else {  // the first forward, without gradients: attention's alone, kept
    torch::AutoGradMode enable(true);
    stash->q = q.detach().requires_grad_(true);
    stash->k = k.detach().requires_grad_(true);
    stash->v = v.detach().requires_grad_(true);
    stash->out = sdpa(stash->q, stash->k, stash->v);
    out = stash->out.detach();
  }
  out = out.transpose(1, 2).reshape({B, T, H * D});
  return linears(layer, {"o_proj"}, out)[0];
}

namespace {
// {x to add back after the block, rms_norm(x)}: on a GPU with `sums` one node whose
// backward adds the residual's gradient into the norm's; else x itself.
std::pair<torch::Tensor, torch::Tensor> pre_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                                                 bool fused, bool sums) {
  if (sums) {
    if (auto both = fused_rms_norm_residual(x, weight, eps); !both.empty()) return {both[0], both[1]};
  }
  return {x, rms_norm(x, weight, eps, fused)};
}
}  // namespace

torch::Tensor Llama::decoder_layer(const DecoderLayer& layer, const torch::Tensor& hidden, const torch::Tensor& cos,
                                   const torch::Tensor& sin, const torch::Tensor& mask, AttentionStash* stash,
                                   KVCache* cache, size_t cached) const {
  const bool fused = options_.fused_kernels;
  const double eps = config_.rms_norm_eps;
  const bool sums = fused && options_.fused_gradient_sums;
  const auto [residual, x] = pre_norm(hidden, layer.input_layernorm, eps, fused, sums);
  const auto h = residual + attention(layer, x, cos, sin, mask, stash, cache, cached);
  const auto [residual2, x2] = pre_norm(h, layer.post_attention_layernorm, eps, fused, sums);
  const auto gate_up = linears(layer, {"gate_proj", "up_proj"}, x2);
  auto act = fused ? fused_silu_mul(gate_up[0], gate_up[1]) : torch::Tensor();
  if (!act.defined()) act = torch::silu(gate_up[0]) * gate_up[1];
  return residual2 + linears(layer, {"down_proj"}, act)[0];
}

namespace {
// A checkpointed layer takes defined tensors only: an empty mask stands for none
// (plain causal attention).
torch::Tensor causal_if_empty(const torch::Tensor& mask) { return mask.numel() > 0 ? mask : torch::Tensor(); }
}  // namespace

// Activation checkpointing: forward keeps only the layer's input; backward runs the
// layer again (with the same dropout draws) and back-propagates through it, as
// torch.utils.checkpoint's reentrant variant does. LoRA gradients accumulate into
// the parameters from the inner backward.
torch::Tensor Llama::CheckpointedLayer::forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                                                const Llama* model, int64_t layer, const torch::Tensor& cos,
                                                const torch::Tensor& sin, const torch::Tensor& mask) {
  ctx->saved_data["model"] = reinterpret_cast<int64_t>(model);  // outlives the graph
  ctx->saved_data["layer"] = layer;
  ctx->saved_data["rng"] = rng_state(model->device());
  ctx->saved_data["cos"] = cos;
  ctx->saved_data["sin"] = sin;
  ctx->saved_data["mask"] = mask;
  if (model->offload_) {
    model->offload_->save(layer, hidden);
  } else {
    ctx->save_for_backward({hidden});
  }
  torch::NoGradGuard no_grad;
  const auto& block = model->layers_[static_cast<size_t>(layer)];
  if (!model->options_.keep_attention) return model->decoder_layer(block, hidden, cos, sin, causal_if_empty(mask));
  AttentionStash stash;
  auto out = model->decoder_layer(block, hidden, cos, sin, causal_if_empty(mask), &stash);
  ctx->saved_data["attention"] = std::vector<torch::Tensor>{stash.out, stash.q, stash.k, stash.v};
  return out;
}

torch::autograd::variable_list Llama::CheckpointedLayer::backward(torch::autograd::AutogradContext* ctx,
                                                                  torch::autograd::variable_list grad) {
  const auto* model = reinterpret_cast<const Llama*>(ctx->saved_data["model"].toInt());
  const int64_t layer = ctx->saved_data["layer"].toInt();
  if (model->source_) model->source_->acquire(layer, /*backward=*/true);
  auto hidden = (model->offload_ ? model->offload_->load(layer) : ctx->get_saved_variables()[0])
                    .detach()
                    .requires_grad_(true);
  const auto device = model->device();
  const auto after = rng_state(device);
  set_rng_state(ctx->saved_data["rng"].toTensor(), device);
  const torch::Tensor mask = causal_if_empty(ctx->saved_data["mask"].toTensor());
  std::optional<AttentionStash> kept;
  if (auto it = ctx->saved_data.find("attention"); it != ctx->saved_data.end()) {
    const auto t = it->second.toTensorVector();
    kept = AttentionStash{t[0], t[1], t[2], t[3], /*replay=*/true};
    ctx->saved_data.erase(it);  // freed with this layer's backward, not the step's
  }
  torch::Tensor out;
  {
    torch::AutoGradMode enable(true);
    out = model->decoder_layer(model->layers_[static_cast<size_t>(layer)], hidden, ctx->saved_data["cos"].toTensor(),
                               ctx->saved_data["sin"].toTensor(), mask, kept ? &*kept : nullptr);
  }
  set_rng_state(after, device);
  torch::autograd::backward({out}, {grad[0]});
  if (model->source_) {
    model->source_->release(layer);
    model->source_->backward_done(layer);
  }
  return {hidden.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
}

void Llama::set_activation_offload(bool on) {
  offload_ = on ? std::make_shared<ActivationOffload>() : nullptr;
}

torch::Tensor Llama::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                             const torch::Tensor& segment_ids) const {
  return stream_logits(input_ids, attention_mask, segment_ids).to(torch::kFloat32);
}

torch::Tensor Llama::next_token_loss(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const torch::Tensor& segment_ids) const {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  auto ids = input_ids.to(device(), torch::kInt64);
  if (loss_chunk_ > 0 && T > 1) {
    auto h = final_hidden(input_ids, attention_mask, segment_ids);
    // Every position at once; the last one's target is a placeholder, dropped.
    auto targets = torch::cat({ids.slice(1, 1), torch::zeros({B, 1}, ids.options())}, 1).reshape({-1});
    if (source_) source_->acquire_lm_head();
    auto loss = chunked_cross_entropy(h.view({B * T, -1}), lm_head_.to(options_.activation_dtype), targets,
                                      loss_chunk_, options_.fused_kernels);
    if (source_) source_->release_lm_head();
    return loss.view({B, T}).slice(1, 0, T - 1);
  }
  auto logits = stream_logits(input_ids, attention_mask, segment_ids);
  const int64_t V = logits.size(2);
  if (options_.fused_kernels && T > 1) {
    auto targets = torch::cat({ids.slice(1, 1), torch::zeros({B, 1}, ids.options())}, 1).reshape({-1});
    if (auto loss = fused_cross_entropy(logits.view({B * T, V}), targets); loss.defined()) {
      return loss.view({B, T}).slice(1, 0, T - 1);
    }
  }
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32).slice(1, 0, T - 1).reshape({-1, V}),
                                              ids.slice(1, 1).reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
      .view({B, T - 1});
}

torch::Tensor Llama::stream_logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids) const {
  auto h = final_hidden(input_ids, attention_mask, segment_ids);
  if (source_) source_->acquire_lm_head();
  // The graph keeps lm_head for backward.
  auto logits = frozen_matmul(h, lm_head_.to(options_.activation_dtype));
  if (source_) source_->release_lm_head();
  return logits;
}

void Llama::check_token_ids(std::span<const int32_t> ids) const {
  for (const int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      throw std::invalid_argument(
          fmt::format("token id {} is outside the vocabulary (0..{})", id, config_.vocab_size - 1));
    }
  }
}

torch::Tensor Llama::final_hidden(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                  const torch::Tensor& segment_ids, KVCache* cache) const {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, tokens]");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const auto device = options_.device;
  const auto act = options_.activation_dtype;
  if (source_) source_->acquire_embedding();
  auto h = embed_tokens_.index_select(0, input_ids.reshape({-1}).to(device)).view({B, T, -1}).to(act);
  if (source_) source_->release_embedding();

  // Rotary embeddings computed in float32, then in the hidden stream's dtype, as HF
  // does (positions 0..T-1: with right padding, real tokens keep their positions).
  const int64_t D = config_.head_dim;
  auto inv_freq = 1.0 / torch::pow(config_.rope_theta,
                                   torch::arange(0, D, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(D));
  if (config_.rope_scaling && config_.rope_scaling->type == "linear") {
    inv_freq = inv_freq / config_.rope_scaling->factor;
  } else if (config_.rope_scaling && config_.rope_scaling->type == "llama3") {
    const auto& s = *config_.rope_scaling;
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    auto wavelen = 2 * M_PI / inv_freq;
    auto scaled = torch::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
    auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
    inv_freq = torch::where(medium, smoothed, scaled);
  }
  const int64_t first = cache ? cache->length : 0;  // a cache's positions come first
  auto positions = torch::arange(first, first + T, torch::kInt64).to(torch::kFloat32);
  auto freqs = torch::outer(positions, inv_freq);
  auto emb = torch::cat({freqs, freqs}, -1).to(device);
  auto cos = emb.cos().to(act), sin = emb.sin().to(act);  // [T, D]: row t is position t

  // [B, 1, T, T], true = may attend; packed: the segment ids, int64 [B, T] on the
  // host (attention() attends each segment alone); none: plain causal attention.
  torch::Tensor mask;
  auto causal = [&] {
    const int64_t W = config_.sliding_window;  // Mistral's; 0: none
    if (W > 0 && W < T) return window_mask(T, T, W, device);
    return torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(device)).tril();
  };
  if (segment_ids.defined()) {
    TORCH_CHECK(segment_ids.sizes() == input_ids.sizes(), "segment_ids must have the shape of input_ids");
    auto seg = segment_ids.to(torch::kInt64).cpu().contiguous();
    auto pos = torch::empty_like(seg);
    const int64_t* s = seg.data_ptr<int64_t>();
    int64_t* p = pos.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = b * T + t;
        p[i] = (t > 0 && s[i] == s[i - 1]) ? p[i - 1] + 1 : 0;  // restarts at each conversation
      }
    }
    pos = pos.to(device);
    cos = cos.index_select(0, pos.view({-1})).view({B, 1, T, -1});
    sin = sin.index_select(0, pos.view({-1})).view({B, 1, T, -1});
    mask = seg;
  } else if (attention_mask.defined()) {
    auto keys = attention_mask.to(device).to(torch::kBool).view({B, 1, 1, T});
    mask = causal().view({1, 1, T, T}) & keys;
  }
  const bool recompute = training_ && activation_checkpointing_ && torch::GradMode::is_enabled();
  // A checkpointed layer joins the graph only when its input requires grad (the
  // embeddings are frozen): as transformers' enable_input_require_grads does.
  if (recompute) h = h.detach().requires_grad_(true);
  // Without recomputation, backward needs every layer's weights: a source keeps
  // them until the step is over.
  const bool release = recompute || !torch::GradMode::is_enabled();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    if (source_) source_->acquire(index, /*backward=*/false);
    h = recompute ? CheckpointedLayer::apply(h, this, index, cos, sin, mask.defined() ? mask : torch::empty({0}))
                  : decoder_layer(layers_[i], h, cos, sin, mask, nullptr, cache, i);
    if (source_ && release) source_->release(index);
  }
  if (source_) source_->acquire_lm_head();  // the final norm comes with it
  // A copy of the norm's weight (hidden floats) for the graph, which would otherwise
  // keep the whole gathered lm_head buffer until the norm's backward.
  return rms_norm(h, source_ ? norm_.clone() : norm_, config_.rms_norm_eps, options_.fused_kernels);
}

torch::Tensor Llama::decode(const torch::Tensor& input_ids, KVCache& cache) const {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.size(1) > 0, "decode: input_ids must be [batch, tokens > 0]");
  torch::NoGradGuard no_grad;
  cache.k.resize(layers_.size());
  cache.v.resize(layers_.size());
  auto h = final_hidden(input_ids, {}, {}, &cache);
  cache.length += input_ids.size(1);
  if (source_) source_->acquire_lm_head();
  auto logits = torch::matmul(h.select(1, h.size(1) - 1), lm_head_.to(options_.activation_dtype).t());
  if (source_) source_->release_lm_head();
  return logits.to(torch::kFloat32);
}

std::pair<double, int64_t> Llama::sequence_loss(const std::vector<int32_t>& ids) const {
  if (ids.size() < 2) return {0.0, 0};
  auto input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).view({1, -1}).to(device());
  auto logits = forward(input).squeeze(0);
  auto targets = input.squeeze(0).slice(0, 1);
  auto loss =
      torch::nn::functional::cross_entropy(logits.slice(0, 0, logits.size(0) - 1), targets,
                                           torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  return {loss.item<double>(), targets.size(0)};
}

std::vector<std::pair<std::string, torch::Tensor>> Llama::lora_tensors() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    for (const auto& module : linear_modules()) {
      const std::string base = "base_model.model." + module_path(static_cast<int64_t>(i), module);
      for (auto& [name, t] : layers_[i].linear.at(module)->adapter_tensors()) out.emplace_back(base + "." + name, *t);
    }
  }
  return out;
}

std::vector<torch::Tensor> Llama::trainable_parameters() {
  std::vector<torch::Tensor> out;
  for (auto& [name, t] : lora_tensors()) out.push_back(t);
  return out;
}

}  // namespace herd::model
