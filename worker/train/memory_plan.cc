#include "worker/train/memory_plan.h"

#include <algorithm>
#include <cctype>
#include <functional>

#include <fmt/format.h>

namespace herd::train {

void set_lora(PlanInput& in, int64_t r, const std::vector<std::string>& modules, bool dora) {
  in.lora_parameters = in.shape.lora_parameters(r, modules, dora);
  in.dora_out_features = in.dora_largest_weight = 0;
  for (const auto& m : modules) {
    if (!dora) break;
    const auto [out, in_features] = in.shape.linear_shape(m);
    in.dora_out_features += out;
    in.dora_largest_weight = std::max(in.dora_largest_weight, out * in_features);
  }
}

std::vector<PlanItem> memory_plan(const PlanInput& in) {
  const auto& s = in.shape;
  const double L = static_cast<double>(s.num_hidden_layers), H = static_cast<double>(s.hidden_size),
               I = static_cast<double>(s.intermediate_size), V = static_cast<double>(s.vocab_size);
  const double kv = static_cast<double>(s.num_key_value_heads * (s.head_dim ? s.head_dim : s.hidden_size /
                                                                                            s.num_attention_heads));
  const double q = static_cast<double>(s.num_attention_heads * (s.head_dim ? s.head_dim : s.hidden_size /
                                                                                           s.num_attention_heads));
  const double per_layer_weights = H * q + 2 * H * kv + q * H + 3 * H * I;
  const double per_weight = !in.quantized ? static_cast<double>(in.compute_bytes)
                            : in.double_quant ? 0.5 + 1.0 / 64 + 4.0 / (64 * 256)
                                              : 0.5 + 4.0 / 64;
  const double layer_bytes = per_layer_weights * per_weight + 2 * H * 4;
  // The frozen embedding and lm_head are kept in the hidden stream's dtype when it is
  // bfloat16 (Llama::head_dtype), the final norm in float32.
  const double matrix_bytes = V * H * static_cast<double>(in.stream_bytes);
  const double head_bytes = matrix_bytes * (s.tie_word_embeddings ? 1 : 2) + H * 4;
  const double n = static_cast<double>(in.workers);
  const bool sharded = in.full_shard && in.workers > 1;
  const double share = in.full_shard ? 1.0 / n : 1.0;
  const double B = static_cast<double>(in.batch_size), T = static_cast<double>(in.tokens);
  const double c = static_cast<double>(in.compute_bytes), a = static_cast<double>(in.stream_bytes);
  const char* stream = in.stream_bytes == 2 ? "bfloat16" : "float32";

  std::vector<PlanItem> out;
  auto add = [&out](std::string what, double bytes) {
    out.emplace_back();
    out.back().what = std::move(what);
    out.back().bytes = bytes;
  };
  add(in.quantized ? (in.double_quant ? "base weights: NF4 codes and double-quantized absmax"
                                                 : "base weights: NF4 codes and float32 absmax")
                              : "base weights: dense, in the compute dtype",
                 L * layer_bytes * share);
  add(fmt::format("{} and final norm, {}", s.tie_word_embeddings ? "embedding (tied lm_head)" : "embedding, lm_head",
                  stream),
      head_bytes * share);
  add("gathered: 2 layers in flight and the lm_head buffer", sharded ? 2 * layer_bytes + matrix_bytes + H * 4 : 0.0);
  add(fmt::format("LoRA: {} parameters, gradients and AdamW moments (float32)", in.lora_parameters),
                 static_cast<double>(in.lora_parameters) * 16);
  // One layer's forward and backward: q/k/v/o, the MLP's three projections and
  // their gradients, in the compute dtype; two of the largest weights dequantized at
  // once (measured: integration.plan), each in the wider of the compute and the
  // stream dtype (a weight is dequantized in the compute dtype, then cast to the
  // stream's).
  const double dora_kept = B * T * static_cast<double>(in.dora_out_features) * 4 * 2;
  const double layer_work = B * T * (4 * H + 2 * kv + 3 * I) * c * 2 + 2 * H * I * std::max(c, a) + dora_kept;
  if (in.dora_largest_weight > 0) {
    add("DoRA: ||W + s B A|| of the largest adapted layer (float32 [out, in])",
        static_cast<double>(in.dora_largest_weight) * 4);
  }
  const double layer_input = B * T * H * a;
  if (in.checkpointing && in.offload_activations) {
    add(fmt::format("activations: 2 layers' inputs ({}; {:.2f} GiB in pinned host memory)", stream,
                    L * layer_input / (1024.0 * 1024 * 1024)),
        2 * layer_input);
    add("one layer recomputed and back-propagated", layer_work);
  } else if (in.checkpointing) {
    add(fmt::format("activations: each layer's input ({}, checkpointing)", stream), L * layer_input);
    add("one layer recomputed and back-propagated", layer_work);
  } else {
    add("activations: every layer's (no checkpointing)", L * layer_work);
  }
  const double rows = in.loss_chunk > 0 ? std::min(B * T, static_cast<double>(in.loss_chunk)) : B * T;
  const double logits = in.gpu ? 2 * rows * V * a : 3 * rows * V * 4;
  if (in.loss_chunk > 0) {
    add(fmt::format("loss in chunks of {}: a chunk's logits and gradient, the hidden state's", in.loss_chunk),
        logits + layer_input);
  } else if (in.gpu) {
    add(fmt::format("logits and their gradient ({}, the fused loss)", stream), logits);
  } else {
    add("logits, their softmax and gradient (float32)", logits);
  }
  if (in.gpu) add("CUDA context and allocator reserve", 1024.0 * 1024 * 1024);
  return out;
}

double plan_total(const PlanInput& input) {
  double total = 0;
  for (const auto& item : memory_plan(input)) total += item.bytes;
  return total;
}

Fit fit(const PlanInput& input, double capacity) {
  Fit f;
  f.input = input;
  auto turn_on = [&](bool possible, const char* key, const char* value, const std::function<void(PlanInput&)>& set) {
    if (plan_total(f.input) <= capacity || !possible) return;
    set(f.input);
    f.changes.emplace_back(key, value);
  };
  turn_on(input.loss_chunk == 0, "trainer.loss_chunk_tokens", "1024",
          [](PlanInput& in) { in.loss_chunk = 1024; });
  turn_on(input.stream_bytes == 4, "trainer.bf16", "true", [](PlanInput& in) { in.stream_bytes = 2; });
  turn_on(input.gpu && input.checkpointing && !input.offload_activations, "trainer.offload_activations", "true",
          [](PlanInput& in) { in.offload_activations = true; });
  f.fits = plan_total(f.input) <= capacity;
  return f;
}

namespace {

// A published shape: its name, the words its repository names hold, and its config.json.
struct Published {
  const char* name;
  std::vector<const char*> words;
  model::LlamaConfig config;
};

const std::vector<Published>& published_shapes() {
  static const std::vector<Published> shapes = [] {
    auto shape = [](const char* family, int64_t vocab, int64_t hidden, int64_t inter, int64_t layers, int64_t heads,
                    int64_t kv, int64_t context, double theta) {
      model::LlamaConfig c;
      for (const auto& f : model::families()) {
        if (f.name == family) c.family = &f;
      }
      c.max_position_embeddings = context;
      c.rope_theta = theta;
      c.rms_norm_eps = c.family->name == "qwen2" ? 1e-6 : 1e-5;
      c.vocab_size = vocab;
      c.hidden_size = hidden;
      c.intermediate_size = inter;
      c.num_hidden_layers = layers;
      c.num_attention_heads = heads;
      c.num_key_value_heads = kv;
      c.head_dim = hidden / heads;
      return c;
    };
    auto llama31 = [&](int64_t hidden, int64_t inter, int64_t layers, int64_t heads) {
      auto c = shape("llama", 128256, hidden, inter, layers, heads, 8, 131072, 500000.0);
      c.rope_scaling = model::RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
      return c;
    };
    auto nemo = shape("mistral", 131072, 5120, 14336, 40, 32, 8, 1024000, 1000000.0);
    nemo.head_dim = 128;
    return std::vector<Published>{
        {"Llama-2-70B", {"llama-2|llama2", "70b"}, shape("llama", 32000, 8192, 28672, 80, 64, 8, 4096, 10000.0)},
        {"Llama-2-13B", {"llama-2|llama2", "13b"}, shape("llama", 32000, 5120, 13824, 40, 40, 40, 4096, 10000.0)},
        {"Llama-2-7B", {"llama-2|llama2", "7b"}, shape("llama", 32000, 4096, 11008, 32, 32, 32, 4096, 10000.0)},
        {"Llama-3.1-70B", {"llama-3.1|llama3.1", "70b"}, llama31(8192, 28672, 80, 64)},
        {"Llama-3.3-70B", {"llama-3.3|llama3.3", "70b"}, llama31(8192, 28672, 80, 64)},
        {"Llama-3.1-8B", {"llama-3.1|llama3.1", "8b"}, llama31(4096, 14336, 32, 32)},
        {"Llama-3-70B", {"llama-3|llama3", "70b"}, shape("llama", 128256, 8192, 28672, 80, 64, 8, 8192, 500000.0)},
        {"Llama-3-8B", {"llama-3|llama3", "8b"}, shape("llama", 128256, 4096, 14336, 32, 32, 8, 8192, 500000.0)},
        {"Qwen2.5-72B", {"qwen2.5|qwen-2.5", "72b"}, shape("qwen2", 152064, 8192, 29568, 80, 64, 8, 32768, 1000000.0)},
        {"Mistral-Nemo-12B", {"mistral-nemo"}, nemo}};
  }();
  return shapes;
}

}  // namespace

std::optional<std::pair<std::string, model::LlamaConfig>> known_shape(const std::string& base_model) {
  std::string name = base_model;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  // A word matches when one of its "|"-separated spellings is in the name.
  auto holds = [&](std::string_view word) {
    for (size_t start = 0;;) {
      const size_t bar = std::min(word.find('|', start), word.size());
      if (name.find(word.substr(start, bar - start)) != std::string::npos) return true;
      if (bar == word.size()) return false;
      start = bar + 1;
    }
  };
  for (const auto& p : published_shapes()) {
    if (std::all_of(p.words.begin(), p.words.end(), holds)) {
      return std::pair{std::string(p.name), p.config};
    }
  }
  return std::nullopt;
}

std::string known_shape_names() {
  std::string out;
  for (const auto& p : published_shapes()) {
    std::string n = p.name;
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return std::tolower(ch); });
    out += (out.empty() ? "" : ", ") + n;
  }
  return out;
}

std::optional<double> parse_bytes(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string unit = text.substr(used);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char ch) { return std::tolower(ch); });
  const double gib = 1024.0 * 1024 * 1024;
  double scale = 0;
  if (unit == "gib" || unit == "g" || unit == "") scale = gib;
  if (unit == "gb") scale = 1e9;
  if (unit == "mib" || unit == "m") scale = 1024.0 * 1024;
  if (unit == "mb") scale = 1e6;
  if (unit == "tib" || unit == "t") scale = gib * 1024;
  if (scale == 0 || value <= 0) return std::nullopt;
  return value * scale;
}

}  // namespace herd::train
