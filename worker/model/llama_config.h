// A decoder's shape, read from a Hugging Face config.json and validated there: a bad
// or missing key is an error naming the file and the key. The families herd trains
// share Llama's graph; each differs by a few flags (its Family), as llama.cpp
// describes its architectures.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace herd::model {

struct RopeScaling {
  std::string type;  // "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;
};

// A model family: config.json's architecture and model_type, and what sets it apart.
struct Family {
  std::string_view name;          // model_family in a config ("llama", "qwen2", "mistral")
  std::string_view architecture;  // config.json's architectures[0]
  bool qkv_bias;                  // q, k and v projections have a bias (frozen)
  bool sliding_window;            // config.json's sliding_window limits attention
};
// Llama (Llama-2 and 3.x), Qwen2 (Qwen2 and 2.5), Mistral.
const std::vector<Family>& families();
// "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM"
std::string trained_architectures();

struct LlamaConfig {
  const Family* family = &families()[0];
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  // Each position attends to itself and the sliding_window - 1 before it; 0: all before it.
  int64_t sliding_window = 0;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;  // the first, where config.json has a list

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  static LlamaConfig from_file(const std::filesystem::path& config_json);
  nlohmann::json to_json() const;  // the keys transformers' LlamaConfig reads

  // Parameters of LoRA adapters of rank r on the given modules, all layers (with
  // DoRA, each module's magnitude vector too).
  int64_t lora_parameters(int64_t r, const std::vector<std::string>& modules, bool dora = false) const;
  // {out_features, in_features} of one of the seven linear modules.
  std::pair<int64_t, int64_t> linear_shape(const std::string& module) const;
};

class ModelConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace herd::model
