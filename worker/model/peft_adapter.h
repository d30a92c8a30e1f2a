// LoRA adapters as peft saves them: adapter_config.json and
// adapter_model.safetensors with peft's names and shapes
// (base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, in],
// ...lora_B.weight [out, r], with DoRA ...lora_magnitude_vector [out], float32). Loading validates both files against
// the model and names the file and tensor of any mismatch.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "worker/model/llama.h"

namespace herd::model {

// LoRA settings from an adapter_config.json (r, lora_alpha, lora_dropout,
// target_modules, use_rslora, use_dora); unsupported peft features are errors.
LoraOptions read_adapter_config(const std::filesystem::path& adapter_dir);

// Writes adapter_config.json and adapter_model.safetensors.
void save_adapter(Llama& model, const std::filesystem::path& adapter_dir, const std::string& base_model,
                  const std::string& task_type = "CAUSAL_LM", const std::string& bias = "none");

// Copies the adapter's tensors into a model built with read_adapter_config's options.
void load_adapter_weights(Llama& model, const std::filesystem::path& adapter_dir);

// A model directory loaded as `options` say with a trained adapter: its settings
// replace options.lora and its weights are loaded. Without one (adapter_dir empty),
// options.lora as given. What eval, chat and the tools run.
Llama load_with_adapter(const std::filesystem::path& model_dir, LoadOptions options,
                        const std::filesystem::path& adapter_dir);

// The adapter's tensor names and shapes for a model shape (no weights needed).
std::vector<std::pair<std::string, std::vector<int64_t>>> adapter_layout(const LlamaConfig& config,
                                                                         const LoraOptions& lora);

}  // namespace herd::model
