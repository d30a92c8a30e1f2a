// herd quantize, herd merge and herd export gguf: the file tools of convert/.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/model_commands.h"
#include "cli/model_flags.h"
#include "common/chat_template.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "common/process_memory.h"
#include "convert/gguf_export.h"
#include "convert/hf_checkpoint.h"
#include "convert/merge.h"
#include "worker/train/memory_plan.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

// herd quantize MODEL OUT
void add_quantize(CLI::App& app, int& rc) {
  struct Flags {
    std::string model, out;
    bool single = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = app.add_subcommand("quantize", "Write a pre-quantized NF4 checkpoint (transformers' bitsandbytes layout)");
  cmd->add_option("model", f->model, "Model directory (config.json + safetensors)")->required();
  cmd->add_option("out", f->out, "Output directory")->required();
  cmd->add_flag("--no-double-quant", f->single, "Keep absmax in float32");
  cmd->callback([&rc, f] {
    rc = guarded("quantize", [&] {
      convert::write_quantized_checkpoint(f->model, f->out, {!f->single, "bfloat16"});
      std::cout << fmt::format("herd quantize: wrote {}\n", (fs::path(f->out) / "model.safetensors").string());
    });
  });
}

struct MergeFlags {
  std::string config, base, adapter, out, dtype, shard_size = "5GB";
  bool json = false;
};

// A CONFIG's base, adapter and merged model, or the three flags.
convert::MergeSpec merge_spec(const MergeFlags& f) {
  convert::MergeSpec spec;
  const bool some_flag = !f.base.empty() || !f.adapter.empty() || !f.out.empty();
  const bool every_flag = !f.base.empty() && !f.adapter.empty() && !f.out.empty();
  if (f.config.empty() ? !every_flag : some_flag) {
    throw std::invalid_argument("give a CONFIG, or --base, --adapter and --out");
  }
  if (!f.config.empty()) {
    const Config c = load_config(f.config);
    spec.base = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
    spec.adapter = fs::path(c.model_output_dir) / (c.model_name + "_adapter");
    spec.out = fs::path(c.model_output_dir) / c.model_name;
    if (!fs::is_directory(spec.adapter)) {
      throw std::invalid_argument(fmt::format("{}: no adapter there (herd train writes it)", spec.adapter.string()));
    }
  } else {
    spec.base = f.base;
    spec.adapter = f.adapter;
    spec.out = f.out;
  }
  spec.dtype = f.dtype;
  const auto shard = train::parse_bytes(f.shard_size);
  if (!shard || *shard < 1) throw std::invalid_argument("--shard-size " + f.shard_size + ": e.g. 5GB or 512MiB");
  spec.shard_bytes = static_cast<uint64_t>(*shard);
  return spec;
}

// A progress bar on a terminal's stderr, redrawn at most 5 times a second.
std::function<void(uint64_t, uint64_t)> progress_bar(std::chrono::steady_clock::time_point start) {
  if (::isatty(2) == 0) return {};
  return [start, drawn = -1.0](uint64_t done, uint64_t total) mutable {
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (now - drawn < 0.2 && done < total) return;
    drawn = now;
    const double share = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const int eta = share > 0 ? static_cast<int>(now / share - now) : 0;
    std::cerr << fmt::format("\r\033[Kmerge [{:<30}] {:.2f} / {:.2f} GB  eta {}:{:02d}",
                             std::string(static_cast<size_t>(share * 30), '#'), static_cast<double>(done) / 1e9,
                             static_cast<double>(total) / 1e9, eta / 60, eta % 60)
              << (done == total ? "\n" : "") << std::flush;
  };
}

void merge(const MergeFlags& f) {
  const auto spec = merge_spec(f);
  const auto start = std::chrono::steady_clock::now();
  const auto report = convert::merge_adapter(spec, progress_bar(start));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const uint64_t peak = process_memory().peak_resident_bytes;
  if (f.json) {
    const nlohmann::json doc = {
        {"out", spec.out.string()}, {"base", spec.base.string()},     {"adapter", spec.adapter.string()},
        {"dtype", report.dtype},    {"tensors", report.tensors},      {"merged", report.merged},
        {"bytes", report.bytes},    {"largest_tensor_bytes", report.largest}, {"files", report.files},
        {"from_4bit", report.from_4bit}, {"seconds", took},           {"peak_rss_bytes", peak}};
    std::cout << doc.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format(
      "herd merge: wrote {}: {} tensors ({} with the adapter's delta) in {}, {} in {} files, {:.1f} s; "
      "peak resident memory {:.0f} MiB\n",
      spec.out.string(), report.tensors, report.merged, report.dtype, size_text(report.bytes), report.files.size(),
      took, static_cast<double>(peak) / (1 << 20));
  if (report.from_4bit) {
    std::cout << "herd merge: note: the base is 4-bit (NF4): its weights were dequantized, so the merged model "
                 "carries their quantization error; merging into the original 16-bit base does not\n";
  }
}

// herd merge CONFIG | --base DIR --adapter DIR --out DIR: the adapter folded into the base, streamed.
void add_merge(CLI::App& app, int& rc) {
  auto f = std::make_shared<MergeFlags>();
  auto* cmd = app.add_subcommand(
      "merge", "Merge a LoRA adapter into its base model's weights, tensor by tensor (memory: about one tensor)");
  cmd->add_option("config", f->config,
                  "A job's YAML config: its base_model and {model_output_dir}/{model_name}_adapter, merged into "
                  "{model_output_dir}/{model_name}")
      ->check(CLI::ExistingFile);
  cmd->add_option("--base", f->base, "Base model directory (safetensors: bf16/fp16/fp32, or 4-bit bitsandbytes)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", f->adapter, "A peft LoRA adapter directory")->check(CLI::ExistingDirectory);
  cmd->add_option("--out", f->out, "Output directory (must not exist, or be empty)");
  cmd->add_option("--dtype", f->dtype, "float16, bfloat16 or float32 (default: the base's)")
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}));
  cmd->add_option("--shard-size", f->shard_size, "Largest shard, as transformers' max_shard_size (5GB = 5e9 bytes)")
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "Print JSON");
  cmd->callback([&rc, f] { rc = guarded("merge", [&] { merge(*f); }); });
}

struct ExportFlags {
  std::string target, out, type = "f16";
};

void export_gguf(const ExportFlags& f) {
  convert::GgufSpec spec;
  spec.type = f.type;
  spec.out = f.out;
  if (fs::is_regular_file(f.target)) {
    const Config c = load_config(f.target);
    spec.model = fs::path(c.model_output_dir) / c.model_name;
    spec.name = c.model_name;
    if (!fs::is_directory(spec.model)) {
      throw std::invalid_argument(
          fmt::format("{}: no merged model there (herd merge {} writes it)", spec.model.string(), f.target));
    }
    if (spec.out.empty()) spec.out = fs::path(c.model_output_dir) / (c.model_name + "-" + f.type + ".gguf");
    // The prompt style the model was trained in (the merged folder has the base model's template).
    if (c.data.prompt_style == "chat_template") spec.chat_template = chat_template_source(spec.model);
  } else {
    spec.model = f.target;
    if (spec.out.empty()) throw std::invalid_argument("give the output file: herd export gguf MODEL OUT.gguf");
    spec.chat_template = chat_template_source(spec.model);  // the model's own, when it has one
  }
  const auto report = convert::export_gguf(spec);
  std::cout << fmt::format("herd export gguf: wrote {}: {} tensors ({}), {} metadata keys, {}\n", spec.out.string(),
                           report.tensors, spec.type, report.metadata, size_text(report.bytes));
}

// herd export gguf MODEL|CONFIG [OUT.gguf] [--type f16|bf16|q8_0]: for llama.cpp.
void add_export(CLI::App& app, int& rc) {
  auto f = std::make_shared<ExportFlags>();
  auto* exporter = app.add_subcommand("export", "Export a model for other runtimes");
  exporter->require_subcommand(1);
  auto* gguf = exporter->add_subcommand("gguf", "A GGUF v3 file llama.cpp loads (tensor by tensor, constant memory)");
  gguf->add_option("model", f->target,
                   "A model directory (safetensors in 16 or 32 bits: a merged model), or a job's YAML config (its "
                   "merged model, {model_output_dir}/{model_name})")
      ->required()
      ->check(CLI::ExistingPath);
  gguf->add_option("out", f->out, "The .gguf file (with a CONFIG: default {model_output_dir}/{model_name}-TYPE.gguf)");
  gguf->add_option("--type", f->type, "Matrices as f16, bf16 or q8_0 (norms stay f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f16", "bf16", "q8_0"}));
  gguf->callback([&rc, f] { rc = guarded("export gguf", [&] { export_gguf(*f); }); });
}

}  // namespace

void add_convert_commands(CLI::App& app, int& rc) {
  add_quantize(app, rc);
  add_merge(app, rc);
  add_export(app, rc);
}

}  // namespace herd::cli
