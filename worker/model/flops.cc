#include "worker/model/flops.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "worker/model/llama.h"

namespace herd::model {

double FlopCounter::gemm_parameters() const {
  double n = static_cast<double>(config.vocab_size) * static_cast<double>(config.hidden_size);  // lm_head
  for (const auto& m : linear_modules()) {
    const auto [out, in] = config.linear_shape(m);
    n += static_cast<double>(out) * static_cast<double>(in) * static_cast<double>(config.num_hidden_layers);
  }
  return n;
}

Flops FlopCounter::row(int64_t tokens) const {
  const double t = static_cast<double>(tokens), layers = static_cast<double>(config.num_hidden_layers);
  const double n = gemm_parameters();
  const double n_layers = n - static_cast<double>(config.vocab_size) * static_cast<double>(config.hidden_size);
  const double d = static_cast<double>(config.num_attention_heads * config.head_dim);
  double lora = 0;  // r (in + out) summed over the adapted linears of every layer
  for (const auto& m : lora_modules) {
    const auto [out, in] = config.linear_shape(m);
    lora += static_cast<double>(lora_r) * static_cast<double>(in + out) * layers;
  }
  const double attention_forward = 4 * t * d * layers;
  Flops f;
  f.model = t * (4 * n + 3 * attention_forward + 6 * lora);
  f.hardware = f.model + (recompute ? t * (2 * n_layers + attention_forward + 2 * lora) : 0);
  return f;
}

Flops FlopCounter::rows(const std::vector<int64_t>& lengths) const {
  Flops total;
  for (int64_t l : lengths) total += row(l);
  return total;
}

std::optional<double> peak_flops(const std::string& device_name) {
  // The name's words ("NVIDIA A100-SXM4-80GB": NVIDIA, A100, SXM4, 80GB), upper case.
  std::vector<std::string> words(1);
  for (unsigned char c : device_name) {
    if (c == ' ' || c == '-' || c == '_') {
      if (!words.back().empty()) words.emplace_back();
    } else {
      words.back() += static_cast<char>(std::toupper(c));
    }
  }
  auto has = [&](const char* w) { return std::find(words.begin(), words.end(), w) != words.end(); };
  if (has("H100")) return has("PCIE") ? 756.5e12 : 989.4e12;  // PCIe card, or SXM
  static const std::pair<const char*, double> kTable[] = {
      {"H200", 989.4e12}, {"GH200", 989.4e12}, {"A100", 312e12}, {"L40S", 362.05e12},
      {"L40", 181.05e12}, {"L4", 121e12},      {"A10", 125e12},
  };
  for (const auto& [word, flops] : kTable) {
    if (has(word)) return flops;
  }
  return std::nullopt;
}

}  // namespace herd::model
