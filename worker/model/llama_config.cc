#include "worker/model/llama_config.h"

#include <fstream>

#include <fmt/format.h>

namespace herd::model {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& message) {
  throw ModelConfigError(fmt::format("{}: {}: {}", source, key, message));
}

int64_t positive_int(const json& j, const std::string& source, const std::string& key, std::optional<int64_t> def) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    fail(source, key, "missing");
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0) {
    fail(source, key, fmt::format("must be a positive integer, got {}", j[key].dump()));
  }
  return j[key].get<int64_t>();
}

double positive_number(const json& j, const std::string& source, const std::string& key, double def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number() || j[key].get<double>() <= 0) {
    fail(source, key, fmt::format("must be a positive number, got {}", j[key].dump()));
  }
  return j[key].get<double>();
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "(top level)", "must be a JSON object");
  if (j.contains("model_type") && j["model_type"] != "llama") {
    fail(source, "model_type", fmt::format("herd trains Llama models; got {}", j["model_type"].dump()));
  }
  LlamaConfig c;
  c.vocab_size = positive_int(j, source, "vocab_size", std::nullopt);
  c.hidden_size = positive_int(j, source, "hidden_size", std::nullopt);
  c.intermediate_size = positive_int(j, source, "intermediate_size", std::nullopt);
  c.num_hidden_layers = positive_int(j, source, "num_hidden_layers", std::nullopt);
  c.num_attention_heads = positive_int(j, source, "num_attention_heads", std::nullopt);
  c.num_key_value_heads = positive_int(j, source, "num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail(source, "num_key_value_heads",
         fmt::format("{} does not divide num_attention_heads {}", c.num_key_value_heads, c.num_attention_heads));
  }
  if (!j.contains("head_dim") && c.hidden_size % c.num_attention_heads != 0) {
    fail(source, "hidden_size",
         fmt::format("{} is not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads));
  }
  c.head_dim = positive_int(j, source, "head_dim", c.hidden_size / c.num_attention_heads);
  if (c.head_dim % 2 != 0) fail(source, "head_dim", "must be even for rotary embeddings");
  c.max_position_embeddings = positive_int(j, source, "max_position_embeddings", 2048);
  c.rms_norm_eps = positive_number(j, source, "rms_norm_eps", 1e-6);
  c.rope_theta = positive_number(j, source, "rope_theta", 10000.0);
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean()) fail(source, "tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  for (auto [key, field] : {std::pair{"bos_token_id", &c.bos_token_id}, std::pair{"eos_token_id", &c.eos_token_id}}) {
    if (j.contains(key) && j[key].is_number_integer()) *field = j[key].get<int64_t>();
  }
  // transformers >= 4.45 also writes rope_parameters / rope_type "default" for no scaling.
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& s = j["rope_scaling"];
    if (!s.is_object()) fail(source, "rope_scaling", "must be an object or null");
    std::string type = s.value("rope_type", s.value("type", std::string("default")));
    if (type != "default") {
      if (type != "linear" && type != "llama3") {
        fail(source, "rope_scaling.rope_type",
             fmt::format("'{}' is not supported (herd supports linear and llama3)", type));
      }
      RopeScaling r;
      r.type = type;
      r.factor = positive_number(s, source + ": rope_scaling", "factor", 1.0);
      r.low_freq_factor = positive_number(s, source + ": rope_scaling", "low_freq_factor", 1.0);
      r.high_freq_factor = positive_number(s, source + ": rope_scaling", "high_freq_factor", 4.0);
      r.original_max_position_embeddings =
          positive_int(s, source + ": rope_scaling", "original_max_position_embeddings", 8192);
      c.rope_scaling = r;
    }
  }
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::filesystem::path& config_json) {
  std::ifstream in(config_json);
  if (!in) throw ModelConfigError(fmt::format("{}: cannot read", config_json.string()));
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ModelConfigError(fmt::format("{}: not valid JSON", config_json.string()));
  return from_json(j, config_json.string());
}

json LlamaConfig::to_json() const {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_hidden_layers", num_hidden_layers},
            {"num_attention_heads", num_attention_heads},
            {"num_key_value_heads", num_key_value_heads},
            {"head_dim", head_dim},
            {"max_position_embeddings", max_position_embeddings},
            {"rms_norm_eps", rms_norm_eps},
            {"rope_theta", rope_theta},
            {"tie_word_embeddings", tie_word_embeddings},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_id},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"torch_dtype", "float32"}};
  if (rope_scaling) {
    j["rope_scaling"] = {{"rope_type", rope_scaling->type},
                         {"factor", rope_scaling->factor},
                         {"low_freq_factor", rope_scaling->low_freq_factor},
                         {"high_freq_factor", rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling->original_max_position_embeddings}};
  }
  return j;
}

std::pair<int64_t, int64_t> LlamaConfig::linear_shape(const std::string& module) const {
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  if (module == "q_proj") return {q, hidden_size};
  if (module == "k_proj" || module == "v_proj") return {kv, hidden_size};
  if (module == "o_proj") return {hidden_size, q};
  if (module == "gate_proj" || module == "up_proj") return {intermediate_size, hidden_size};
  if (module == "down_proj") return {hidden_size, intermediate_size};
  throw ModelConfigError("unknown linear module '" + module + "'");
}

int64_t LlamaConfig::lora_parameters(int64_t r, const std::vector<std::string>& modules) const {
  int64_t per_layer = 0;
  for (const auto& m : modules) {
    auto [out, in] = linear_shape(m);
    per_layer += r * (in + out);
  }
  return per_layer * num_hidden_layers;
}

}  // namespace herd::model
