// `herd plan`: what one rank of a job holds at its peak, item by item, from the
// model's shape and the config, as herd lays it out:
// - the frozen base: NF4 codes (half a byte a weight) and their absmax (double
//   quantization: 1 byte per 64 weights + 4 bytes per 64 x 256), or dense weights in
//   the compute dtype; embedding and lm_head in the hidden stream's dtype (float32,
//   or bfloat16 with trainer.bf16), norms in float32; 1/N of each with
//   full_shard, plus the gathered layers in flight (the one computing and the one
//   prefetched) and the larger of the embedding's and lm_head's buffers (never
//   gathered at once);
// - LoRA parameters in float32 with their gradients and AdamW's two moments (with
//   DoRA its magnitudes among them, plus the float32 [out, in] buffer of
//   ||W + s B A|| for the largest adapted layer, and per token of a layer computing
//   the base and adapter outputs its forward keeps for backward, float32);
// - activations: with checkpointing each layer's input (in the hidden stream's
//   dtype), plus one layer's recomputation and backward (in the compute dtype) and
//   two of the largest weights dequantized; without, every layer's; with
//   trainer.offload_activations the inputs are in pinned host memory, two on the GPU;
// - the logits: on a GPU (the fused loss) they and their gradient in the hidden
//   stream's dtype; on the CPU in float32, with their softmax and gradient; with
//   trainer.loss_chunk_tokens a chunk's, plus the gradient the chunked loss keeps
//   for the final hidden state;
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
  int64_t loss_chunk = 0;  // trainer.loss_chunk_tokens
  bool offload_activations = false;
  int64_t lora_parameters = 0;  // with DoRA's magnitudes
  // DoRA: the adapted linears' output features in a layer, and the largest one's
  // [out, in] elements (0 without DoRA).
  int64_t dora_out_features = 0, dora_largest_weight = 0;
  bool gpu = true;
};

struct PlanItem {
  std::string what;
  double bytes = 0;
};

// The adapter's fields of `input` for LoRA (DoRA) of rank r on these modules.
void set_lora(PlanInput& input, int64_t r, const std::vector<std::string>& modules, bool dora);

std::vector<PlanItem> memory_plan(const PlanInput& input);
double plan_total(const PlanInput& input);

// The memory features to turn on so that a rank fits in `capacity` bytes, cheapest
// first, each only if the rank does not fit yet: trainer.loss_chunk_tokens (1024;
// no extra work), trainer.bf16 (faster; bfloat16 rounding in the hidden stream),
// trainer.offload_activations (GPU, with checkpointing: host copies that overlap
// compute).
struct Fit {
  std::vector<std::pair<std::string, std::string>> changes;  // config key, value
  PlanInput input;                                           // with the changes
  bool fits = false;
};
Fit fit(const PlanInput& input, double capacity);

// Published shapes herd knows by name, for a base model that is not on this machine
// (e.g. "TheBloke/Llama-2-70B-fp16": Llama-2-70B; "Qwen/Qwen2.5-72B-Instruct":
// Qwen2.5-72B). Matched case-insensitively, the most specific name first.
std::optional<std::pair<std::string, model::LlamaConfig>> known_shape(const std::string& base_model);
// "llama-2-7b, ..., mistral-nemo-12b": the names make-model's --shape takes.
std::string known_shape_names();

// "80GiB", "24GB", "24G" (GiB), "512MiB", "500MB" -> bytes; nullopt when malformed.
std::optional<double> parse_bytes(const std::string& text);

}  // namespace herd::train
