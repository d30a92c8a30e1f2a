// herd eval CONFIG [--adapter DIR] [--data FILE]: the held-out loss as training measures it;
// herd eval MODEL [--adapter DIR] --data TEXT: mean next-token loss over a text file's lines.
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/model_commands.h"
#include "cli/model_flags.h"
#include "common/config.h"
#include "launch/evaluate.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

struct EvalFlags {
  ModelFlags model;
  std::string target, data;
  bool json = false;
};

void eval_config(EvalFlags& f) {
  f.model.refuse_loading_flags();
  const Config config = load_config(f.target);
  const auto r = launch::evaluate(
      config, {f.model.adapter, f.data, f.model.device_option->count() > 0 ? f.model.device : ""});
  std::vector<std::string> files;
  for (const auto& file : r.data_files) files.push_back(file.string());
  if (f.json) {
    const nlohmann::json doc = {{"config", f.target},    {"adapter", f.model.adapter}, {"data", files},
                                {"split", r.split},      {"device", r.device},         {"samples", r.samples},
                                {"tokens", r.predicted}, {"loss", r.loss},             {"perplexity", std::exp(r.loss)}};
    std::cout << doc.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("eval: {} of {}: {} samples, {} predicted tokens: loss {:.6f}, perplexity {:.4f}\n",
                           r.split, fmt::join(files, ", "), r.samples, r.predicted, r.loss, std::exp(r.loss));
}

void eval_model(EvalFlags& f) {
  if (f.data.empty()) throw std::invalid_argument("with a MODEL directory, --data TEXT_FILE is required");
  f.model.dir = f.target;
  const auto model = f.model.load();
  const auto tokenizer = Tokenizer::load(tokenizer_file(f.model.dir));
  const auto r = launch::evaluate_text(model, *tokenizer, f.data);
  if (f.json) {
    const nlohmann::json doc = {{"model", f.model.dir}, {"adapter", f.model.adapter}, {"quantized", !f.model.plain},
                                {"samples", r.samples}, {"tokens", r.tokens},         {"truncated", r.truncated},
                                {"loss", r.loss},       {"perplexity", std::exp(r.loss)}};
    std::cout << doc.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("eval: {} samples, {} predicted tokens: loss {:.6f}, perplexity {:.4f}\n", r.samples,
                           r.tokens, r.loss, std::exp(r.loss));
}

}  // namespace

void add_eval_command(CLI::App& app, int& rc) {
  auto f = std::make_shared<EvalFlags>();
  auto* eval = app.add_subcommand("eval", "Mean token loss and perplexity of a model (and adapter): a config's "
                                          "held-out conversations, or a text file");
  eval->add_option("target", f->target,
                   "A job's YAML config (its data formatted, masked and batched as training does), or a model "
                   "directory (config.json, safetensors, tokenizer.model)")
      ->required()
      ->check(CLI::ExistingPath);
  f->model.add_to(eval, /*positional=*/false);
  eval->add_option("--data", f->data,
                   "With a CONFIG: a data file of its data.type, every sample of it instead of the eval split; with a "
                   "MODEL: a text file, one sample per line")
      ->check(CLI::ExistingPath);
  eval->add_flag("--json", f->json, "Print JSON");
  eval->callback([&rc, f] {
    rc = guarded("eval", [&] { fs::is_regular_file(f->target) ? eval_config(*f) : eval_model(*f); });
  });
}

}  // namespace herd::cli
