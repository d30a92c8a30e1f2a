#include "launch/evaluate.h"

#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/hf_cache.h"
#include "common/job_data.h"
#include "common/packing.h"
#include "common/tokenizer.h"
#include "coordinator/samples.h"
#include "worker/comm/store.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/step.h"
#include "worker/train/trainer.h"

namespace herd::launch {

namespace fs = std::filesystem;

namespace {

// --data FILE for the config's data type: a JSON data file is not raw text, and a
// dataset directory holds one data file (job_data.h).
fs::path data_for_type(const std::string& type, const fs::path& path) {
  if (type != "raw_text") return data_file(path);
  const auto ext = path.extension();
  if (fs::is_directory(path) || ext == ".json" || ext == ".jsonl") {
    throw std::invalid_argument(fmt::format(
        "--data {}: data.type raw_text reads plain text files, and this is {}; give a text file, or a config of the "
        "data's type",
        path.string(), fs::is_directory(path) ? "a directory" : "a JSON data file"));
  }
  return path;
}

}  // namespace

EvalReport evaluate(const Config& config, const EvalOptions& options) {
  JobData d = job_data(config);
  if (!options.data.empty()) d.data_files = {data_for_type(config.data.type, options.data)};
  load_format(d.settings, d.tokenizer);
  auto loaded = load_tokenized_dataset(d.data_files, d.tokenizer, d.settings, d.cache_dir);
  const std::string read(loaded.cache->report());
  const coordinator::CachedSamples samples(std::move(loaded.cache));

  EvalReport report;
  report.data_files = d.data_files;
  std::vector<size_t> eval;
  if (!options.data.empty()) {
    for (size_t i = 0; i < samples.size(); ++i) eval.push_back(i);
    report.split = "every sample";
  } else {
    if (config.data.eval_fraction <= 0) {
      throw std::invalid_argument(
          "the config holds out no eval split (data.eval_fraction is 0): set it, or give --data FILE");
    }
    eval = split_eval(samples.size(), config.data.eval_fraction, static_cast<uint64_t>(config.trainer.seed)).eval;
    report.split = fmt::format("eval split (data.eval_fraction {}, seed {})", config.data.eval_fraction,
                               config.trainer.seed);
  }
  if (eval.empty()) {
    throw std::invalid_argument(fmt::format("{}: no sample to evaluate (read: {})", d.data_files.front().string(), read));
  }
  const auto batches =
      coordinator::eval_micro_batches(samples, eval, 0, 1, static_cast<size_t>(config.trainer.batch_size));

  const torch::Device device(options.device.empty() ? train::training_device_name(config, 0) : options.device);
  report.device = device.str();
  const fs::path base = resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");
  comm::InMemoryStore store;
  train::Replica r;
  train::build_replica(r, config, comm::connect("local", store, comm::CollectiveOptions{}),
                       train::load_options(config, device),
                       [&](const model::LoadOptions& o) { return model::load_with_adapter(base, o, options.adapter); });
  const train::EvalResult e = train::eval_loss(*r.model, *r.comm, batches);
  report.samples = e.samples;
  report.predicted = e.predicted;
  report.loss = e.loss;
  return report;
}

TextEvalReport evaluate_text(const model::Llama& model, const Tokenizer& tokenizer, const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw std::invalid_argument(file.string() + ": cannot be read");
  TextEvalReport r;
  double total = 0;
  const auto window = static_cast<size_t>(model.config().max_position_embeddings);
  torch::NoGradGuard no_grad;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto ids = tokenizer.encode(line, /*add_special=*/true);
    if (ids.size() > window) {  // right truncation to the context window
      ids.resize(window);
      ++r.truncated;
    }
    const auto [sum, count] = model.sequence_loss(ids);
    total += sum;
    r.tokens += count;
    r.samples += count > 0;
  }
  if (r.tokens == 0) throw std::invalid_argument(file.string() + ": no line gives a token to predict");
  r.loss = total / static_cast<double>(r.tokens);
  return r;
}

}  // namespace herd::launch
