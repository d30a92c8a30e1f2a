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

// The family config.json names: architectures[0] when it has one (what
// AutoModelForCausalLM's class is), else model_type.
const Family* family_of(const json& j, const std::string& source) {
  const bool by_architecture = j.contains("architectures") && j["architectures"].is_array() &&
                               !j["architectures"].empty() && j["architectures"][0].is_string();
  const std::string named = by_architecture ? j["architectures"][0].get<std::string>()
                            : j.contains("model_type") && j["model_type"].is_string()
                                ? j["model_type"].get<std::string>()
                                : "llama";
  for (const Family& f : families()) {
    if (named == (by_architecture ? f.architecture : f.name)) return &f;
  }
  fail(source, by_architecture ? "architectures" : "model_type",
       fmt::format("'{}' is not an architecture herd trains ({})", named, trained_architectures()));
}

// What a family reads beyond Llama's keys, and Llama's keys it does not support.
void read_family_keys(const json& j, const std::string& source, LlamaConfig& c) {
  auto is_true = [&](const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); };
  if (c.family->name == "llama") {
    for (const char* key : {"attention_bias", "mlp_bias"}) {
      if (is_true(key)) fail(source, key, "true is not supported (Llama's checkpoints have no biases)");
    }
  }
  if (c.family->name == "qwen2" && is_true("use_sliding_window")) {
    fail(source, "use_sliding_window", "true is not supported (Qwen2.5's checkpoints leave it false)");
  }
  if (c.family->sliding_window && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    c.sliding_window = positive_int(j, source, "sliding_window", std::nullopt);
  }
  // eos_token_id: one id, or a list (Llama-3.1 and later: the first is kept)
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array() && !j["eos_token_id"].empty() &&
      j["eos_token_id"][0].is_number_integer()) {
    c.eos_token_id = j["eos_token_id"][0].get<int64_t>();
  }
}

// rope_theta and the scaling: transformers 5's rope_parameters when config.json has
// it (what transformers then reads), else rope_theta and rope_scaling.
void read_rope(const json& j, const std::string& source, LlamaConfig& c) {
  const bool v5 = j.contains("rope_parameters") && j["rope_parameters"].is_object();
  const std::string key = v5 ? "rope_parameters" : "rope_scaling";
  c.rope_theta = v5 && j[key].contains("rope_theta")
                     ? positive_number(j[key], source + ": " + key, "rope_theta", 10000.0)
                     : positive_number(j, source, "rope_theta", 10000.0);
  if (!j.contains(key) || j[key].is_null()) return;
  const json& s = j[key];
  if (!s.is_object()) fail(source, key, "must be an object or null");
  const std::string type = s.value("rope_type", s.value("type", std::string("default")));
  if (type == "default") return;
  if (type != "linear" && type != "llama3") {
    fail(source, key + ".rope_type", fmt::format("'{}' is not supported (herd supports linear and llama3)", type));
  }
  RopeScaling r;
  r.type = type;
  r.factor = positive_number(s, source + ": " + key, "factor", 1.0);
  r.low_freq_factor = positive_number(s, source + ": " + key, "low_freq_factor", 1.0);
  r.high_freq_factor = positive_number(s, source + ": " + key, "high_freq_factor", 4.0);
  r.original_max_position_embeddings = positive_int(s, source + ": " + key, "original_max_position_embeddings", 8192);
  c.rope_scaling = r;
}

}  // namespace

const std::vector<Family>& families() {
  static const std::vector<Family> f = {{"llama", "LlamaForCausalLM", false, false},
                                        {"qwen2", "Qwen2ForCausalLM", true, false},
                                        {"mistral", "MistralForCausalLM", false, true}};
  return f;
}

std::string trained_architectures() {
  std::string out;
  for (const Family& f : families()) out += (out.empty() ? "" : ", ") + std::string(f.architecture);
  return out;
}

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "(top level)", "must be a JSON object");
  LlamaConfig c;
  c.family = family_of(j, source);
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
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean()) fail(source, "tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  for (auto [key, field] : {std::pair{"bos_token_id", &c.bos_token_id}, std::pair{"eos_token_id", &c.eos_token_id}}) {
    if (j.contains(key) && j[key].is_number_integer()) *field = j[key].get<int64_t>();
  }
  read_family_keys(j, source, c);
  read_rope(j, source, c);
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
  json j = {{"architectures", {std::string(family->architecture)}},
            {"model_type", std::string(family->name)},
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
            {"torch_dtype", "float32"}};
  if (family->name == "llama") {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  } else if (family->name == "qwen2") {
    j["use_sliding_window"] = false;
  } else if (family->sliding_window) {
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  }
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

int64_t LlamaConfig::lora_parameters(int64_t r, const std::vector<std::string>& modules, bool dora) const {
  int64_t per_layer = 0;
  for (const auto& m : modules) {
    auto [out, in] = linear_shape(m);
    per_layer += r * (in + out) + (dora ? out : 0);
  }
  return per_layer * num_hidden_layers;
}

}  // namespace herd::model
