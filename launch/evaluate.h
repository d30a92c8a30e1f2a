// `herd eval CONFIG`: the held-out loss of a config's data, as the trainer's
// periodic eval measures it. The data is read, formatted, masked, tokenized (the
// same token cache) and batched (coordinator/samples.h, eval_micro_batches) as the
// coordinator streams it; the model is built as a worker builds it (build_replica,
// one rank) and the loss is train::eval_loss. So on the same samples the two agree.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/tokenizer.h"
#include "worker/model/llama.h"

namespace herd::launch {

struct EvalOptions {
  std::string adapter;  // a peft adapter directory; none: the base model
  std::string data;     // a file (or dataset directory) of the config's data.type; none: the eval split
  std::string device;   // none: the config's trainer.device
};

struct EvalReport {
  std::vector<std::filesystem::path> data_files;
  std::string split;  // "eval split (data.eval_fraction F, seed S)" or "every sample"
  std::string device;
  uint64_t samples = 0, predicted = 0;
  double loss = 0;
};

// Throws with what is wrong: no eval split and no --data, a file of another data
// type, an adapter of another model.
EvalReport evaluate(const Config& config, const EvalOptions& options);

// `herd eval MODEL --data TEXT`: the mean next-token loss over a text file's
// non-empty lines, each a sample (BOS first), cut to the model's context window.
struct TextEvalReport {
  int64_t samples = 0, tokens = 0, truncated = 0;
  double loss = 0;
};
TextEvalReport evaluate_text(const model::Llama& model, const Tokenizer& tokenizer, const std::filesystem::path& file);

}  // namespace herd::launch
