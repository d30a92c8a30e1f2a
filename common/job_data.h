// Where a job's data comes from, as its config says: the data file (raw_text: the
// text files), the tokenizer, the context window, the formatting and the token cache
// directory.
// `herd data` and the coordinator read the data through this one resolution.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <vector>

#include "common/token_cache.h"

namespace herd {

struct Config;

struct JobData {
  std::vector<std::filesystem::path> data_files;
  std::filesystem::path tokenizer, cache_dir;  // tokenizer: the file (tokenizer_file in common/tokenizer.h)
  DatasetSettings settings;                    // the format is completed by load_format (it needs the tokenizer)
};

// Resolves hub ids (common/hf_cache.h); throws HubNotFound / DatasetError.
JobData job_data(const Config& config);

// Completes `settings.format` from the tokenizer's folder: prompt_style seed, the
// tokenizer's EOS string; chat_template, the model's template (ChatTemplate::load,
// whose errors it throws). Returns the tokenizer it loaded.
std::unique_ptr<Tokenizer> load_format(DatasetSettings& settings, const std::filesystem::path& tokenizer_file);

// The model's context window when the config does not set one: tokenizer_config.json's
// model_max_length (what the seed's trainer used), else config.json's
// max_position_embeddings, else 4096.
size_t default_context(const std::filesystem::path& model_dir);

// A dataset directory (a hub snapshot) must hold exactly one .json or .jsonl file
// (Parquet files are refused with a way to convert them: no Parquet reader ships
// with Debian 12).
std::filesystem::path data_file(const std::filesystem::path& path);

}  // namespace herd
