// What `herd config check` and `herd train` say of a config's base model when it is
// here: its family and architecture (config.json), its tokenizer's file, kind and
// vocabulary. A model herd cannot train with this config is refused here, before
// anything starts.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/config.h"

namespace herd::cli {

struct ModelReport {
  std::string dir;  // the resolved base_model
  std::string family, architecture;
  std::string tokenizer_file, tokenizer_kind;
  int64_t tokenizer_vocab = 0, model_vocab = 0;
  std::string chat_template;  // the file it is read from (data.prompt_style chat_template), else empty

  std::string table() const;
  nlohmann::json json() const;
};

// Nothing when base_model is not here (a hub id not downloaded yet, a folder without
// config.json). Throws
// std::invalid_argument naming the file and key for an architecture herd does not
// train (listing those it does), `model_family: llama` on another family, a tokenizer
// that does not read, or one with more ids than the model's embedding; throws
// ChatTemplateError for a chat template that is missing or cannot be rendered.
std::optional<ModelReport> model_report(const Config& config);

}  // namespace herd::cli
