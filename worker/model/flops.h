// The FLOPs of training herd's Llama with LoRA on a frozen base, in the one
// convention every figure of herd uses (the bench, the worker's metrics, the log
// line; docs/metrics.md works an example through):
//
//   model FLOPs of a row of T tokens = T x (
//       4 N                                   GEMMs: forward 2N, input gradients 2N
//                                             (N: the parameters of every linear of
//                                             every layer, and lm_head; the frozen
//                                             base has no weight gradient)
//     + 12 T d L                              attention's two T x T products: 4 T d a
//                                             layer forward, twice that backward (d:
//                                             heads x head_dim; the causal mask is not
//                                             subtracted, as PaLM's convention counts)
//     + 6 r (in + out), over the adapted linears of every layer
//                                             LoRA: forward, input and weight gradients
//   )
//   hardware FLOPs = model FLOPs + the recompute of activation checkpointing: every
//     layer's forward again (2 N_layers + 4 T d L + 2 r (in + out) per token).
//
// Embedding lookups, norms, rotary, activations and the loss are not counted.
// DoRA (lora.use_dora) counts as LoRA: its extra work is in neither figure, so its
// MFU measures the same useful work and its cost shows as a lower MFU. That work:
// per adapted linear and forward (once per micro-batch, not per token; recompute
// repeats it), the row norms ||W + s B A||, (2 r + 4) out x in; per token, a few
// element-wise passes over the output and, while dropout is on, peft's second
// product dropout(x) W^T, 4 in x out (forward and input gradient).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "worker/model/llama_config.h"

namespace herd::model {

struct Flops {
  double model = 0, hardware = 0;
  Flops& operator+=(const Flops& o) {
    model += o.model;
    hardware += o.hardware;
    return *this;
  }
};

struct FlopCounter {
  LlamaConfig config;
  int64_t lora_r = 0;
  std::vector<std::string> lora_modules;
  bool recompute = true;

  // One training pass over a row of `tokens` tokens.
  Flops row(int64_t tokens) const;
  // Over rows of these lengths.
  Flops rows(const std::vector<int64_t>& lengths) const;
  // N: the parameters of every GEMM (the layers' linears and lm_head).
  double gemm_parameters() const;
};

// Model FLOPs utilisation: `model_flops` done in `seconds` on devices of
// `peak_flops` in all (a gang's: the peak times the ranks).
inline double mfu(double model_flops, double seconds, double peak_flops) {
  return model_flops / seconds / peak_flops;
}

// The dense bfloat16 peak of a GPU, in FLOP/s, by the name CUDA gives it ("NVIDIA
// H100 80GB HBM3"), from the vendors' data sheets; none for a name not in the table.
std::optional<double> peak_flops(const std::string& device_name);

}  // namespace herd::model
