#include "cli/plan_command.h"

#include <iostream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/hf_cache.h"
#include "worker/train/memory_plan.h"

namespace herd::cli {

namespace {

int plan(const std::string& path, int64_t workers, const std::string& gpu_mem, int64_t tokens, bool json) {
  try {
    const Config config = load_config(path);
    train::PlanInput in;
    std::string shape_from;
    try {
      const auto dir = resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");
      in.shape = model::LlamaConfig::from_file(dir / "config.json");
      shape_from = (dir / "config.json").string();
    } catch (const std::exception& e) {
      auto known = train::known_shape(config.base_model);
      if (!known) throw;
      in.shape = known->second;
      shape_from = known->first + " (base_model is not on this machine: its published shape)";
    }
    in.workers = workers > 0 ? workers : config.distributed.world_size;
    in.full_shard = config.distributed.sharding == "full_shard";
    in.quantized = config.quantization.enabled;
    in.double_quant = config.quantization.double_quant;
    in.compute_bytes = config.quantization.compute_dtype == "float32" ? 4 : 2;
    in.stream_bytes = config.trainer.bf16 ? 2 : 4;
    in.batch_size = config.trainer.batch_size;
    in.tokens = tokens > 0 ? tokens : config.model_context_window;
    in.checkpointing = config.trainer.gradient_checkpointing;
    in.loss_chunk = config.trainer.loss_chunk_tokens;
    in.offload_activations = config.trainer.offload_activations;
    train::set_lora(in, config.lora.r, config.lora.target_modules, config.lora.use_dora);
    std::optional<double> capacity;
    if (!gpu_mem.empty()) {
      capacity = train::parse_bytes(gpu_mem);
      if (!capacity) {
        std::cerr << "herd plan: --gpu-mem '" << gpu_mem << "' is not a size such as 80GiB or 24GB\n";
        return 1;
      }
    }
    in.gpu = capacity.has_value() || config.distributed.backend == "nccl";
    const auto items = train::memory_plan(in);
    const double total = train::plan_total(in);
    std::optional<train::Fit> fit;
    if (capacity && total > *capacity) fit = train::fit(in, *capacity);
    if (json) {
      nlohmann::json out = {{"workers", in.workers}, {"batch_size", in.batch_size}, {"tokens", in.tokens},
                            {"shape", shape_from}, {"total_bytes", total}, {"items", nlohmann::json::array()}};
      for (const auto& item : items) out["items"].push_back({{"what", item.what}, {"bytes", item.bytes}});
      if (capacity) {
        out["capacity_bytes"] = *capacity;
        out["fits"] = total <= *capacity;
      }
      if (fit && !fit->changes.empty()) {
        nlohmann::json changes = nlohmann::json::object();
        for (const auto& [key, value] : fit->changes) changes[key] = value;
        out["to_fit"] = {{"changes", changes}, {"total_bytes", train::plan_total(fit->input)}, {"fits", fit->fits}};
      }
      std::cout << out.dump() << "\n";
      return 0;
    }
    const double gib = 1024.0 * 1024 * 1024;
    std::cout << fmt::format("{}: {} on {} worker{} ({}), batch {} x {} tokens\nshape: {}\n\n", path,
                             config.model_name, in.workers, in.workers == 1 ? "" : "s", config.distributed.sharding,
                             in.batch_size, in.tokens, shape_from);
    for (const auto& item : items) std::cout << fmt::format("  {:<72} {:>8.2f} GiB\n", item.what, item.bytes / gib);
    std::cout << fmt::format("  {:<72} {:>8.2f} GiB ({:.1f} GB)\n", "per rank", total / gib, total / 1e9);
    if (capacity) {
      std::cout << fmt::format("{} in {:.1f} GiB per GPU ({:.0f}% used)\n",
                               total <= *capacity ? "fits" : "does not fit", *capacity / gib,
                               100 * total / *capacity);
    }
    if (fit && !fit->changes.empty()) {
      std::string changes;
      for (const auto& [key, value] : fit->changes) changes += fmt::format("\n  {}: {}", key, value);
      const double with = train::plan_total(fit->input);
      if (fit->fits) {
        std::cout << fmt::format("to fit, set:{}\nthen a rank holds {:.2f} GiB, {:.2f} GiB ({:.0f}%) to spare\n",
                                 changes, with / gib, (*capacity - with) / gib, 100 * (*capacity - with) / *capacity);
      } else {
        std::cout << fmt::format("with every memory feature on:{}\na rank still holds {:.2f} GiB, {:.2f} GiB over: "
                                 "more workers, shorter rows or a larger GPU\n",
                                 changes, with / gib, (with - *capacity) / gib);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "herd plan: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

void add_plan_command(CLI::App& app, int& rc) {
  auto* cmd = app.add_subcommand("plan", "Per-rank memory estimate for a config");
  auto path = std::make_shared<std::string>();
  auto workers = std::make_shared<int64_t>(0);
  auto tokens = std::make_shared<int64_t>(0);
  auto gpu_mem = std::make_shared<std::string>();
  cmd->add_option("config", *path, "The job's YAML config")->required();
  cmd->add_option("--workers", *workers, "Ranks (default: distributed.world_size)")->check(CLI::Range(1, 65536));
  cmd->add_option("--gpu-mem", *gpu_mem, "Memory of one GPU, e.g. 80GiB or 24GB: says whether a rank fits");
  cmd->add_option("--tokens", *tokens, "Tokens per row (default: model_context_window, the longest)")
      ->check(CLI::Range(1, 1 << 24));
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "The items and the total as one JSON object, in bytes");
  cmd->callback([=, &rc] { rc = plan(*path, *workers, *gpu_mem, *tokens, *json); });
}

}  // namespace herd::cli
