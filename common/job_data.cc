#include "common/job_data.h"

#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/conversation.h"
#include "common/hf_cache.h"

namespace herd {

namespace fs = std::filesystem;

size_t default_context(const fs::path& model_dir) {
  for (auto [file, key] :
       {std::pair{"tokenizer_config.json", "model_max_length"}, std::pair{"config.json", "max_position_embeddings"}}) {
    std::ifstream in(model_dir / file);
    if (!in) continue;
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object() && j.contains(key) && j[key].is_number_unsigned()) return j[key].get<size_t>();
  }
  return 4096;
}

fs::path data_file(const fs::path& p) {
  if (!fs::is_directory(p)) return p;
  std::vector<fs::path> found;
  for (const auto& e : fs::recursive_directory_iterator(p)) {
    auto ext = e.path().extension();
    if (e.is_regular_file() && (ext == ".json" || ext == ".jsonl")) found.push_back(e.path());
  }
  if (found.size() != 1) {
    throw DatasetError(fmt::format("{}: expected one .json or .jsonl file, found {}", p.string(), found.size()));
  }
  return found[0];
}

JobData job_data(const Config& c) {
  JobData d;
  d.settings.format.user_header = c.data.user_header;
  d.settings.format.response_header = c.data.response_header;
  d.settings.train_on_inputs = c.data.train_on_inputs;
  d.settings.skip_invalid = c.data.skip_invalid;
  d.data_file = data_file(resolve_hub_path(c.data.dataset, HubRepoType::Dataset, "data.dataset"));
  const fs::path model = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
  d.tokenizer_model = fs::is_directory(model) ? model / "tokenizer.model" : model;
  d.settings.context_window = c.model_context_window > 0 ? static_cast<size_t>(c.model_context_window)
                                                         : default_context(d.tokenizer_model.parent_path());
  d.cache_dir = fs::path(c.trainer_output_dir) / "data-cache";
  return d;
}

}  // namespace herd
