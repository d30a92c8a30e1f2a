// A Llama model's shape, read from a Hugging Face config.json and validated there:
// a bad or missing key is an error naming the file and the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace herd::model {

struct RopeScaling {
  std::string type;  // "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
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
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  static LlamaConfig from_file(const std::filesystem::path& config_json);
  nlohmann::json to_json() const;  // the keys transformers' LlamaConfig reads

  // Parameters of LoRA adapters of rank r on the given modules, all layers.
  int64_t lora_parameters(int64_t r, const std::vector<std::string>& modules) const;
  // {out_features, in_features} of one of the seven linear modules.
  std::pair<int64_t, int64_t> linear_shape(const std::string& module) const;
};

class ModelConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace herd::model
