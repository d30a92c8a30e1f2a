#include "cli/model_report.h"

#include <fmt/format.h>

#include "common/chat_template.h"
#include "common/hf_cache.h"
#include "common/tokenizer.h"
#include "worker/model/llama_config.h"

namespace herd::cli {

namespace fs = std::filesystem;

std::optional<ModelReport> model_report(const Config& c) {
  fs::path dir;
  try {
    dir = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
  } catch (const HubNotFound&) {
    return std::nullopt;  // the paths section says where it was looked for
  }
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.json")) return std::nullopt;  // e.g. a bare snapshot
  ModelReport r;
  r.dir = dir.string();
  try {
    const auto shape = model::LlamaConfig::from_file(dir / "config.json");
    r.family = shape.family->name;
    r.architecture = shape.family->architecture;
    r.model_vocab = shape.vocab_size;
  } catch (const model::ModelConfigError& e) {
    throw std::invalid_argument(e.what());
  }
  if (c.model_family == "llama" && r.family != "llama") {
    throw std::invalid_argument(fmt::format(
        "{}: model_family: llama (the seed's Llama classes), but {} is a {}; leave model_family out to train it as "
        "its config.json says",
        c.source.string(), (dir / "config.json").string(), r.architecture));
  }
  const fs::path file = tokenizer_file(dir, /*sentencepiece_first=*/c.model_family == "llama");
  const auto tokenizer = Tokenizer::load(file);
  r.tokenizer_file = file.string();
  r.tokenizer_kind = tokenizer->kind();
  r.tokenizer_vocab = tokenizer->vocab_size();
  if (r.tokenizer_vocab > r.model_vocab) {
    throw std::invalid_argument(fmt::format("{}: {} ids, more than the model's vocab_size {} ({})", r.tokenizer_file,
                                            r.tokenizer_vocab, r.model_vocab, (dir / "config.json").string()));
  }
  // data.prompt_style chat_template: the template is read (and a construct herd cannot render refused) now.
  if (c.data.prompt_style == "chat_template") r.chat_template = ChatTemplate::load(file.parent_path())->origin();
  return r;
}

std::string ModelReport::table() const {
  return fmt::format(
      "\nmodel\n  family                {} ({})\n  tokenizer             {} ({}, {} ids)\n  vocab_size            {}\n"
      "  chat template         {}\n",
      family, architecture, tokenizer_file, tokenizer_kind, tokenizer_vocab, model_vocab,
      chat_template.empty() ? "not used (data.prompt_style seed)" : chat_template);
}

nlohmann::json ModelReport::json() const {
  return {{"dir", dir},
          {"family", family},
          {"architecture", architecture},
          {"tokenizer", {{"file", tokenizer_file}, {"kind", tokenizer_kind}, {"vocab_size", tokenizer_vocab}}},
          {"vocab_size", model_vocab},
          {"chat_template", chat_template.empty() ? nlohmann::json() : nlohmann::json(chat_template)}};
}

}  // namespace herd::cli
