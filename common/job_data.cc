#include "common/job_data.h"

#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/conversation.h"
#include "common/hf_cache.h"
#include "common/tokenizer.h"

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
  if (found.empty()) {
    for (const auto& e : fs::recursive_directory_iterator(p)) {
      if (e.is_regular_file() && e.path().extension() == ".parquet") {
        throw DatasetError(fmt::format(
            "{}: holds Parquet files ({}), which herd does not read; convert them to JSON Lines, e.g. python3 -c "
            "\"import pandas; pandas.read_parquet('{}').to_json('data.jsonl', orient='records', lines=True)\"",
            p.string(), e.path().filename().string(), e.path().string()));
      }
    }
  }
  if (found.size() != 1) {
    throw DatasetError(fmt::format("{}: expected one .json or .jsonl file, found {}", p.string(), found.size()));
  }
  return found[0];
}

std::unique_ptr<Tokenizer> load_format(DatasetSettings& settings, const fs::path& tokenizer_file) {
  auto tokenizer = Tokenizer::load(tokenizer_file);
  if (settings.prompt_style == "chat_template") {
    settings.format.chat_template = ChatTemplate::load(tokenizer_file.parent_path());
  } else {
    settings.format.eos = tokenizer->eos_piece();
  }
  return tokenizer;
}

JobData job_data(const Config& c) {
  JobData d;
  d.settings.type = c.data.type;
  d.settings.prompt_style = c.data.prompt_style;
  d.settings.format.user_header = c.data.user_header;
  d.settings.format.response_header = c.data.response_header;
  d.settings.format.system_header = c.data.system_header;
  d.settings.format.instruction_header = c.data.instruction_header;
  d.settings.raw = {static_cast<size_t>(c.data.chunk_char_len), static_cast<size_t>(c.data.chunk_char_overlap),
                    c.data.chunk_prefix};
  d.settings.train_on_inputs = c.data.train_on_inputs;
  d.settings.skip_invalid = c.data.skip_invalid;
  if (c.data.type == "raw_text") {
    for (size_t i = 0; i < c.data.text_files.size(); ++i) {
      const fs::path f = c.data.text_files[i];
      if (!fs::is_regular_file(f)) {
        throw DatasetError(fmt::format("data.text_files[{}]: {}: no such file", i, f.string()));
      }
      d.data_files.push_back(f);
    }
  } else {
    d.data_files = {data_file(resolve_hub_path(c.data.dataset, HubRepoType::Dataset, "data.dataset"))};
  }
  const fs::path model = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
  d.tokenizer = tokenizer_file(model, /*sentencepiece_first=*/c.model_family == "llama");
  d.settings.context_window = c.model_context_window > 0 ? static_cast<size_t>(c.model_context_window)
                                                         : default_context(d.tokenizer.parent_path());
  d.cache_dir = fs::path(c.trainer_output_dir) / "data-cache";
  return d;
}

}  // namespace herd
