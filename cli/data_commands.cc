#include "cli/data_commands.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/conversation.h"
#include "common/hf_cache.h"
#include "common/job_data.h"
#include "common/packing.h"
#include "common/token_cache.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

struct InspectFlags {
  std::string config, data, tokenizer, cache_dir, prompt_style;
  size_t samples = 3;
  size_t context = 0;
  bool json = false;
  bool mask_inputs = false;
};

// The formatted text with every byte of a masked token between « and ».
std::string show_mask(const Tokenizer& tok, const FormattedConversation& f, const TokenizedSample& s) {
  std::vector<Tokenizer::Span> spans;
  tok.encode(f.text, !f.templated, &spans);
  std::vector<bool> masked(f.text.size(), false);
  for (size_t i = 0; i < s.ids.size(); ++i) {
    for (uint32_t b = spans[i].begin; b < spans[i].end; ++b) masked[b] = !s.mask[i];
  }
  std::string out;
  bool in = false;
  for (size_t b = 0; b < f.text.size(); ++b) {
    if (masked[b] != in) {
      out += masked[b] ? "«" : "»";
      in = masked[b];
    }
    out += f.text[b];
  }
  return out + (in ? "»" : "");
}

// "a.txt, b.txt"
std::string joined(const std::vector<fs::path>& files) {
  std::string out;
  for (const auto& f : files) out += (out.empty() ? "" : ", ") + f.string();
  return out;
}

// What a config (or the flags) say about the data: the files and the settings.
struct DataInputs {
  std::vector<fs::path> data_files;
  fs::path tokenizer, cache_dir;
  DatasetSettings settings;
  bool packing = false;
  double eval_fraction = 0;
  uint64_t seed = 42;
};

DataInputs resolve_inputs(const InspectFlags& flags) {
  DataInputs in;
  in.settings.train_on_inputs = !flags.mask_inputs;
  if (!flags.config.empty()) {
    const Config c = load_config(flags.config);
    JobData d = job_data(c);
    in.data_files = d.data_files;
    in.tokenizer = d.tokenizer;
    in.cache_dir = d.cache_dir;
    in.settings = d.settings;
    in.packing = c.data.packing;
    in.eval_fraction = c.data.eval_fraction;
    in.seed = static_cast<uint64_t>(c.trainer.seed);
  } else if (flags.data.empty() || flags.tokenizer.empty()) {
    throw std::invalid_argument("give a CONFIG, or both --data FILE and --tokenizer MODEL");
  }
  // Flags override the config.
  if (!flags.data.empty()) in.data_files = {in.settings.type == "raw_text" ? fs::path(flags.data) : data_file(flags.data)};
  if (!flags.tokenizer.empty()) {
    const fs::path t = flags.tokenizer;
    in.tokenizer = tokenizer_file(t);
    if (flags.config.empty()) in.settings.context_window = default_context(in.tokenizer.parent_path());
  }
  if (flags.context > 0) in.settings.context_window = flags.context;
  if (!flags.prompt_style.empty()) in.settings.prompt_style = flags.prompt_style;
  if (!flags.cache_dir.empty()) in.cache_dir = flags.cache_dir;
  if (in.cache_dir.empty()) in.cache_dir = "data-cache";
  return in;
}

int inspect(const InspectFlags& flags) {
  DataInputs in = resolve_inputs(flags);
  const auto tok = load_format(in.settings, in.tokenizer);
  const FormatOptions& format = in.settings.format;
  const bool train_on_inputs = in.settings.train_on_inputs;
  const size_t context = in.settings.context_window;
  const std::string data = joined(in.data_files);

  ReadReport report;
  const auto samples =
      read_samples(in.settings.type, in.data_files, format, in.settings.raw, in.settings.skip_invalid, &report);
  std::vector<size_t> lengths;
  size_t truncated = 0, targets = 0;
  nlohmann::json all = nlohmann::json::array();
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& c = samples[i];
    const auto& f = c.formatted;
    const auto s = tokenize_conversation(*tok, f, train_on_inputs, context);
    lengths.push_back(s.ids.size());
    truncated += s.truncated;
    targets += static_cast<size_t>(std::count(s.mask.begin(), s.mask.end(), 1));
    if (flags.json) {
      all.push_back({{"record", c.record},
                     {"id", c.id},
                     {"text", f.text},
                     {"token_ids", s.ids},
                     {"loss_mask", s.mask},
                     {"truncated", s.truncated}});
    } else if (i < flags.samples) {
      std::cout << fmt::format("== record {} (id {}): {} tokens{}, {} in the loss\n{}\n", c.record, c.id, s.ids.size(),
                               s.truncated ? " (truncated)" : "", std::count(s.mask.begin(), s.mask.end(), 1),
                               show_mask(*tok, f, s));
    }
  }
  if (flags.json) {
    std::cout << all.dump() << "\n";
    return 0;
  }
  std::vector<size_t> sorted = lengths;
  std::sort(sorted.begin(), sorted.end());
  size_t total = 0;
  for (size_t l : lengths) total += l;
  std::cout << fmt::format("«…» marks tokens outside the loss (data.train_on_inputs: {})\n\n",
                           train_on_inputs ? "true" : "false");
  std::cout << fmt::format("{}: {} records, {} samples (data.type {})", data, report.records, samples.size(),
                           in.settings.type);
  for (const auto& [reason, n] : report.skipped) std::cout << fmt::format(", {} skipped ({})", n, reason);
  if (!sorted.empty()) {
    std::cout << fmt::format(
        "\ntokens per sample: mean {:.1f}, median {}, max {}; {} tokens, {} in the loss\n"
        "truncated at the context window ({}): {}\n",
        static_cast<double>(total) / static_cast<double>(sorted.size()), sorted[sorted.size() / 2], sorted.back(),
        total, targets, context, truncated);
  }
  const auto split = split_eval(samples.size(), in.eval_fraction, in.seed);
  if (in.eval_fraction > 0) {
    std::cout << fmt::format("eval split (data.eval_fraction {}, seed {}): {} eval, {} train samples\n",
                             in.eval_fraction, in.seed, split.eval.size(), split.train.size());
  }
  if (in.packing && !split.train.empty()) {
    // The rows the coordinator trains: the train split, packed with the run's seed.
    const std::vector<uint32_t> lengths32(lengths.begin(), lengths.end());
    const auto rows = pack_train_split(split.train, lengths32, context, in.seed);
    size_t train_tokens = 0;
    for (size_t s : split.train) train_tokens += lengths[s];
    std::cout << fmt::format(
        "packing (data.packing): {} train samples in {} rows of {} tokens, {:.1f}% full\n", split.train.size(),
        rows.size(), context, 100.0 * static_cast<double>(train_tokens) / static_cast<double>(rows.size() * context));
  }
  return 0;
}

// Tokenize once into the cache (or find it there), and say which.
int tokenize(const InspectFlags& flags) {
  DataInputs in = resolve_inputs(flags);
  load_format(in.settings, in.tokenizer);
  const auto start = std::chrono::steady_clock::now();
  auto loaded = load_tokenized_dataset(in.data_files, in.tokenizer, in.settings, in.cache_dir);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double mb = 0;
  for (const auto& f : in.data_files) mb += static_cast<double>(fs::file_size(f)) / 1e6;
  const std::string data = joined(in.data_files);
  if (!loaded.rebuilt_because.empty()) {
    std::cerr << fmt::format("herd data tokenize: warning: {} was not used ({}); rebuilt it\n", loaded.file.string(),
                             loaded.rebuilt_because);
  }
  std::cout << fmt::format("{}: {} samples, {} tokens in {:.2f} s ({:.1f} MB/s of data): {} {}\n",
                           data, loaded.cache->samples(), loaded.cache->tokens(), seconds,
                           mb / seconds, loaded.built ? "tokenized into" : "cache hit:", loaded.file.string());
  std::cout << "read: " << loaded.cache->report() << "\n";
  return 0;
}

void add_prompt_style(CLI::App* cmd, std::string& style) {
  cmd->add_option("--prompt-style", style,
                  "seed (the ### HUMAN: headers) or chat_template (the model's own); default: the config's "
                  "data.prompt_style, else seed")
      ->check(CLI::IsMember({"seed", "chat_template"}));
}

}  // namespace

void add_data_commands(CLI::App& app, int& rc) {
  auto* data = app.add_subcommand("data", "Look at conversation data as training sees it");
  data->require_subcommand(1);
  auto flags = std::make_shared<InspectFlags>();
  auto* inspect_cmd = data->add_subcommand("inspect", "Formatted samples, token counts, masked spans and lengths");
  inspect_cmd->add_option("config", flags->config, "The job's YAML config")->check(CLI::ExistingFile);
  inspect_cmd->add_option("--data", flags->data,
                          "A data file of the config's data.type (without a config: Vicuna conversations)");
  inspect_cmd->add_option("--tokenizer", flags->tokenizer, "tokenizer.json, tokenizer.model or a model directory");
  inspect_cmd->add_option("--samples", flags->samples, "Samples to print")->capture_default_str();
  inspect_cmd->add_option("--context", flags->context, "Context window (default: the config's, else the model's)");
  inspect_cmd->add_flag("--mask-inputs", flags->mask_inputs, "Without a config: as data.train_on_inputs: false");
  add_prompt_style(inspect_cmd, flags->prompt_style);
  inspect_cmd->add_flag("--json", flags->json, "Every sample's text, token ids and loss mask as JSON");
  auto* tokenize_cmd = data->add_subcommand("tokenize", "Tokenize a dataset once into the cache (keyed by its inputs)");
  auto tflags = std::make_shared<InspectFlags>();
  tokenize_cmd->add_option("config", tflags->config, "The job's YAML config")->check(CLI::ExistingFile);
  tokenize_cmd->add_option("--data", tflags->data,
                           "A data file of the config's data.type (without a config: Vicuna conversations)");
  tokenize_cmd->add_option("--tokenizer", tflags->tokenizer, "tokenizer.json, tokenizer.model or a model directory");
  tokenize_cmd->add_option("--context", tflags->context, "Context window");
  tokenize_cmd->add_flag("--mask-inputs", tflags->mask_inputs, "Without a config: as data.train_on_inputs: false");
  add_prompt_style(tokenize_cmd, tflags->prompt_style);
  tokenize_cmd->add_option("--cache-dir", tflags->cache_dir,
                           "Cache directory (default: {trainer_output_dir}/data-cache, else ./data-cache)");
  tokenize_cmd->callback([&rc, tflags] {
    try {
      rc = tokenize(*tflags);
    } catch (const std::exception& e) {
      std::cerr << "herd data tokenize: " << e.what() << "\n";
      rc = 1;
    }
  });
  inspect_cmd->callback([&rc, flags] {
    try {
      rc = inspect(*flags);
    } catch (const std::exception& e) {
      std::cerr << "herd data inspect: " << e.what() << "\n";
      rc = 1;
    }
  });
}

}  // namespace herd::cli
