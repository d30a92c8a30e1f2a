// `herd plan`: what one rank of a job holds at its peak, item by item, from the
// model's shape and the config, as herd lays it out:
// - the frozen base: NF4 codes (half a byte a weight) and their absmax (double
//   quantization: 1 byte per 64 weights + 4 bytes per 64 x 256), or dense weights in
//   the compute dtype; embedding and lm_head in the hidden stream's dtype (float32,
//   or bfloat16 with trainer.bf16), norms in float32; 1/N of each with
//   full_shard, plus the gathered layers in flight (the one computing and the one
//   prefetched) and the embedding/lm_head buffer;
// - LoRA parameters in float32 with their gradients and AdamW's two moments;
// - activations: with checkpointing each layer's input (in the hidden stream's
//   dtype), plus one layer's recomputation and backward (in the compute dtype) and
//   two of the largest weights dequantized; without, every layer's;
// - the logits: on a GPU (the fused loss) they and their gradient in the hidden
//   stream's dtype; on the CPU in float32, with their softmax and gradient;
// - on a GPU, the CUDA context and the allocator's reserve (1 GiB, a round figure).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "worker/model/llama_config.h"

namespace herd::train {

struct PlanInput {
  model::LlamaConfig shape;
  int64_t workers = 1;
  bool full_shard = true;
  bool quantized = true, double_quant = true;
  int64_t compute_bytes = 2;  // bfloat16
  int64_t stream_bytes = 4;   // the hidden stream: float32, or bfloat16 (trainer.bf16)
  int64_t batch_size = 1, tokens = 4096;
  bool checkpointing = true;
  int64_t lora_parameters = 0;
  bool gpu = true;
};

struct PlanItem {
  std::string what;
  double bytes = 0;
};

std::vector<PlanItem> memory_plan(const PlanInput& input);

// Llama shapes herd knows by name, for a base model that is not on this machine
// (e.g. "TheBloke/Llama-2-70B-fp16": Llama-2-70B). Matched case-insensitively.
std::optional<std::pair<std::string, model::LlamaConfig>> known_shape(const std::string& base_model);

// "80GiB", "24GB", "24G" (GiB), "512MiB" -> bytes; nullopt when malformed.
std::optional<double> parse_bytes(const std::string& text);

}  // namespace herd::train
