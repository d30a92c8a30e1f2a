#include "worker/model/peft_adapter.h"

#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/safetensors.h"
#include "worker/model/tensor_view.h"

namespace herd::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  throw ModelConfigError(fmt::format("{}: {}", file.string(), what));
}

}  // namespace

LoraOptions read_adapter_config(const fs::path& adapter_dir) {
  const fs::path file = adapter_dir / "adapter_config.json";
  std::ifstream in(file);
  if (!in) fail(file, "cannot read (is this a peft adapter directory?)");
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(file, "not a JSON object");
  if (j.value("peft_type", "") != "LORA") fail(file, "peft_type: herd reads LORA adapters only");
  auto need_number = [&](const char* key) {
    if (!j.contains(key) || !j[key].is_number()) fail(file, fmt::format("{}: missing or not a number", key));
    return j[key].get<double>();
  };
  LoraOptions o;
  o.r = static_cast<int64_t>(need_number("r"));
  o.lora_alpha = need_number("lora_alpha");
  o.dropout = j.contains("lora_dropout") ? need_number("lora_dropout") : 0.0;
  o.use_rslora = j.value("use_rslora", false);
  o.use_dora = j.value("use_dora", false);
  if (o.r <= 0) fail(file, "r: must be positive");
  if (j.value("fan_in_fan_out", false)) fail(file, "fan_in_fan_out: not supported by herd");
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (j.contains(key) && !j[key].is_null() && !j[key].empty())
      fail(file, fmt::format("{}: not supported by herd", key));
  }
  const json& t = j.contains("target_modules") ? j["target_modules"] : json();
  o.target_modules.clear();
  if (t.is_string() && t.get<std::string>() == "all-linear") {
    o.target_modules = linear_modules();
  } else if (t.is_array()) {
    for (const auto& m : t) {
      if (!m.is_string() ||
          std::find(linear_modules().begin(), linear_modules().end(), m.get<std::string>()) == linear_modules().end()) {
        fail(file, fmt::format("target_modules: {} is not a Llama linear module", m.dump()));
      }
      o.target_modules.push_back(m.get<std::string>());
    }
  }
  if (o.target_modules.empty()) fail(file, "target_modules: expected a list of module names");
  return o;
}

void save_adapter(Llama& model, const fs::path& adapter_dir, const std::string& base_model,
                  const std::string& task_type, const std::string& bias) {
  const auto& lora = model.options().lora;
  if (!lora) throw ModelConfigError("save_adapter: the model has no LoRA adapters");
  fs::create_directories(adapter_dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (auto& [name, t] : model.lora_tensors()) {
    auto c = t.detach().to(torch::kFloat32).contiguous().cpu();
    w.add(name, DType::F32, c.sizes().vec(), c.data_ptr(), c.nbytes());
  }
  w.write(adapter_dir / "adapter_model.safetensors");
  json config = {{"base_model_name_or_path", base_model},
                 {"peft_type", "LORA"},
                 {"task_type", task_type},
                 {"r", lora->r},
                 {"lora_alpha", lora->lora_alpha},
                 {"lora_dropout", lora->dropout},
                 {"target_modules", lora->target_modules},
                 {"bias", bias},
                 {"fan_in_fan_out", false},
                 {"inference_mode", true},
                 {"modules_to_save", nullptr},
                 {"init_lora_weights", true},
                 {"layers_to_transform", nullptr},
                 {"layers_pattern", nullptr},
                 {"revision", nullptr},
                 {"use_rslora", lora->use_rslora},
                 {"use_dora", lora->use_dora},
                 {"rank_pattern", json::object()},
                 {"alpha_pattern", json::object()}};
  write_file(adapter_dir / "adapter_config.json", config.dump(2) + "\n");
}

void load_adapter_weights(Llama& model, const fs::path& adapter_dir) {
  fs::path file = adapter_dir / "adapter_model.safetensors";
  if (!fs::exists(file) && fs::exists(adapter_dir / "adapter_model.bin")) file = adapter_dir / "adapter_model.bin";
  auto f = SafetensorsFile::open(file);  // a .bin is refused there with the conversion hint
  std::set<std::string> expected;
  for (auto& [name, t] : model.lora_tensors()) {
    expected.insert(name);
    if (!f->contains(name)) fail(file, fmt::format("tensor '{}' is missing", name));
    const TensorView& v = f->tensor(name);
    if (v.shape != t.sizes().vec()) {
      fail(file, fmt::format("tensor '{}' is [{}] but the model needs [{}]", name, fmt::join(v.shape, ", "),
                             fmt::join(t.sizes().vec(), ", ")));
    }
    if (!is_float(v.dtype)) fail(file, fmt::format("tensor '{}' is not a float tensor", name));
    torch::NoGradGuard no_grad;
    t.copy_(view_tensor(v).to(torch::kFloat32));
  }
  for (const auto& name : f->names()) {
    if (!expected.count(name)) fail(file, fmt::format("tensor '{}' matches no LoRA module of the model", name));
  }
}

std::vector<std::pair<std::string, std::vector<int64_t>>> adapter_layout(const LlamaConfig& config,
                                                                         const LoraOptions& lora) {
  const auto& modules = lora.target_modules;
  const int64_t r = lora.r;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    for (const auto& m : linear_modules()) {
      if (std::find(modules.begin(), modules.end(), m) == modules.end()) continue;
      auto [o, in] = config.linear_shape(m);
      const std::string base = "base_model.model." + module_path(i, m);
      out.push_back({base + ".lora_A.weight", {r, in}});
      out.push_back({base + ".lora_B.weight", {o, r}});
      if (lora.use_dora) out.push_back({base + ".lora_magnitude_vector", {o}});
    }
  }
  return out;
}

Llama load_with_adapter(const std::filesystem::path& model_dir, LoadOptions options,
                        const std::filesystem::path& adapter_dir) {
  if (adapter_dir.empty()) return Llama::load(model_dir, options);
  options.lora = read_adapter_config(adapter_dir);
  auto model = Llama::load(model_dir, options);
  load_adapter_weights(model, adapter_dir);
  return model;
}

}  // namespace herd::model
