#include "cli/model_commands.h"

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/process_memory.h"
#include "common/hf_cache.h"
#include "common/safetensors.h"
#include "common/tokenizer.h"
#include "launch/evaluate.h"
#include "worker/model/generate.h"
#include "convert/gguf_export.h"
#include "convert/hf_checkpoint.h"
#include "convert/merge.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/memory_plan.h"
#include "worker/train/step.h"
#include "worker/train/trainer.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

// The directory of the running executable (herd-spm-train lives beside herd).
fs::path executable_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(".") : p.parent_path();
}

// "1,2,3;4,5" -> rows of ids, right-padded with 0 and a 0/1 attention mask.
std::pair<torch::Tensor, torch::Tensor> parse_rows(const std::string& text) {
  std::vector<std::vector<int64_t>> rows;
  std::stringstream all(text);
  std::string row;
  while (std::getline(all, row, ';')) {
    std::vector<int64_t> ids;
    std::stringstream r(row);
    std::string id;
    while (std::getline(r, id, ',')) {
      int64_t value = 0;
      auto [end, ec] = std::from_chars(id.data(), id.data() + id.size(), value);
      if (ec != std::errc() || end != id.data() + id.size() || value < 0) {
        throw std::invalid_argument(fmt::format("--ids: '{}' is not a token id", id));
      }
      ids.push_back(value);
    }
    if (ids.empty()) throw std::invalid_argument("--ids has an empty row");
    rows.push_back(ids);
  }
  if (rows.empty()) throw std::invalid_argument("--ids is empty");
  size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.size());
  auto ids = torch::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, torch::kInt64);
  auto mask = torch::zeros_like(ids);
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t j = 0; j < rows[i].size(); ++j) {
      ids[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = rows[i][j];
      mask[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = 1;
    }
  }
  return {ids, mask};
}

// The flags that pick a model as eval and logits use it, and the loading they ask for.
struct ModelFlags {
  std::string dir, adapter, dtype = "float32", device = "cpu";
  bool plain = false, bf16 = false;

  CLI::Option* device_option = nullptr;
  std::vector<CLI::Option*> loading;  // what a config says instead (herd eval CONFIG)

  void add_to(CLI::App* cmd, bool positional = true) {
    if (positional) cmd->add_option("model", dir, "Model directory (config.json, safetensors, tokenizer.model)")->required();
    cmd->add_option("--adapter", adapter, "A peft LoRA adapter directory")->check(CLI::ExistingDirectory);
    loading.push_back(
        cmd->add_flag("--no-quantize", plain, "Use the plain weights instead of NF4 (as training would use them)"));
    loading.push_back(
        cmd->add_option("--compute-dtype", dtype)->check(CLI::IsMember({"float32", "bfloat16"}))->capture_default_str());
    device_option = cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
    loading.push_back(cmd->add_flag("--bf16", bf16, "The hidden stream in bfloat16 (trainer.bf16)"));
  }

  // With a CONFIG, its quantization and trainer keys say how the model is loaded.
  void refuse_loading_flags() const {
    for (const CLI::Option* o : loading) {
      if (o->count() > 0) {
        throw std::invalid_argument(fmt::format(
            "{} picks how a model directory is loaded; with a CONFIG its quantization and trainer keys do",
            o->get_name()));
      }
    }
  }

  herd::model::Llama load() const {
    herd::model::LoadOptions options;
    options.quantize = !plain;
    options.compute_dtype = dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat32;
    options.activation_dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
    options.device = torch::Device(device);
    if (!adapter.empty()) options.lora = herd::model::read_adapter_config(adapter);
    auto model = herd::model::Llama::load(dir, options);
    if (!adapter.empty()) herd::model::load_adapter_weights(model, adapter);
    return model;
  }
};

// "2.14 GB", "1.3 MB"
std::string size_text(uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  return b >= 1e9 ? fmt::format("{:.2f} GB", b / 1e9) : fmt::format("{:.1f} MB", b / 1e6);
}

template <class F>
int guarded(const char* what, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "herd " << what << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

void add_model_commands(CLI::App& app, int& rc) {
  // herd quantize MODEL OUT
  auto q_model = std::make_shared<std::string>(), q_out = std::make_shared<std::string>();
  auto q_single = std::make_shared<bool>(false);
  auto* quantize =
      app.add_subcommand("quantize", "Write a pre-quantized NF4 checkpoint (transformers' bitsandbytes layout)");
  quantize->add_option("model", *q_model, "Model directory (config.json + safetensors)")->required();
  quantize->add_option("out", *q_out, "Output directory")->required();
  quantize->add_flag("--no-double-quant", *q_single, "Keep absmax in float32");
  quantize->callback([&rc, q_model, q_out, q_single] {
    rc = guarded("quantize", [&] {
      herd::convert::write_quantized_checkpoint(*q_model, *q_out, {!*q_single, "bfloat16"});
      std::cout << fmt::format("herd quantize: wrote {}\n", (fs::path(*q_out) / "model.safetensors").string());
    });
  });

  // herd eval CONFIG [--adapter DIR] [--data FILE]: the held-out loss as training measures it;
  // herd eval MODEL [--adapter DIR] --data TEXT: mean next-token loss over a text file's lines.
  auto e_model = std::make_shared<ModelFlags>();
  auto e_target = std::make_shared<std::string>(), e_data = std::make_shared<std::string>();
  auto e_json = std::make_shared<bool>(false);
  auto* eval = app.add_subcommand("eval", "Mean token loss and perplexity of a model (and adapter): a config's "
                                          "held-out conversations, or a text file");
  eval->add_option("target", *e_target,
                   "A job's YAML config (its data formatted, masked and batched as training does), or a model "
                   "directory (config.json, safetensors, tokenizer.model)")
      ->required()
      ->check(CLI::ExistingPath);
  e_model->add_to(eval, /*positional=*/false);
  eval->add_option("--data", *e_data,
                   "With a CONFIG: a data file of its data.type, every sample of it instead of the eval split; with a "
                   "MODEL: a text file, one sample per line")
      ->check(CLI::ExistingPath);
  eval->add_flag("--json", *e_json, "Print JSON");
  eval->callback([&rc, e_model, e_target, e_data, e_json] {
    rc = guarded("eval", [&] {
      if (fs::is_regular_file(*e_target)) {
        e_model->refuse_loading_flags();
        const Config config = load_config(*e_target);
        const auto r = herd::launch::evaluate(
            config, {e_model->adapter, *e_data, e_model->device_option->count() > 0 ? e_model->device : ""});
        std::vector<std::string> files;
        for (const auto& f : r.data_files) files.push_back(f.string());
        if (*e_json) {
          nlohmann::json doc = {{"config", *e_target}, {"adapter", e_model->adapter}, {"data", files},
                                {"split", r.split},     {"device", r.device},          {"samples", r.samples},
                                {"tokens", r.predicted}, {"loss", r.loss},             {"perplexity", std::exp(r.loss)}};
          std::cout << doc.dump(2) << "\n";
        } else {
          std::cout << fmt::format("eval: {} of {}: {} samples, {} predicted tokens: loss {:.6f}, perplexity {:.4f}\n",
                                   r.split, fmt::join(files, ", "), r.samples, r.predicted, r.loss, std::exp(r.loss));
        }
        return;
      }
      if (e_data->empty()) throw std::invalid_argument("with a MODEL directory, --data TEXT_FILE is required");
      e_model->dir = *e_target;
      auto model = e_model->load();
      auto tokenizer = herd::Tokenizer::load(fs::path(e_model->dir) / "tokenizer.model");
      std::ifstream in(*e_data);
      std::string line;
      double total = 0;
      int64_t tokens = 0, samples = 0, truncated = 0;
      torch::NoGradGuard no_grad;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        auto ids = tokenizer.encode(line, /*add_bos=*/true);
        const auto window = static_cast<size_t>(model.config().max_position_embeddings);
        if (ids.size() > window) {  // right truncation to the context window
          ids.resize(window);
          ++truncated;
        }
        auto [sum, count] = model.sequence_loss(ids);
        total += sum;
        tokens += count;
        samples += count > 0;
      }
      if (tokens == 0) throw std::invalid_argument(*e_data + ": no line gives a token to predict");
      const double loss = total / static_cast<double>(tokens);
      if (*e_json) {
        nlohmann::json doc = {{"model", e_model->dir},
                              {"adapter", e_model->adapter},
                              {"quantized", !e_model->plain},
                              {"samples", samples},
                              {"tokens", tokens},
                              {"truncated", truncated},
                              {"loss", loss},
                              {"perplexity", std::exp(loss)}};
        std::cout << doc.dump(2) << "\n";
      } else {
        std::cout << fmt::format("eval: {} samples, {} predicted tokens: loss {:.6f}, perplexity {:.4f}\n", samples,
                                 tokens, loss, std::exp(loss));
      }
    });
  });

  // herd merge CONFIG | --base DIR --adapter DIR --out DIR: the adapter folded into the base, streamed.
  struct MergeFlags {
    std::string config, base, adapter, out, dtype, shard_size = "5GB";
    bool json = false;
  };
  auto mf = std::make_shared<MergeFlags>();
  auto* merge = app.add_subcommand(
      "merge", "Merge a LoRA adapter into its base model's weights, tensor by tensor (memory: about one tensor)");
  merge->add_option("config", mf->config,
                    "A job's YAML config: its base_model and {model_output_dir}/{model_name}_adapter, merged into "
                    "{model_output_dir}/{model_name}")
      ->check(CLI::ExistingFile);
  merge->add_option("--base", mf->base, "Base model directory (safetensors: bf16/fp16/fp32, or 4-bit bitsandbytes)")
      ->check(CLI::ExistingDirectory);
  merge->add_option("--adapter", mf->adapter, "A peft LoRA adapter directory")->check(CLI::ExistingDirectory);
  merge->add_option("--out", mf->out, "Output directory (must not exist, or be empty)");
  merge->add_option("--dtype", mf->dtype, "float16, bfloat16 or float32 (default: the base's)")
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}));
  merge->add_option("--shard-size", mf->shard_size, "Largest shard, as transformers' max_shard_size (5GB = 5e9 bytes)")
      ->capture_default_str();
  merge->add_flag("--json", mf->json, "Print JSON");
  merge->callback([&rc, mf] {
    rc = guarded("merge", [&] {
      herd::convert::MergeSpec spec;
      const bool flags = !mf->base.empty() || !mf->adapter.empty() || !mf->out.empty();
      if (!mf->config.empty() && flags) throw std::invalid_argument("give a CONFIG, or --base, --adapter and --out");
      if (!mf->config.empty()) {
        const Config c = load_config(mf->config);
        spec.base = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
        spec.adapter = fs::path(c.model_output_dir) / (c.model_name + "_adapter");
        spec.out = fs::path(c.model_output_dir) / c.model_name;
        if (!fs::is_directory(spec.adapter)) {
          throw std::invalid_argument(
              fmt::format("{}: no adapter there (herd train writes it)", spec.adapter.string()));
        }
      } else if (mf->base.empty() || mf->adapter.empty() || mf->out.empty()) {
        throw std::invalid_argument("give a CONFIG, or --base, --adapter and --out");
      } else {
        spec.base = mf->base;
        spec.adapter = mf->adapter;
        spec.out = mf->out;
      }
      spec.dtype = mf->dtype;
      const auto shard = herd::train::parse_bytes(mf->shard_size);
      if (!shard || *shard < 1) throw std::invalid_argument("--shard-size " + mf->shard_size + ": e.g. 5GB or 512MiB");
      spec.shard_bytes = static_cast<uint64_t>(*shard);

      const auto start = std::chrono::steady_clock::now();
      auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
      const bool bar = ::isatty(2) != 0;
      double drawn = -1;
      const auto report = herd::convert::merge_adapter(spec, [&](uint64_t done, uint64_t total) {
        const double now = seconds();
        if (!bar || (now - drawn < 0.2 && done < total)) return;
        drawn = now;
        const double share = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
        const int eta = share > 0 ? static_cast<int>(now / share - now) : 0;
        std::cerr << fmt::format("\r\033[Kmerge [{:<30}] {:.2f} / {:.2f} GB  eta {}:{:02d}",
                                 std::string(static_cast<size_t>(share * 30), '#'), static_cast<double>(done) / 1e9,
                                 static_cast<double>(total) / 1e9, eta / 60, eta % 60)
                  << (done == total ? "\n" : "") << std::flush;
      });
      const double took = seconds();
      const uint64_t peak = herd::process_memory().peak_resident_bytes;
      if (mf->json) {
        nlohmann::json doc = {{"out", spec.out.string()},   {"base", spec.base.string()},
                              {"adapter", spec.adapter.string()}, {"dtype", report.dtype},
                              {"tensors", report.tensors},  {"merged", report.merged},
                              {"bytes", report.bytes},      {"largest_tensor_bytes", report.largest},
                              {"files", report.files},      {"from_4bit", report.from_4bit},
                              {"seconds", took},            {"peak_rss_bytes", peak}};
        std::cout << doc.dump(2) << "\n";
        return;
      }
      std::cout << fmt::format(
          "herd merge: wrote {}: {} tensors ({} with the adapter's delta) in {}, {} in {} files, {:.1f} s; "
          "peak resident memory {:.0f} MiB\n",
          spec.out.string(), report.tensors, report.merged, report.dtype, size_text(report.bytes),
          report.files.size(), took, static_cast<double>(peak) / (1 << 20));
      if (report.from_4bit) {
        std::cout << "herd merge: note: the base is 4-bit (NF4): its weights were dequantized, so the merged model "
                     "carries their quantization error; merging into the original 16-bit base does not\n";
      }
    });
  });

  // herd export gguf MODEL|CONFIG [OUT.gguf] [--type f16|bf16|q8_0]: for llama.cpp.
  struct ExportFlags {
    std::string target, out, type = "f16";
  };
  auto ef = std::make_shared<ExportFlags>();
  auto* exporter = app.add_subcommand("export", "Export a model for other runtimes");
  exporter->require_subcommand(1);
  auto* gguf = exporter->add_subcommand("gguf", "A GGUF v3 file llama.cpp loads (tensor by tensor, constant memory)");
  gguf->add_option("model", ef->target,
                   "A model directory (safetensors in 16 or 32 bits: a merged model), or a job's YAML config (its "
                   "merged model, {model_output_dir}/{model_name})")
      ->required()
      ->check(CLI::ExistingPath);
  gguf->add_option("out", ef->out, "The .gguf file (with a CONFIG: default {model_output_dir}/{model_name}-TYPE.gguf)");
  gguf->add_option("--type", ef->type, "Matrices as f16, bf16 or q8_0 (norms stay f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f16", "bf16", "q8_0"}));
  gguf->callback([&rc, ef] {
    rc = guarded("export gguf", [&] {
      herd::convert::GgufSpec spec;
      spec.type = ef->type;
      spec.out = ef->out;
      if (fs::is_regular_file(ef->target)) {
        const Config c = load_config(ef->target);
        spec.model = fs::path(c.model_output_dir) / c.model_name;
        spec.name = c.model_name;
        if (!fs::is_directory(spec.model)) {
          throw std::invalid_argument(fmt::format("{}: no merged model there (herd merge {} writes it)",
                                                  spec.model.string(), ef->target));
        }
        if (spec.out.empty()) spec.out = fs::path(c.model_output_dir) / (c.model_name + "-" + ef->type + ".gguf");
      } else {
        spec.model = ef->target;
        if (spec.out.empty()) throw std::invalid_argument("give the output file: herd export gguf MODEL OUT.gguf");
      }
      const auto report = herd::convert::export_gguf(spec);
      std::cout << fmt::format("herd export gguf: wrote {}: {} tensors ({}), {} metadata keys, {}\n",
                               spec.out.string(), report.tensors, spec.type, report.metadata,
                               size_text(report.bytes));
    });
  });

  // herd chat CONFIG | MODEL [--adapter DIR] [--prompt TEXT]: the seed's prompt style, streamed.
  struct ChatFlags {
    std::string target, prompt;
    herd::model::SamplingOptions sampling;
    bool json = false;
  };
  auto cf = std::make_shared<ChatFlags>();
  auto c_model = std::make_shared<ModelFlags>();
  auto* chat = app.add_subcommand("chat", "Talk to a model (NF4 base + adapter, or a merged model) in the seed's "
                                          "prompt style; one-shot with --prompt. Without --device: a CONFIG's "
                                          "trainer.device, else a GPU when one is visible");
  chat->add_option("target", cf->target,
                   "A job's YAML config (its base_model, quantization and {model_output_dir}/{model_name}_adapter), "
                   "or a model directory")
      ->required()
      ->check(CLI::ExistingPath);
  c_model->add_to(chat, /*positional=*/false);
  chat->add_option("--prompt", cf->prompt, "One prompt: print the reply and exit");
  auto& so = cf->sampling;
  chat->add_option("--max-length", so.max_length, "Prompt + reply tokens, as transformers counts max_length")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  chat->add_option("--max-new-tokens", so.max_new_tokens, "Reply tokens (instead of --max-length)")
      ->check(CLI::PositiveNumber);
  chat->add_option("--temperature", so.temperature)->capture_default_str()->check(CLI::PositiveNumber);
  chat->add_option("--top-p", so.top_p)->capture_default_str()->check(CLI::Range(1e-9, 1.0));
  chat->add_option("--top-k", so.top_k, "0: off (transformers' default: 50)")->capture_default_str()->check(
      CLI::NonNegativeNumber);
  chat->add_option("--repetition-penalty", so.repetition_penalty, "1: off (transformers' semantics)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 100.0));
  chat->add_flag("--greedy", so.greedy, "The most likely token each time (after the repetition penalty)");
  chat->add_option("--seed", so.seed, "Sampling seed: the same seed gives the same reply")->capture_default_str();
  chat->add_flag("--json", cf->json, "Each reply as a JSON line (the prompt's and the reply's token ids, its text)");
  chat->callback([&rc, cf, c_model] {
    rc = guarded("chat", [&] {
      std::optional<herd::model::Llama> model;
      fs::path dir = cf->target;
      if (fs::is_regular_file(cf->target)) {  // a config: as training loads the model
        c_model->refuse_loading_flags();
        const Config c = load_config(cf->target);
        dir = resolve_hub_path(c.base_model, HubRepoType::Model, "base_model");
        if (c_model->adapter.empty()) {
          const fs::path trained = fs::path(c.model_output_dir) / (c.model_name + "_adapter");
          if (fs::is_directory(trained)) c_model->adapter = trained.string();
        }
        const std::string device = c_model->device_option->count() > 0 ? c_model->device
                                                                         : herd::train::training_device_name(c, 0);
        auto options = herd::train::load_options(c, torch::Device(device));
        options.lora.reset();
        if (!c_model->adapter.empty()) options.lora = herd::model::read_adapter_config(c_model->adapter);
        model.emplace(herd::model::Llama::load(dir, options));
        if (!c_model->adapter.empty()) herd::model::load_adapter_weights(*model, c_model->adapter);
      } else {
        c_model->dir = cf->target;
        if (c_model->device_option->count() == 0 && torch::cuda::is_available()) c_model->device = "cuda";
        model.emplace(c_model->load());
      }
      model->set_training(false);
      const auto tokenizer = herd::Tokenizer::load(dir / "tokenizer.model");
      herd::model::Chat conversation(*model, tokenizer, cf->sampling);
      // Streamed to the terminal as it comes, or a JSON line when the reply is done.
      auto turn = [&](const std::string& prompt) {
        const auto r = conversation.reply(prompt, cf->json ? std::function<void(const std::string&)>()
                                                           : [](const std::string& text) { std::cout << text << std::flush; });
        if (cf->json) {
          const nlohmann::json doc = {{"prompt_tokens", r.prompt}, {"tokens", r.tokens}, {"text", r.text},
                                      {"dropped_turns", r.dropped}};
          // a reply may end inside a character (byte-fallback pieces): shown as U+FFFD
          std::cout << doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        }
        std::cout << "\n" << std::flush;
        return r;
      };
      if (!cf->prompt.empty()) {
        turn(cf->prompt);
        return;
      }
      std::cerr << fmt::format("herd chat: {}{}; an empty line or Ctrl-D ends, /reset forgets the conversation\n",
                               dir.string(), c_model->adapter.empty() ? "" : " + " + c_model->adapter);
      for (std::string line;;) {
        std::cout << "> " << std::flush;
        if (!std::getline(std::cin, line) || line.empty()) break;
        if (line == "/reset") {
          conversation.reset();
          continue;
        }
        const auto r = turn(line);
        if (r.dropped > 0) {
          std::cerr << fmt::format("herd chat: {} of the earliest turns left out of the prompt (the context is full)\n",
                                   r.dropped);
        }
      }
    });
  });

  auto* tools = app.add_subcommand("tools", "Developer tools");
  tools->require_subcommand(1);

  auto spec = std::make_shared<herd::convert::TinyModelSpec>();
  auto tiny_out = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto* tiny = tools->add_subcommand("make-tiny-model", "Write a random-init Llama directory with a trained tokenizer");
  tiny->add_option("out", *tiny_out, "Output directory")->required();
  tiny->add_option("--layers", spec->layers)->capture_default_str()->check(CLI::PositiveNumber);
  tiny->add_option("--hidden", spec->hidden)->capture_default_str()->check(CLI::PositiveNumber);
  tiny->add_option("--heads", spec->heads)->capture_default_str()->check(CLI::PositiveNumber);
  tiny->add_option("--kv-heads", spec->kv_heads)->capture_default_str()->check(CLI::PositiveNumber);
  tiny->add_option("--intermediate", spec->intermediate)->capture_default_str()->check(CLI::PositiveNumber);
  tiny->add_option("--vocab", spec->vocab, "Tokenizer vocabulary (>= 259: 256 bytes + 3 specials)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{259}, int64_t{1} << 20));
  tiny->add_option("--seed", spec->seed)->capture_default_str();
  tiny->add_option("--init-std", spec->init_std, "Standard deviation of the random weights")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  tiny->add_flag("--tie-embeddings", spec->tie_embeddings);
  tiny->add_option("--text", *text, "Tokenizer training text (default: built in)")->check(CLI::ExistingFile);
  tiny->callback([&rc, spec, tiny_out, text] {
    rc = guarded("tools make-tiny-model", [&] {
      spec->text = *text;
      herd::convert::make_tiny_model(*spec, *tiny_out, executable_dir() / "herd-spm-train");
      std::cout << fmt::format("herd tools make-tiny-model: wrote {}\n", *tiny_out);
    });
  });

  auto make = std::make_shared<herd::convert::MakeModelSpec>();
  auto make_shape = std::make_shared<std::string>(), make_out = std::make_shared<std::string>();
  auto make_text = std::make_shared<std::string>();
  auto make_layers = std::make_shared<int64_t>(0);
  auto make_plain = std::make_shared<bool>(false);
  auto* made = tools->add_subcommand(
      "make-model", "Write a random model of a published shape (bfloat16, or NF4 pre-quantized) with a tokenizer of "
                    "its vocabulary");
  made->add_option("out", *make_out, "Output directory")->required();
  made->add_option("--shape", *make_shape, "llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b or llama-3-70b")
      ->required();
  made->add_flag("--nf4", make->nf4, "The linear weights in NF4, as a bitsandbytes 4-bit model saves them");
  made->add_flag("--no-double-quant", *make_plain, "With --nf4: float32 absmax instead of double quantization");
  made->add_option("--layers", *make_layers, "Keep only this many decoder layers (default: the shape's)")
      ->check(CLI::PositiveNumber);
  made->add_option("--seed", make->seed)->capture_default_str();
  made->add_option("--text", *make_text, "Tokenizer training text (default: built in)")->check(CLI::ExistingFile);
  made->callback([&rc, make, make_shape, make_out, make_text, make_layers, make_plain] {
    rc = guarded("tools make-model", [&] {
      auto known = herd::train::known_shape(*make_shape);
      if (!known) {
        throw std::invalid_argument(fmt::format(
            "--shape {}: not a shape herd knows (llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b)",
            *make_shape));
      }
      make->shape = known->second;
      if (*make_layers > 0) make->shape.num_hidden_layers = *make_layers;
      make->double_quant = !*make_plain;
      make->text = *make_text;
      herd::convert::make_model(*make, *make_out, executable_dir() / "herd-spm-train");
      std::cout << fmt::format("herd tools make-model: wrote {} ({}, {} layers{})\n", *make_out, known->first,
                               make->shape.num_hidden_layers, make->nf4 ? ", NF4" : "");
    });
  });

  auto l_model = std::make_shared<ModelFlags>();
  auto l_ids = std::make_shared<std::string>(), l_out = std::make_shared<std::string>();
  auto* logits = tools->add_subcommand("logits", "Run the model on token ids; write the logits as safetensors");
  l_model->add_to(logits);
  logits->add_option("--ids", *l_ids, "Token ids: rows separated by ';', ids by ','; short rows are right-padded")
      ->required();
  logits->add_option("--out", *l_out, "Output .safetensors (tensors: logits, input_ids, attention_mask)")->required();
  logits->callback([&rc, l_model, l_ids, l_out] {
    rc = guarded("tools logits", [&] {
      auto model = l_model->load();
      auto [ids, mask] = parse_rows(*l_ids);
      torch::NoGradGuard no_grad;
      auto out = model.forward(ids, mask).cpu().contiguous();
      SafetensorsWriter w;
      w.add("logits", DType::F32, out.sizes().vec(), out.data_ptr(), out.nbytes());
      w.add("input_ids", DType::I64, ids.sizes().vec(), ids.data_ptr(), ids.nbytes());
      w.add("attention_mask", DType::I64, mask.sizes().vec(), mask.data_ptr(), mask.nbytes());
      w.write(*l_out);
    });
  });

  // herd tools grads MODEL --adapter A --ids ROWS --out F: one training forward and
  // backward (activation recompute on, dropout as the adapter says) of the mean
  // next-token loss over full rows; writes the loss, every LoRA tensor and its
  // gradient (NAME.grad), and each linear layer's base weight as herd computes
  // with it (NF4 dequantized), in float32.
  auto g_model = std::make_shared<ModelFlags>();
  auto g_ids = std::make_shared<std::string>(), g_out = std::make_shared<std::string>();
  auto* grads = tools->add_subcommand("grads", "Loss and LoRA gradients of one training step, as safetensors");
  g_model->add_to(grads);
  grads->add_option("--ids", *g_ids, "Token ids: rows of equal length separated by ';', ids by ','")->required();
  grads->add_option("--out", *g_out, "Output .safetensors")->required();
  grads->callback([&rc, g_model, g_ids, g_out] {
    rc = guarded("tools grads", [&] {
      if (g_model->adapter.empty()) throw std::invalid_argument("--adapter is required (tools init-adapter makes one)");
      auto model = g_model->load();
      auto [ids, mask] = parse_rows(*g_ids);
      if (!mask.all().item<bool>()) throw std::invalid_argument("--ids: every row must have the same length");
      model.set_training(true);
      model.set_activation_checkpointing(true);
      for (auto& p : model.trainable_parameters()) p.set_requires_grad(true);
      ids = ids.to(model.device());
      auto scores = model.forward(ids);
      auto loss = torch::nn::functional::cross_entropy(scores.slice(1, 0, -1).reshape({-1, scores.size(2)}),
                                                       ids.slice(1, 1).reshape({-1}));
      loss.backward();
      std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"loss", loss.detach().reshape({1})}};
      for (auto& [name, t] : model.lora_tensors()) {
        tensors.emplace_back(name, t.detach());
        tensors.emplace_back(name + ".grad", t.grad());
      }
      for (size_t i = 0; i < model.layers().size(); ++i) {
        for (const auto& m : herd::model::linear_modules()) {
          const auto& w = model.layers()[i].linear.at(m)->weight();
          tensors.emplace_back(herd::model::module_path(static_cast<int64_t>(i), m) + ".weight",
                               w.materialize(torch::kFloat32));
        }
      }
      SafetensorsWriter w;
      std::vector<torch::Tensor> keep;
      for (auto& [name, t] : tensors) {
        keep.push_back(t.to(torch::kCPU, torch::kFloat32).contiguous());
        w.add(name, DType::F32, keep.back().sizes().vec(), keep.back().data_ptr(), keep.back().nbytes());
      }
      w.write(*g_out);
    });
  });

  // herd tools tokenize TOKENIZER --input STRINGS.json: token ids of each string
  // (BOS first, special-token strings mapped to their ids), as JSON.
  auto t_model = std::make_shared<std::string>(), t_input = std::make_shared<std::string>();
  auto t_no_bos = std::make_shared<bool>(false);
  auto* tok = tools->add_subcommand("tokenize", "Token ids of a JSON list of strings");
  tok->add_option("tokenizer", *t_model, "tokenizer.model, or a model directory holding one")->required();
  tok->add_option("--input", *t_input, "JSON file: a list of strings")->required()->check(CLI::ExistingFile);
  tok->add_flag("--no-bos", *t_no_bos, "Do not put BOS first");
  tok->callback([&rc, t_model, t_input, t_no_bos] {
    rc = guarded("tools tokenize", [&] {
      fs::path p = *t_model;
      auto tokenizer = herd::Tokenizer::load(fs::is_directory(p) ? p / "tokenizer.model" : p);
      std::ifstream in(*t_input);
      auto strings = nlohmann::json::parse(in);
      if (!strings.is_array()) throw std::invalid_argument(*t_input + ": expected a JSON list of strings");
      nlohmann::json out = nlohmann::json::array();
      for (const auto& s : strings) out.push_back(tokenizer.encode(s.get<std::string>(), !*t_no_bos));
      std::cout << out.dump() << "\n";
    });
  });

  // herd tools init-adapter MODEL OUT: a fresh adapter as training starts it (B = 0),
  // or with random B (--random-b) so that it changes the outputs.
  auto a_model = std::make_shared<std::string>(), a_out = std::make_shared<std::string>();
  auto a_lora = std::make_shared<herd::model::LoraOptions>();
  auto a_random = std::make_shared<bool>(false);
  auto* init = tools->add_subcommand("init-adapter", "Write a newly initialized peft LoRA adapter for a model");
  init->add_option("model", *a_model, "Model directory")->required();
  init->add_option("out", *a_out, "Adapter directory")->required();
  init->add_option("--r", a_lora->r)->capture_default_str()->check(CLI::PositiveNumber);
  init->add_option("--alpha", a_lora->lora_alpha)->capture_default_str();
  init->add_option("--targets", a_lora->target_modules)->delimiter(',')->capture_default_str();
  init->add_option("--seed", a_lora->seed)->capture_default_str();
  init->add_flag("--rslora", a_lora->use_rslora);
  init->add_flag("--random-b", *a_random, "Initialize B ~ N(0, 0.1) instead of zeros (for tests)");
  init->callback([&rc, a_model, a_out, a_lora, a_random] {
    rc = guarded("tools init-adapter", [&] {
      herd::model::LoadOptions options;
      options.quantize = false;
      options.lora = *a_lora;
      auto model = herd::model::Llama::load(*a_model, options);
      if (*a_random) {
        torch::NoGradGuard no_grad;
        torch::manual_seed(a_lora->seed + 1);
        for (auto& [name, t] : model.lora_tensors()) {
          if (name.find("lora_B") != std::string::npos) t.normal_(0.0, 0.1);
        }
      }
      herd::model::save_adapter(model, *a_out, fs::absolute(*a_model).string());
    });
  });
}

}  // namespace herd::cli
