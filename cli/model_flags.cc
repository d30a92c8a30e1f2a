#include "cli/model_flags.h"

#include <fmt/format.h>

#include "worker/model/peft_adapter.h"

namespace herd::cli {

void ModelFlags::add_to(CLI::App* cmd, bool positional) {
  if (positional) cmd->add_option("model", dir, "Model directory (config.json, safetensors, tokenizer.model)")->required();
  cmd->add_option("--adapter", adapter, "A peft LoRA adapter directory")->check(CLI::ExistingDirectory);
  loading.push_back(
      cmd->add_flag("--no-quantize", plain, "Use the plain weights instead of NF4 (as training would use them)"));
  loading.push_back(
      cmd->add_option("--compute-dtype", dtype)->check(CLI::IsMember({"float32", "bfloat16"}))->capture_default_str());
  device_option = cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
  loading.push_back(cmd->add_flag("--bf16", bf16, "The hidden stream in bfloat16 (trainer.bf16)"));
}

void ModelFlags::refuse_loading_flags() const {
  for (const CLI::Option* o : loading) {
    if (o->count() > 0) {
      throw std::invalid_argument(
          fmt::format("{} picks how a model directory is loaded; with a CONFIG its quantization and trainer keys do",
                      o->get_name()));
    }
  }
}

model::Llama ModelFlags::load() const {
  model::LoadOptions options;
  options.quantize = !plain;
  options.compute_dtype = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
  options.activation_dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
  options.device = torch::Device(device);
  return model::load_with_adapter(dir, options, adapter);
}

std::string size_text(uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  return b >= 1e9 ? fmt::format("{:.2f} GB", b / 1e9) : fmt::format("{:.1f} MB", b / 1e6);
}

std::filesystem::path executable_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : p.parent_path();
}

}  // namespace herd::cli
