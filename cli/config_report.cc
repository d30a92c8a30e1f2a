#include "cli/config_report.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "common/hf_cache.h"

namespace herd::cli {

namespace {

struct PathReport {
  std::string key;
  std::string ref;
  std::string resolved;  // empty when not found
  std::string problem;
};

std::vector<PathReport> resolve_paths(const Config& c) {
  std::vector<PathReport> out;
  auto one = [&](const std::string& key, const std::string& ref, HubRepoType type) {
    PathReport r{key, ref, "", ""};
    try {
      r.resolved = resolve_hub_path(ref, type, key).string();
    } catch (const HubNotFound& e) {
      r.problem = e.what();
    }
    out.push_back(std::move(r));
  };
  one("base_model", c.base_model, HubRepoType::Model);
  if (c.data.type != "raw_text") {
    one("data.dataset", c.data.dataset, HubRepoType::Dataset);
    return out;
  }
  for (size_t i = 0; i < c.data.text_files.size(); ++i) {
    const std::string& f = c.data.text_files[i];
    const std::string key = fmt::format("data.text_files[{}]", i);
    out.push_back({key, f, std::filesystem::is_regular_file(f) ? std::filesystem::absolute(f).string() : "",
                   std::filesystem::is_regular_file(f) ? "" : fmt::format("{}: {}: no such file", key, f)});
  }
  return out;
}

}  // namespace

std::string config_table(const Config& c) {
  size_t key_width = 3, value_width = 5;
  for (const auto& v : c.resolved) {
    key_width = std::max(key_width, v.key.size());
    value_width = std::max(value_width, std::min<size_t>(v.value.size(), 48));
  }
  std::string out = fmt::format("config {}\n\n{:<{}}  {:<{}}  {}\n", c.source.string(), "key", key_width, "value",
                                value_width, "origin");
  for (const auto& v : c.resolved) {
    out += fmt::format("{:<{}}  {:<{}}  {}\n", v.key, key_width, v.value, value_width, v.origin);
  }
  out += fmt::format("\nderived\n  lora scaling          {} (lora_alpha / {})\n", c.lora.scaling(),
                     c.lora.use_rslora ? "sqrt(r)" : "r");
  out += fmt::format("  global batch          {} samples (batch_size x gradient_accumulation_steps x world_size)\n",
                     c.trainer.batch_size * c.trainer.gradient_accumulation_steps * c.distributed.world_size);
  out += fmt::format("  adapter output        {}\n", c.adapter_dir().string());
  out += "\npaths\n";
  for (const auto& p : resolve_paths(c)) {
    if (!p.resolved.empty()) {
      out += fmt::format("  {:<20}  {} -> {}\n", p.key, p.ref, p.resolved);
    } else {
      out += fmt::format("  {:<20}  {} -> not available here (training needs it):\n", p.key, p.ref);
      std::string indented = p.problem;
      for (size_t pos = 0; (pos = indented.find('\n', pos)) != std::string::npos; pos += 1) {
        indented.insert(pos + 1, "      ");
      }
      out += "      " + indented + "\n";
    }
  }
  return out;
}

nlohmann::json config_json(const Config& c) {
  nlohmann::json values = nlohmann::json::array();
  for (const auto& v : c.resolved) values.push_back({{"key", v.key}, {"value", v.value}, {"origin", v.origin}});
  nlohmann::json paths = nlohmann::json::object();
  for (const auto& p : resolve_paths(c)) {
    paths[p.key] = {{"ref", p.ref},
                    {"resolved", p.resolved.empty() ? nlohmann::json() : nlohmann::json(p.resolved)},
                    {"problem", p.problem}};
  }
  return {{"file", c.source.string()},
          {"values", values},
          {"derived",
           {{"lora_scaling", c.lora.scaling()},
            {"global_batch", c.trainer.batch_size * c.trainer.gradient_accumulation_steps * c.distributed.world_size},
            {"adapter_dir", c.adapter_dir().string()}}},
          {"paths", paths}};
}

}  // namespace herd::cli
