// herd chat CONFIG | MODEL [--adapter DIR] [--prompt TEXT] [--prompt-style seed|chat_template]:
// the reply streamed, in the seed's prompt style or the model's chat template.
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "cli/model_commands.h"
#include "cli/model_flags.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "worker/model/generate.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/step.h"
#include "worker/train/trainer.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

struct ChatFlags {
  ModelFlags model;
  std::string target, prompt, prompt_style;
  model::SamplingOptions sampling;
  bool json = false;
};

// A config's base model as training loads it, with its trained adapter when there is
// one; or a model directory as the flags say. Returns the model directory.
fs::path load(ChatFlags& f, std::optional<model::Llama>& model) {
  if (!fs::is_regular_file(f.target)) {
    f.model.dir = f.target;
    if (f.model.device_option->count() == 0 && torch::cuda::is_available()) f.model.device = "cuda";
    model.emplace(f.model.load());
    return f.target;
  }
  f.model.refuse_loading_flags();
  const Config c = load_config(f.target);
  if (f.prompt_style.empty()) f.prompt_style = c.data.prompt_style;
  const fs::path dir = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
  if (f.model.adapter.empty()) {
    const fs::path trained = fs::path(c.model_output_dir) / (c.model_name + "_adapter");
    if (fs::is_directory(trained)) f.model.adapter = trained.string();
  }
  const std::string device =
      f.model.device_option->count() > 0 ? f.model.device : train::training_device_name(c, 0);
  auto options = train::load_options(c, torch::Device(device));
  options.lora.reset();  // no fresh adapter: without a trained one, the base model alone
  model.emplace(model::load_with_adapter(dir, options, f.model.adapter));
  return dir;
}

void chat(ChatFlags& f) {
  std::optional<model::Llama> model;
  const fs::path dir = load(f, model);
  model->set_training(false);
  const fs::path file = tokenizer_file(dir);
  const auto tokenizer = Tokenizer::load(file);
  // Without a config or the flag: the model's template when it has one (as transformers' pipelines).
  const fs::path folder = file.parent_path();
  const bool templated = f.prompt_style.empty() ? ChatTemplate::available(folder) : f.prompt_style == "chat_template";
  model::Chat conversation(*model, *tokenizer, f.sampling, templated ? ChatTemplate::load(folder) : nullptr);
  if (!f.prompt.empty()) {
    model::print_turn(conversation, f.prompt, f.json, std::cout);
    return;
  }
  std::cerr << fmt::format("herd chat: {}{}; an empty line or Ctrl-D ends, /reset forgets the conversation\n",
                           dir.string(), f.model.adapter.empty() ? "" : " + " + f.model.adapter);
  model::converse(conversation, f.json, std::cin, std::cout, std::cerr);
}

void add_sampling_flags(CLI::App* cmd, model::SamplingOptions& so) {
  cmd->add_option("--max-length", so.max_length, "Prompt + reply tokens, as transformers counts max_length")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-new-tokens", so.max_new_tokens, "Reply tokens (instead of --max-length)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", so.temperature)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--top-p", so.top_p)->capture_default_str()->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--top-k", so.top_k, "0: off (transformers' default: 50)")->capture_default_str()->check(
      CLI::NonNegativeNumber);
  cmd->add_option("--repetition-penalty", so.repetition_penalty, "1: off (transformers' semantics)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 100.0));
  cmd->add_flag("--greedy", so.greedy, "The most likely token each time (after the repetition penalty)");
  cmd->add_option("--seed", so.seed, "Sampling seed: the same seed gives the same reply")->capture_default_str();
}

}  // namespace

void add_chat_command(CLI::App& app, int& rc) {
  auto f = std::make_shared<ChatFlags>();
  auto* cmd =
      app.add_subcommand("chat",
                         "Talk to a model (NF4 base + adapter, or a merged model) in the seed's "
                         "prompt style or its chat template; one-shot with --prompt. Without --device: a CONFIG's "
                         "trainer.device, else a GPU when one is visible");
  cmd->add_option("target", f->target,
                  "A job's YAML config (its base_model, quantization and {model_output_dir}/{model_name}_adapter), "
                  "or a model directory")
      ->required()
      ->check(CLI::ExistingPath);
  f->model.add_to(cmd, /*positional=*/false);
  cmd->add_option("--prompt", f->prompt, "One prompt: print the reply and exit");
  cmd->add_option("--prompt-style", f->prompt_style,
                  "seed (### HUMAN: / ### RESPONSE:) or chat_template (the model's own); default: a CONFIG's "
                  "data.prompt_style, else the model's template when it has one")
      ->check(CLI::IsMember({"seed", "chat_template"}));
  add_sampling_flags(cmd, f->sampling);
  cmd->add_flag("--json", f->json, "Each reply as a JSON line (the prompt's and the reply's token ids, its text)");
  cmd->callback([&rc, f] { rc = guarded("chat", [&] { chat(*f); }); });
}

}  // namespace herd::cli
