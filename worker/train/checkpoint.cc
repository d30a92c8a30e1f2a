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
    json log = json::array();
    for (const auto& s : history) {
      log.push_back({{"step", s.step},
                     {"epoch", s.epoch},
                     {"loss", s.loss},
                     {"learning_rate", s.learning_rate},
                     {"grad_norm", s.grad_norm},
                     {"num_tokens", s.tokens}});
    }
    write_file(tmp / "trainer_state.json",
               json{{"global_step", step},
                    {"epoch", static_cast<double>(step) / static_cast<double>(meta.steps_per_epoch)},
                    {"max_steps", meta.total_steps},
                    {"log_history", log}}
                   .dump(2));
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
  torch::load(optimizer, (dir / "optimizer.pt").string(), model.device());  // its state beside the adapter
  torch::Tensor rng;
  torch::load(rng, (dir / "rng_state.pt").string());
  model::set_rng_state(rng);
  if (model.device().is_cuda() && fs::exists(dir / "rng_state_cuda.pt")) {
    torch::load(rng, (dir / "rng_state_cuda.pt").string());
    model::set_rng_state(rng, model.device());
  }
  std::ifstream in(dir / "trainer_state.json");
  const json state = json::parse(in);
  std::vector<StepLog> history;
  for (const auto& s : state.at("log_history")) {
    history.push_back({s.at("step").get<uint64_t>(), s.at("epoch").get<double>(), s.at("loss").get<double>(),
                       s.at("learning_rate").get<double>(), s.at("grad_norm").get<double>(),
                       s.at("num_tokens").get<uint64_t>()});
  }
  return history;
}

}  // namespace herd::train
