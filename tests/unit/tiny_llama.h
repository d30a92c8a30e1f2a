// A tiny random Llama for unit tests: its shape and HF-named float32 tensors.
#pragma once

#include <map>
#include <string>

#include <torch/torch.h>

#include "worker/model/llama.h"

namespace herd::model {

inline LlamaConfig tiny_config(int64_t heads = 4, int64_t kv_heads = 2) {
  LlamaConfig c;
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  return c;
}

inline std::map<std::string, torch::Tensor> random_tensors(const LlamaConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  std::map<std::string, torch::Tensor> t;
  t["model.embed_tokens.weight"] = torch::randn({c.vocab_size, c.hidden_size}) * 0.5;
  t["lm_head.weight"] = torch::randn({c.vocab_size, c.hidden_size}) * 0.2;
  t["model.norm.weight"] = 1 + 0.1 * torch::randn({c.hidden_size});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    for (const auto& m : linear_modules()) {
      auto [o, in] = c.linear_shape(m);
      t[module_path(i, m) + ".weight"] = torch::randn({o, in}) * 0.2;
    }
    t["model.layers." + std::to_string(i) + ".input_layernorm.weight"] = 1 + 0.1 * torch::randn({c.hidden_size});
    t["model.layers." + std::to_string(i) + ".post_attention_layernorm.weight"] =
        1 + 0.1 * torch::randn({c.hidden_size});
  }
  if (c.family->qkv_bias) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
        t[module_path(i, m) + ".bias"] = torch::randn({c.linear_shape(m).first}) * 0.5;
      }
    }
  }
  return t;
}

// B starts at zero (peft), which would hide errors in A's gradient: give every B
// small values from a generator of its own (tests run ranks as threads).
inline void set_lora_b(Llama& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto g = torch::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& [name, t] : m.lora_tensors()) {
    if (name.find("lora_B") != std::string::npos) t.copy_(torch::randn(t.sizes(), g) * 0.1);
  }
}

}  // namespace herd::model
