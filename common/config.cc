#include "common/config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "common/text.h"

namespace herd {

double LoraConfig::scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r)) : lora_alpha / static_cast<double>(r);
}

std::filesystem::path Config::adapter_dir() const {
  return std::filesystem::path(model_output_dir) / (model_name + "_adapter");
}

void Config::set_world_size(int64_t n) {
  const bool min_given = std::any_of(resolved.begin(), resolved.end(), [](const ResolvedValue& v) {
    return v.key == "distributed.min_workers" && v.origin != "default";
  });
  distributed.world_size = n;
  distributed.min_workers = min_given ? std::min(distributed.min_workers, n) : n;
}

std::string ConfigDiagnostic::str() const {
  std::string where = file;
  if (line > 0) where += fmt::format(":{}:{}", line, column);
  return key.empty() ? fmt::format("{}: {}", where, message) : fmt::format("{}: {}: {}", where, key, message);
}

static std::string describe(const std::vector<ConfigDiagnostic>& diagnostics) {
  std::string out = fmt::format("{} error{} in config:", diagnostics.size(), diagnostics.size() == 1 ? "" : "s");
  for (const auto& d : diagnostics) out += "\n  " + d.str();
  return out;
}

ConfigError::ConfigError(std::vector<ConfigDiagnostic> diagnostics)
    : std::runtime_error(describe(diagnostics)), diagnostics_(std::move(diagnostics)) {}

const std::vector<std::string>& known_target_modules() {
  static const std::vector<std::string> modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
  return modules;
}

namespace {

enum class Need { Required, Optional };

// A YAML mapping being read: the keys asked for are remembered so that every other
// key can be reported as unknown, with the nearest known one.
struct Section {
  std::string name;  // "" for the top level
  YAML::Node node;   // a map, or undefined when the section is absent
  int line = 0;      // where the section's key is (0 for the top level)
  int column = 0;
  bool missing = false;  // a required section that is absent: reported once, not per key
  std::vector<std::string> known;

  std::string path(const std::string& key) const { return name.empty() ? key : name + "." + key; }
};

template <class T>
using Check = std::function<std::optional<std::string>(const T&)>;

std::string show(const std::string& v) { return c_quoted(v); }
std::string show(int64_t v) { return fmt::format("{}", v); }
std::string show(double v) { return fmt::format("{}", v); }
std::string show(bool v) { return v ? "true" : "false"; }
std::string show(const std::vector<std::string>& v) { return "[" + join(v) + "]"; }

bool is_quoted(const YAML::Node& n) { return n.Tag() == "!"; }

// YAML 1.1 booleans, as PyYAML (the seed's loader) reads them.
std::optional<bool> parse_bool(const std::string& s) {
  static const std::set<std::string> yes = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const std::set<std::string> no = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  if (yes.count(s)) return true;
  if (no.count(s)) return false;
  return std::nullopt;
}

// Converts a scalar node; returns an error message when it is not a T.
std::optional<std::string> convert(const YAML::Node& n, std::string& out) {
  if (!n.IsScalar()) return "expected a string";
  out = n.Scalar();
  return std::nullopt;
}

std::optional<std::string> convert(const YAML::Node& n, std::vector<std::string>& out) {
  if (!n.IsSequence()) return "expected a list of strings";
  out.clear();
  for (const auto& item : n) {
    if (!item.IsScalar()) return fmt::format("item {} is not a string", out.size());
    out.push_back(item.Scalar());
  }
  return std::nullopt;
}

std::optional<std::string> convert(const YAML::Node& n, int64_t& out) {
  if (!n.IsScalar()) return "expected an integer";
  const std::string& s = n.Scalar();
  if (is_quoted(n)) return fmt::format("expected an integer, got the string {}", c_quoted(s));
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc::result_out_of_range) return fmt::format("integer {} is out of range", s);
  if (ec != std::errc() || end != s.data() + s.size()) return fmt::format("expected an integer, got {}", c_quoted(s));
  return std::nullopt;
}

std::optional<std::string> convert(const YAML::Node& n, double& out) {
  if (!n.IsScalar()) return "expected a number";
  const std::string& s = n.Scalar();
  if (is_quoted(n)) return fmt::format("expected a number, got the string {}", c_quoted(s));
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(out))
    return fmt::format("expected a finite number, got {}", c_quoted(s));
  return std::nullopt;
}

std::optional<std::string> convert(const YAML::Node& n, bool& out) {
  if (!n.IsScalar()) return "expected true or false";
  auto b = is_quoted(n) ? std::nullopt : parse_bool(n.Scalar());
  if (!b) return fmt::format("expected true or false, got {}", c_quoted(n.Scalar()));
  out = *b;
  return std::nullopt;
}

// The value of `key` in a mapping; an undefined node when absent or when `map` is
// no mapping. (yaml-cpp: looking up a missing key gives an invalid node, which
// only IsDefined() may touch and which cannot be assigned.)
YAML::Node child(const YAML::Node& map, const std::string& key) {
  if (!map.IsDefined() || !map.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  YAML::Node n = map[key];
  return n;
}

// The key node of `key` in a mapping (its mark is where the key is written).
std::optional<YAML::Node> key_node(const YAML::Node& map, const std::string& key) {
  if (!map.IsDefined() || !map.IsMap()) return std::nullopt;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == key) return it->first;
  }
  return std::nullopt;
}

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  void error(int line, int column, const std::string& key, const std::string& message) {
    diagnostics_.push_back({file_, line, column, key, message});
  }
  void error_at(const YAML::Node& n, const std::string& key, const std::string& message) {
    error(n.Mark().line + 1, n.Mark().column + 1, key, message);
  }
  // An error about `key` of a section: at the key when it is written, else at the section.
  void error_key(const Section& s, const std::string& key, const std::string& message) {
    if (auto k = key_node(s.node, key)) {
      error_at(*k, s.path(key), message);
    } else {
      error(s.line, s.column, s.path(key), message);
    }
  }
  std::vector<ConfigDiagnostic>& diagnostics() { return diagnostics_; }

  Section& open_root(const YAML::Node& root) {
    sections_.push_back({"", root, 0, 0, false, {}});
    return sections_.back();
  }

  // A nested mapping of the top level (`trainer:`, `lora:`, ...).
  Section& open(Section& parent, const std::string& name, Need need) {
    parent.known.push_back(name);
    YAML::Node n = child(parent.node, name);
    Section s{name, YAML::Node(), 0, 0, false, {}};
    if (auto k = key_node(parent.node, name)) {
      s.line = k->Mark().line + 1;
      s.column = k->Mark().column + 1;
    }
    if (n.IsDefined() && n.IsMap()) {
      s.node = n;
    } else if (n.IsDefined() && !n.IsNull()) {
      error_at(n, name, "expected a mapping of keys (a section)");
      s.missing = true;
    } else if (need == Need::Required) {
      error(s.line, s.column, name, "missing required section");
      s.missing = true;
    }
    sections_.push_back(std::move(s));
    return sections_.back();
  }

  template <class T>
  void get(Section& s, const std::string& key, T& out, Need need, Check<T> check = {}) {
    s.known.push_back(key);
    const std::string path = s.path(key);
    YAML::Node n = child(s.node, key);
    if (!n.IsDefined() || n.IsNull()) {
      if (need == Need::Required) {
        if (s.missing) return;
        if (n.IsDefined()) {
          error_at(*key_node(s.node, key), path, "required key has no value");
        } else {
          missing_.push_back({s.name, key, diagnostics_.size()});
          error(s.line, s.column, path,
                s.name.empty() ? "missing required key" : fmt::format("missing required key in section '{}'", s.name));
        }
        return;
      }
      resolved_.push_back({path, show(out), "default"});
      return;
    }
    T value{};
    if (auto e = convert(n, value)) {
      error_at(n, path, *e);
      return;
    }
    if (check) {
      if (auto e = check(value)) {
        error_at(n, path, *e);
        return;
      }
    }
    out = std::move(value);
    resolved_.push_back({path, show(out), fmt::format("{}:{}", file_, n.Mark().line + 1)});
  }

  // lora.target_modules: a list of Llama linear-layer names, or peft's "all-linear".
  void get_target_modules(Section& s, std::vector<std::string>& out) {
    const std::string key = "target_modules";
    s.known.push_back(key);
    const std::string path = s.path(key);
    YAML::Node n = child(s.node, key);
    if (!n.IsDefined() || n.IsNull()) {
      if (!s.missing) error(s.line, s.column, path, "missing required key in section 'lora'");
      return;
    }
    const auto& known = known_target_modules();
    std::vector<std::string> modules;
    bool ok = true;
    if (n.IsScalar() && n.Scalar() == "all-linear") {
      modules = known;
    } else if (n.IsSequence()) {
      if (n.size() == 0) {
        error_at(n, path, "needs at least one module");
        return;
      }
      for (const auto& item : n) {
        if (!item.IsScalar()) {
          error_at(item, path, "expected a module name");
          ok = false;
          continue;
        }
        const std::string& m = item.Scalar();
        if (m == "embed_tokens" || m == "lm_head") {
          error_at(item, path,
                   fmt::format("'{}': herd adapts the decoder's linear layers only (LoRA or DoRA on an embedding or "
                               "the output layer is not supported; known: {})",
                               m, join(known)));
          ok = false;
        } else if (std::find(known.begin(), known.end(), m) == known.end()) {
          error_at(item, path,
                   fmt::format("unknown target module {}; did you mean '{}'? (known: {})", c_quoted(m),
                               closest_match(m, known), join(known)));
          ok = false;
        } else if (std::find(modules.begin(), modules.end(), m) != modules.end()) {
          error_at(item, path, fmt::format("module '{}' is listed twice", m));
          ok = false;
        } else {
          modules.push_back(m);
        }
      }
    } else {
      error_at(n, path, fmt::format("expected a list of modules ({}) or \"all-linear\"", join(known)));
      return;
    }
    if (!ok) return;
    out = modules;
    resolved_.push_back({path, show(out), fmt::format("{}:{}", file_, n.Mark().line + 1)});
  }

  // Every key that no get()/open() asked for is unknown; duplicates are errors too.
  // An unknown key whose nearest known key is a missing required one is a typo:
  // it is reported once, as the unknown key.
  void check_keys() {
    std::vector<size_t> typo_of_missing;
    for (const auto& s : sections_) {
      if (!s.node.IsMap()) continue;
      std::set<std::string> seen;
      for (auto it = s.node.begin(); it != s.node.end(); ++it) {
        const YAML::Node k = it->first;  // a copy: it->first is a temporary
        const std::string name = k.IsScalar() ? k.Scalar() : std::string("<non-scalar key>");
        if (!seen.insert(name).second) {
          error_at(k, s.path(name), "duplicate key");
          continue;
        }
        if (std::find(s.known.begin(), s.known.end(), name) != s.known.end()) continue;
        std::string where = s.name.empty() ? "at the top level" : "in section '" + s.name + "'";
        std::string nearest = closest_match(name, s.known);
        error_at(k, s.path(name), fmt::format("unknown key {}; did you mean '{}'?", where, nearest));
        for (const auto& m : missing_) {
          if (m.section == s.name && m.key == nearest) typo_of_missing.push_back(m.diagnostic);
        }
      }
    }
    std::sort(typo_of_missing.rbegin(), typo_of_missing.rend());
    for (size_t i : typo_of_missing) diagnostics_.erase(diagnostics_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  std::vector<ResolvedValue> take_resolved() { return std::move(resolved_); }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::deque<Section> sections_;  // deque: references stay valid as sections are added
  std::vector<ConfigDiagnostic> diagnostics_;
  std::vector<ResolvedValue> resolved_;
  struct Missing {
    std::string section, key;
    size_t diagnostic;  // index into diagnostics_
  };
  std::vector<Missing> missing_;
};

template <class T>
Check<T> at_least(T min) {
  return [min](const T& v) -> std::optional<std::string> {
    if (v < min) return fmt::format("must be >= {}, got {}", min, v);
    return std::nullopt;
  };
}

template <class T>
Check<T> above(T min) {
  return [min](const T& v) -> std::optional<std::string> {
    if (!(v > min)) return fmt::format("must be > {}, got {}", min, v);
    return std::nullopt;
  };
}

Check<double> in_unit_interval() {  // [0, 1)
  return [](const double& v) -> std::optional<std::string> {
    if (v < 0 || v >= 1) return fmt::format("must be in [0, 1), got {}", v);
    return std::nullopt;
  };
}

Check<std::string> one_of(std::vector<std::string> allowed) {
  return [allowed](const std::string& v) -> std::optional<std::string> {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return std::nullopt;
    return fmt::format("must be one of {}; got {} (did you mean '{}'?)", join(allowed), c_quoted(v),
                       closest_match(v, allowed));
  };
}

Check<std::string> not_empty() {
  return [](const std::string& v) -> std::optional<std::string> {
    if (v.empty()) return "must not be empty";
    return std::nullopt;
  };
}

// data: each data type reads its own keys (the seed's processors); another type's
// key is refused, not ignored.
void read_data(Reader& r, Section& root, Config& c) {
  Section& data = r.open(root, "data", Need::Required);
  r.get(data, "type", c.data.type, Need::Required, one_of({"vicuna", "orca", "raw_text"}));
  const std::string& type = c.data.type;
  auto need = [&](std::initializer_list<const char*> types) {
    return std::find(types.begin(), types.end(), type) != types.end() ? Need::Required : Need::Optional;
  };
  r.get(data, "dataset", c.data.dataset, need({"vicuna", "orca"}), not_empty());
  r.get(data, "prompt_style", c.data.prompt_style, Need::Optional, one_of({"seed", "chat_template"}));
  const bool seed_style = c.data.prompt_style == "seed";
  auto header = [&](std::initializer_list<const char*> types) { return seed_style ? need(types) : Need::Optional; };
  r.get(data, "user_header", c.data.user_header, Need::Optional);
  r.get(data, "response_header", c.data.response_header, header({"orca"}));
  r.get(data, "system_header", c.data.system_header, header({"orca"}));
  r.get(data, "instruction_header", c.data.instruction_header, header({"orca"}));
  for (const char* key : {"user_header", "response_header", "system_header", "instruction_header"}) {
    if (!seed_style && key_node(data.node, key)) {
      r.error_key(data, key,
                  "formats data.prompt_style seed; with chat_template the model's template formats the turns");
    }
  }
  if (type == "raw_text" && !seed_style) {
    r.error_key(data, "prompt_style", "chat_template formats conversations; raw_text is plain text");
  }
  r.get(data, "text_files", c.data.text_files, need({"raw_text"}),
        Check<std::vector<std::string>>([](const std::vector<std::string>& v) -> std::optional<std::string> {
          if (v.empty()) return "needs at least one file";
          for (const auto& f : v) {
            if (f.empty()) return "a file name is empty";
          }
          return std::nullopt;
        }));
  r.get(data, "chunk_char_len", c.data.chunk_char_len, need({"raw_text"}), at_least<int64_t>(1));
  r.get(data, "chunk_char_overlap", c.data.chunk_char_overlap, need({"raw_text"}), at_least<int64_t>(0));
  r.get(data, "chunk_prefix", c.data.chunk_prefix, Need::Optional);
  r.get(data, "train_on_inputs", c.data.train_on_inputs, Need::Optional);
  static const std::vector<std::pair<const char*, std::vector<std::string>>> owners = {
      {"dataset", {"vicuna", "orca"}},        {"user_header", {"vicuna"}},
      {"response_header", {"vicuna", "orca"}}, {"system_header", {"orca"}},
      {"instruction_header", {"orca"}},       {"text_files", {"raw_text"}},
      {"chunk_char_len", {"raw_text"}},       {"chunk_char_overlap", {"raw_text"}},
      {"chunk_prefix", {"raw_text"}}};
  for (const auto& [key, types] : owners) {
    if (type.empty() || std::find(types.begin(), types.end(), type) != types.end() || !key_node(data.node, key)) {
      continue;
    }
    r.error_key(data, key,
                fmt::format("is read by data.type {} only, and this config's type is {}", join(types, " and "), type));
  }
  if (type == "raw_text" && !c.data.train_on_inputs) {
    r.error_key(data, "train_on_inputs", "raw_text has no inputs to leave out of the loss: every token is trained on");
  }
  if (type == "raw_text" && c.data.chunk_char_len > 0 && c.data.chunk_char_overlap >= c.data.chunk_char_len) {
    r.error_key(data, "chunk_char_overlap",
                fmt::format("must be < data.chunk_char_len ({}), got {}: each chunk starts this many characters "
                            "before the last one ended, so the chunks would never advance",
                            c.data.chunk_char_len, c.data.chunk_char_overlap));
  }
  r.get(data, "packing", c.data.packing, Need::Optional);
  r.get(data, "eval_fraction", c.data.eval_fraction, Need::Optional, in_unit_interval());
  r.get(data, "skip_invalid", c.data.skip_invalid, Need::Optional);
}

void read_lora(Reader& r, Section& root, Config& c) {
  Section& lora = r.open(root, "lora", Need::Required);
  r.get(lora, "r", c.lora.r, Need::Required, at_least<int64_t>(1));
  r.get(lora, "lora_alpha", c.lora.lora_alpha, Need::Required, above(0.0));
  r.get_target_modules(lora, c.lora.target_modules);
  r.get(lora, "lora_dropout", c.lora.lora_dropout, Need::Required, in_unit_interval());
  r.get(lora, "bias", c.lora.bias, Need::Required, one_of({"none", "all", "lora_only"}));
  r.get(lora, "task_type", c.lora.task_type, Need::Required, one_of({"CAUSAL_LM"}));
  r.get(lora, "use_rslora", c.lora.use_rslora, Need::Optional);
  r.get(lora, "use_dora", c.lora.use_dora, Need::Optional);
  r.get(lora, "loraplus_lr_ratio", c.lora.loraplus_lr_ratio, Need::Optional, above(0.0));
}

Section& read_trainer(Reader& r, Section& root, Config& c) {
  Section& t = r.open(root, "trainer", Need::Required);
  r.get(t, "batch_size", c.trainer.batch_size, Need::Required, at_least<int64_t>(1));
  r.get(t, "gradient_accumulation_steps", c.trainer.gradient_accumulation_steps, Need::Required, at_least<int64_t>(1));
  r.get(t, "warmup_steps", c.trainer.warmup_steps, Need::Required, at_least<int64_t>(0));
  r.get(t, "num_train_epochs", c.trainer.num_train_epochs, Need::Required, above(0.0));
  r.get(t, "learning_rate", c.trainer.learning_rate, Need::Required, above(0.0));
  r.get(t, "logging_steps", c.trainer.logging_steps, Need::Required, at_least<int64_t>(1));
  r.get(t, "seed", c.trainer.seed, Need::Optional, at_least<int64_t>(0));
  r.get(t, "max_steps", c.trainer.max_steps, Need::Optional, at_least<int64_t>(0));
  r.get(t, "max_grad_norm", c.trainer.max_grad_norm, Need::Optional, at_least(0.0));
  r.get(t, "weight_decay", c.trainer.weight_decay, Need::Optional, at_least(0.0));
  r.get(t, "lr_scheduler", c.trainer.lr_scheduler, Need::Optional, one_of({"linear", "cosine", "constant"}));
  r.get(t, "adam_beta1", c.trainer.adam_beta1, Need::Optional, in_unit_interval());
  r.get(t, "adam_beta2", c.trainer.adam_beta2, Need::Optional, in_unit_interval());
  r.get(t, "adam_epsilon", c.trainer.adam_epsilon, Need::Optional, above(0.0));
  r.get(t, "eval_steps", c.trainer.eval_steps, Need::Optional, at_least<int64_t>(0));
  r.get(t, "gradient_checkpointing", c.trainer.gradient_checkpointing, Need::Optional);
  r.get(t, "loss_chunk_tokens", c.trainer.loss_chunk_tokens, Need::Optional, at_least<int64_t>(0));
  r.get(t, "offload_activations", c.trainer.offload_activations, Need::Optional);
  r.get(t, "device", c.trainer.device, Need::Optional, one_of({"auto", "cpu", "cuda"}));
  r.get(t, "bf16", c.trainer.bf16, Need::Optional);
  return t;
}

// herd's own sections; every key optional.
void read_quantization(Reader& r, Section& root, Config& c) {
  Section& q = r.open(root, "quantization", Need::Optional);
  r.get(q, "enabled", c.quantization.enabled, Need::Optional);
  r.get(q, "quant_type", c.quantization.quant_type, Need::Optional,
        Check<std::string>([](const std::string& v) -> std::optional<std::string> {
          if (v == "nf4") return std::nullopt;
          if (v == "fp4") return "fp4 is not supported: herd quantizes to nf4 only";
          return fmt::format("must be nf4, got {}", c_quoted(v));
        }));
  r.get(q, "double_quant", c.quantization.double_quant, Need::Optional);
  r.get(q, "compute_dtype", c.quantization.compute_dtype, Need::Optional, one_of({"bfloat16", "float16", "float32"}));
}

Section& read_distributed(Reader& r, Section& root, Config& c) {
  Section& d = r.open(root, "distributed", Need::Optional);
  r.get(d, "world_size", c.distributed.world_size, Need::Optional, at_least<int64_t>(1));
  r.get(d, "backend", c.distributed.backend, Need::Optional, one_of({"auto", "nccl", "gloo"}));
  r.get(d, "sharding", c.distributed.sharding, Need::Optional, one_of({"full_shard", "no_shard"}));
  r.get(d, "min_workers", c.distributed.min_workers, Need::Optional, at_least<int64_t>(0));
  r.get(d, "heartbeat_timeout_s", c.distributed.heartbeat_timeout_s, Need::Optional, above(0.0));
  r.get(d, "collective_timeout_s", c.distributed.collective_timeout_s, Need::Optional, above(0.0));
  r.get(d, "replacement_timeout_s", c.distributed.replacement_timeout_s, Need::Optional, at_least<double>(0.0));
  r.get(d, "regrow", c.distributed.regrow, Need::Optional);
  r.get(d, "regrow_after_s", c.distributed.regrow_after_s, Need::Optional, at_least<double>(0.0));
  return d;
}

void read_checkpoint(Reader& r, Section& root, Config& c) {
  Section& ck = r.open(root, "checkpoint", Need::Optional);
  r.get(ck, "every_steps", c.checkpoint.every_steps, Need::Optional, at_least<int64_t>(1));
  r.get(ck, "keep_last", c.checkpoint.keep_last, Need::Optional, at_least<int64_t>(1));
  r.get(ck, "resume", c.checkpoint.resume, Need::Optional, one_of({"never", "auto"}));
}

void read_security(Reader& r, Section& root, Config& c) {
  Section& sec = r.open(root, "security", Need::Optional);
  r.get(sec, "token", c.security.token, Need::Optional, not_empty());
  r.get(sec, "token_file", c.security.token_file, Need::Optional, not_empty());
  r.get(sec, "tls_cert", c.security.tls_cert, Need::Optional, not_empty());
  r.get(sec, "tls_key", c.security.tls_key, Need::Optional, not_empty());
  r.get(sec, "tls_ca", c.security.tls_ca, Need::Optional, not_empty());
  r.get(sec, "tls_server_name", c.security.tls_server_name, Need::Optional, not_empty());
  if (c.security.tls_cert.empty() != c.security.tls_key.empty()) {
    r.error_key(sec, c.security.tls_cert.empty() ? "tls_key" : "tls_cert",
                "tls_cert and tls_key go together: give both or neither");
  }
}

void read_metrics(Reader& r, Section& root, Config& c) {
  Section& m = r.open(root, "metrics", Need::Optional);
  r.get(m, "enabled", c.metrics.enabled, Need::Optional);
  r.get(m, "port", c.metrics.port, Need::Optional, Check<int64_t>([](const int64_t& v) -> std::optional<std::string> {
          if (v < 1 || v > 65535) return fmt::format("must be a TCP port in 1..65535, got {}", v);
          return std::nullopt;
        }));
  r.get(m, "worker_port", c.metrics.worker_port, Need::Optional,
        Check<int64_t>([](const int64_t& v) -> std::optional<std::string> {
          if (v < 0 || v > 65535) return fmt::format("must be a TCP port in 1..65535, or 0 for none, got {}", v);
          return std::nullopt;
        }));
  r.get(m, "peak_tflops", c.metrics.peak_tflops, Need::Optional, at_least<double>(0.0));
  r.get(m, "tensorboard", c.metrics.tensorboard, Need::Optional);
}

void read_all(Reader& r, Section& root, Config& c) {
  // The seed's keys, with the meaning they had in llm_qlora.
  r.get(root, "model_name", c.model_name, Need::Required, not_empty());
  r.get(root, "base_model", c.base_model, Need::Required, not_empty());
  r.get(root, "model_family", c.model_family, Need::Optional, one_of({"llama"}));
  r.get(root, "model_context_window", c.model_context_window, Need::Optional, at_least<int64_t>(1));

  read_data(r, root, c);
  read_lora(r, root, c);
  Section& t = read_trainer(r, root, c);
  r.get(root, "trainer_output_dir", c.trainer_output_dir, Need::Required, not_empty());
  r.get(root, "model_output_dir", c.model_output_dir, Need::Required, not_empty());

  read_quantization(r, root, c);
  Section& d = read_distributed(r, root, c);
  read_checkpoint(r, root, c);
  read_security(r, root, c);
  read_metrics(r, root, c);

  // Rules that span keys.
  if (c.distributed.min_workers > c.distributed.world_size) {
    r.error_key(d, "min_workers",
                fmt::format("must be <= distributed.world_size ({}), got {}", c.distributed.world_size,
                            c.distributed.min_workers));
  }
  if (c.trainer.offload_activations && !c.trainer.gradient_checkpointing) {
    r.error_key(t, "offload_activations", "offloads the inputs gradient_checkpointing keeps: needs "
                                          "trainer.gradient_checkpointing: true");
  }
  if (c.trainer.eval_steps > 0 && c.data.eval_fraction == 0) {
    r.error_key(t, "eval_steps", "needs data.eval_fraction > 0 to hold out an eval split");
  }
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& name) {
  Reader r(name);
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    r.error(e.mark.line + 1, e.mark.column + 1, "", "invalid YAML: " + e.msg);
    throw ConfigError(r.diagnostics());
  }
  if (!root.IsDefined() || root.IsNull()) {
    r.error(0, 0, "", "the config is empty");
    throw ConfigError(r.diagnostics());
  }
  if (!root.IsMap()) {
    r.error_at(root, "", "the config must be a mapping of keys at the top level");
    throw ConfigError(r.diagnostics());
  }
  Config c;
  c.source = name;
  c.text = yaml_text;
  Section& top = r.open_root(root);
  read_all(r, top, c);
  r.check_keys();
  if (!r.diagnostics().empty()) {
    auto diagnostics = r.diagnostics();
    std::stable_sort(diagnostics.begin(), diagnostics.end(),
                     [](const ConfigDiagnostic& a, const ConfigDiagnostic& b) { return a.line < b.line; });
    throw ConfigError(std::move(diagnostics));
  }
  c.resolved = r.take_resolved();
  for (auto& v : c.resolved) {
    if (v.key == "security.token" && v.origin != "default") v.value = "<redacted>";
  }
  if (c.distributed.min_workers == 0) c.distributed.min_workers = c.distributed.world_size;
  return c;
}

Config load_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(
        {{path.string(), 0, 0, "", std::filesystem::exists(path) ? "cannot read the file" : "no such file"}});
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_config(buffer.str(), path.string());
}

std::map<std::string, std::string> shared_settings(const Config& config) {
  auto shared = [](const std::string& key) {
    for (const char* section : {"lora.", "quantization.", "trainer."}) {
      if (key.rfind(section, 0) == 0) return key != "trainer.device";
    }
    return key == "model_context_window" || key == "distributed.backend" || key == "distributed.sharding" ||
           key == "checkpoint.every_steps";
  };
  std::map<std::string, std::string> out;
  for (const auto& v : config.resolved) {
    if (shared(v.key)) out[v.key] = v.value;
  }
  return out;
}

}  // namespace herd
