#include "worker/train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/checkpoint_files.h"
#include "common/files.h"
#include "common/token_cache.h"
#include "worker/model/peft_adapter.h"
#include "worker/model/rng.h"

namespace herd::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kPrefix = "checkpoint-";

std::optional<uint64_t> checkpoint_step(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  const std::string digits = name.substr(std::string(kPrefix).size());
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return std::nullopt;
  return std::stoull(digits);
}

// checkpoint-STEP directories, oldest first.
std::vector<std::pair<uint64_t, fs::path>> checkpoints(const fs::path& output_dir) {
  std::vector<std::pair<uint64_t, fs::path>> out;
  if (!fs::is_directory(output_dir)) return out;
  for (const auto& e : fs::directory_iterator(output_dir)) {
    if (auto step = checkpoint_step(e.path()); step && e.is_directory()) out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// trainer_state.json, its keys sorted (as transformers writes them), one log_history
// entry a line. The history grows with every step and is written at every
// checkpoint: it is streamed an entry at a time, as a document of it all would leave
// the allocator holding memory in proportion to it (measured: 36 MiB after 24,000
// steps, checkpoints every 10).
void write_trainer_state(const fs::path& file, uint64_t step, const CheckpointMeta& meta,
                         const std::vector<StepLog>& history) {
  std::ofstream out(file, std::ios::binary);
  out << "{\n  \"epoch\": " << json(static_cast<double>(step) / static_cast<double>(meta.steps_per_epoch)).dump()
      << ",\n  \"global_step\": " << step << ",\n  \"log_history\": [";
  const char* separator = "\n    ";
  for (const auto& s : history) {
    out << separator
        << json{{"step", s.step},
                {"epoch", s.epoch},
                {"loss", s.loss},
                {"learning_rate", s.learning_rate},
                {"grad_norm", s.grad_norm},
                {"num_tokens", s.tokens}}
               .dump();
    separator = ",\n    ";
  }
  out << "\n  ],\n  \"max_steps\": " << meta.total_steps << "\n}\n";
  close_file(out, file);
}

// log_history from trainer_state.json, each entry converted as it is parsed and
// then dropped from the document (the parser's callback), for the reason above.
std::vector<StepLog> read_log_history(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot be opened", file.string()));
  std::vector<StepLog> history;
  json::parser_callback_t take = [&](int depth, json::parse_event_t event, json& entry) {
    if (depth != 2 || event != json::parse_event_t::object_end) return true;  // only log_history holds objects
    history.push_back({entry.at("step").get<uint64_t>(), entry.at("epoch").get<double>(),
                       entry.at("loss").get<double>(), entry.at("learning_rate").get<double>(),
                       entry.at("grad_norm").get<double>(), entry.at("num_tokens").get<uint64_t>()});
    return false;
  };
  const json state = json::parse(in, take);
  if (!state.contains("log_history")) throw std::runtime_error(fmt::format("{}: no log_history", file.string()));
  return history;
}

}  // namespace

fs::path write_checkpoint(const fs::path& output_dir, uint64_t step, model::Llama& model,
                          torch::optim::Optimizer& optimizer, const std::vector<StepLog>& history,
                          const CheckpointMeta& meta, int64_t keep_last) {
  const fs::path final_dir = checkpoint_dir(output_dir, step);
  const fs::path tmp = output_dir / fmt::format(".{}{}.tmp-{}", kPrefix, step, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    model::save_adapter(model, tmp, meta.base_model, meta.task_type, meta.bias);
    torch::save(optimizer, (tmp / "optimizer.pt").string());
    torch::save(model::rng_state(), (tmp / "rng_state.pt").string());
    // On a GPU, LoRA dropout draws from that GPU's generator.
    if (model.device().is_cuda()) torch::save(model::rng_state(model.device()), (tmp / "rng_state_cuda.pt").string());
    write_trainer_state(tmp / "trainer_state.json", step, meta, history);
    json files = json::object();
    for (const auto& e : fs::directory_iterator(tmp)) {
      files[e.path().filename().string()] = {{"bytes", fs::file_size(e.path())},
                                             {"hash", fmt::format("{:016x}", hash_file(e.path()))}};
    }
    write_file(tmp / kCheckpointManifest, json{{"step", step}, {"files", files}}.dump(2));
  } catch (...) {
    std::error_code ignored;  // a full disk: free what was written, name no checkpoint
    fs::remove_all(tmp, ignored);
    throw;
  }
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);

  // Checkpoints after this step belong to a timeline the job left (a fresh start
  // in the same directory, or a recovery from an earlier checkpoint): drop them,
  // then keep the newest keep_last.
  auto all = checkpoints(output_dir);
  while (!all.empty() && all.back().first > step) {
    fs::remove_all(all.back().second);
    all.pop_back();
  }
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) fs::remove_all(all[i].second);
  return final_dir;
}

std::vector<StepLog> load_checkpoint(const fs::path& dir, model::Llama& model, torch::optim::Optimizer& optimizer) {
  model::load_adapter_weights(model, dir);
  const auto optimizer_file = dir / "optimizer.pt";  // its state beside the adapter
  try {
    torch::load(optimizer, optimizer_file.string(), model.device());
  } catch (const c10::Error& e) {
    throw std::runtime_error(
        fmt::format("{}: {} (this job's optimizer has {} parameter group(s): LoRA+, "
                    "lora.loraplus_lr_ratio, makes two; resume with the checkpoint's setting)",
                    optimizer_file.string(), e.what_without_backtrace(), optimizer.param_groups().size()));
  }
  torch::Tensor rng;
  torch::load(rng, (dir / "rng_state.pt").string());
  model::set_rng_state(rng);
  if (model.device().is_cuda() && fs::exists(dir / "rng_state_cuda.pt")) {
    torch::load(rng, (dir / "rng_state_cuda.pt").string());
    model::set_rng_state(rng, model.device());
  }
  return read_log_history(dir / "trainer_state.json");
}

}  // namespace herd::train
