// herd tools: developer tools (random models, logits and gradients for the oracle
// tests, tokenizing, fresh adapters).
#include <charconv>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/model_commands.h"
#include "cli/model_flags.h"
#include "common/safetensors.h"
#include "common/tokenizer.h"
#include "convert/hf_checkpoint.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/memory_plan.h"
#include "worker/train/step.h"

namespace herd::cli {

namespace fs = std::filesystem;

namespace {

// "1,2,3;4,5" -> rows of ids, right-padded with 0 and a 0/1 attention mask.
std::pair<torch::Tensor, torch::Tensor> parse_rows(const std::string& text) {
  std::vector<std::vector<int64_t>> rows;
  std::stringstream all(text);
  for (std::string row; std::getline(all, row, ';');) {
    std::vector<int64_t> ids;
    std::stringstream r(row);
    for (std::string id; std::getline(r, id, ',');) {
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
    const auto n = static_cast<int64_t>(rows[i].size());
    ids[static_cast<int64_t>(i)].slice(0, 0, n).copy_(torch::tensor(rows[i], torch::kInt64));
    mask[static_cast<int64_t>(i)].slice(0, 0, n).fill_(1);
  }
  return {ids, mask};
}

// Float32 and int64 tensors, contiguous on the CPU, as one safetensors file.
void write_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& path) {
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors) {
    const DType dtype = t.scalar_type() == torch::kInt64 ? DType::I64 : DType::F32;
    w.add(name, dtype, t.sizes().vec(), t.data_ptr(), t.nbytes());
  }
  w.write(path);
}

void add_make_tiny_model(CLI::App* tools, int& rc) {
  struct Flags {
    convert::TinyModelSpec spec;
    std::string out, text;
  };
  auto f = std::make_shared<Flags>();
  auto& spec = f->spec;
  auto* cmd = tools->add_subcommand("make-tiny-model", "Write a random-init model directory with a trained tokenizer");
  cmd->add_option("out", f->out, "Output directory")->required();
  cmd->add_option("--layers", spec.layers)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--hidden", spec.hidden)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--heads", spec.heads)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--kv-heads", spec.kv_heads)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--intermediate", spec.intermediate)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--vocab", spec.vocab, "Tokenizer vocabulary (>= 259: 256 bytes + 3 specials)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{259}, int64_t{1} << 20));
  cmd->add_option("--seed", spec.seed)->capture_default_str();
  cmd->add_option("--init-std", spec.init_std, "Standard deviation of the random weights")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--tie-embeddings", spec.tie_embeddings);
  cmd->add_option("--family", spec.family,
                  "llama (SentencePiece tokenizer.model), llama3, qwen2 or mistral (byte-level tokenizer.json)")
      ->capture_default_str()
      ->check(CLI::IsMember({"llama", "llama3", "qwen2", "mistral"}));
  cmd->add_option("--sliding-window", spec.sliding_window, "mistral: attention's sliding window (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--text", f->text, "Tokenizer training text (default: built in)")->check(CLI::ExistingFile);
  cmd->callback([&rc, f] {
    rc = guarded("tools make-tiny-model", [&] {
      f->spec.text = f->text;
      convert::make_tiny_model(f->spec, f->out, executable_dir() / "herd-spm-train");
      std::cout << fmt::format("herd tools make-tiny-model: wrote {}\n", f->out);
    });
  });
}

struct MakeModelFlags {
  convert::MakeModelSpec spec;
  std::string shape, out, text;
  int64_t layers = 0;
  bool single = false;
};

void make_model(MakeModelFlags& f) {
  const auto known = train::known_shape(f.shape);
  if (!known) {
    throw std::invalid_argument(
        fmt::format("--shape {}: not a shape herd knows ({})", f.shape, train::known_shape_names()));
  }
  f.spec.shape = known->second;
  if (f.layers > 0) f.spec.shape.num_hidden_layers = f.layers;
  f.spec.double_quant = !f.single;
  f.spec.text = f.text;
  convert::make_model(f.spec, f.out, executable_dir() / "herd-spm-train");
  std::cout << fmt::format("herd tools make-model: wrote {} ({}, {} layers{})\n", f.out, known->first,
                           f.spec.shape.num_hidden_layers, f.spec.nf4 ? ", NF4" : "");
}

void add_make_model(CLI::App* tools, int& rc) {
  auto f = std::make_shared<MakeModelFlags>();
  auto* cmd = tools->add_subcommand(
      "make-model", "Write a random model of a published shape (bfloat16, or NF4 pre-quantized) with a tokenizer of "
                    "its vocabulary");
  cmd->add_option("out", f->out, "Output directory")->required();
  cmd->add_option("--shape", f->shape, train::known_shape_names())->required();
  cmd->add_flag("--nf4", f->spec.nf4, "The linear weights in NF4, as a bitsandbytes 4-bit model saves them");
  cmd->add_flag("--no-double-quant", f->single, "With --nf4: float32 absmax instead of double quantization");
  cmd->add_option("--layers", f->layers, "Keep only this many decoder layers (default: the shape's)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", f->spec.seed)->capture_default_str();
  cmd->add_option("--text", f->text, "Tokenizer training text (default: built in)")->check(CLI::ExistingFile);
  cmd->callback([&rc, f] { rc = guarded("tools make-model", [&] { make_model(*f); }); });
}

struct RowsFlags {
  ModelFlags model;
  std::string ids, out;
};

void add_logits(CLI::App* tools, int& rc) {
  auto f = std::make_shared<RowsFlags>();
  auto* cmd = tools->add_subcommand("logits", "Run the model on token ids; write the logits as safetensors");
  f->model.add_to(cmd);
  cmd->add_option("--ids", f->ids, "Token ids: rows separated by ';', ids by ','; short rows are right-padded")
      ->required();
  cmd->add_option("--out", f->out, "Output .safetensors (tensors: logits, input_ids, attention_mask)")->required();
  cmd->callback([&rc, f] {
    rc = guarded("tools logits", [&] {
      const auto model = f->model.load();
      const auto [ids, mask] = parse_rows(f->ids);
      torch::NoGradGuard no_grad;
      write_tensors({{"logits", model.forward(ids, mask).cpu().contiguous()}, {"input_ids", ids},
                     {"attention_mask", mask}},
                    f->out);
    });
  });
}

// herd tools grads MODEL --adapter A --ids ROWS --out F: train::adapter_gradients.
void add_grads(CLI::App* tools, int& rc) {
  auto f = std::make_shared<RowsFlags>();
  auto* cmd = tools->add_subcommand("grads", "Loss and LoRA gradients of one training step, as safetensors");
  f->model.add_to(cmd);
  cmd->add_option("--ids", f->ids, "Token ids: rows of equal length separated by ';', ids by ','")->required();
  cmd->add_option("--out", f->out, "Output .safetensors")->required();
  cmd->callback([&rc, f] {
    rc = guarded("tools grads", [&] {
      if (f->model.adapter.empty()) throw std::invalid_argument("--adapter is required (tools init-adapter makes one)");
      auto model = f->model.load();
      const auto [ids, mask] = parse_rows(f->ids);
      if (!mask.all().item<bool>()) throw std::invalid_argument("--ids: every row must have the same length");
      write_tensors(train::adapter_gradients(model, ids), f->out);
    });
  });
}

// herd tools tokenize TOKENIZER --input STRINGS.json: token ids of each string
// (the tokenizer's special tokens around it, added-token strings mapped to their ids),
// as JSON; with --decode, the text of those ids instead; with --info, what the
// tokenizer is.
void add_tokenize(CLI::App* tools, int& rc) {
  struct Flags {
    std::string tokenizer, input;
    bool no_bos = false, decode = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = tools->add_subcommand("tokenize", "Token ids of a JSON list of strings");
  cmd->add_option("tokenizer", f->tokenizer,
                  "tokenizer.json or tokenizer.model, or a model directory (tokenizer.json first, as AutoTokenizer)")
      ->required();
  cmd->add_option("--input", f->input, "JSON file: a list of strings")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--no-bos", f->no_bos, "Do not add the special tokens (BOS)");
  cmd->add_flag("--decode", f->decode, "Print the text of each string's ids (special tokens left out)");
  cmd->callback([&rc, f] {
    rc = guarded("tools tokenize", [&] {
      const auto tokenizer = Tokenizer::load(tokenizer_file(f->tokenizer));
      std::ifstream in(f->input);
      const auto strings = nlohmann::json::parse(in);
      if (!strings.is_array()) throw std::invalid_argument(f->input + ": expected a JSON list of strings");
      nlohmann::json out = nlohmann::json::array();
      for (const auto& s : strings) {
        const auto ids = tokenizer->encode(s.get<std::string>(), !f->no_bos);
        if (f->decode) {
          out.push_back(tokenizer->decode(ids));
        } else {
          out.push_back(ids);
        }
      }
      std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    });
  });
}

// herd tools init-adapter MODEL OUT: a fresh adapter as training starts it (B = 0),
// or with random B (--random-b) so that it changes the outputs; with --dora, DoRA's
// magnitude is ||W + s B A|| (peft's start), times U(0.5, 1.5) with --random-b.
void add_init_adapter(CLI::App* tools, int& rc) {
  struct Flags {
    std::string model, out;
    model::LoraOptions lora;
    bool random_b = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = tools->add_subcommand("init-adapter", "Write a newly initialized peft LoRA adapter for a model");
  cmd->add_option("model", f->model, "Model directory")->required();
  cmd->add_option("out", f->out, "Adapter directory")->required();
  cmd->add_option("--r", f->lora.r)->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--alpha", f->lora.lora_alpha)->capture_default_str();
  cmd->add_option("--targets", f->lora.target_modules)->delimiter(',')->capture_default_str();
  cmd->add_option("--seed", f->lora.seed)->capture_default_str();
  cmd->add_flag("--rslora", f->lora.use_rslora);
  cmd->add_flag("--dora", f->lora.use_dora);
  cmd->add_flag("--random-b", f->random_b, "Initialize B ~ N(0, 0.1) instead of zeros (for tests)");
  cmd->callback([&rc, f] {
    rc = guarded("tools init-adapter", [&] {
      model::LoadOptions options;
      options.quantize = false;
      options.lora = f->lora;
      auto model = model::Llama::load(f->model, options);
      if (f->random_b) {
        torch::NoGradGuard no_grad;
        torch::manual_seed(f->lora.seed + 1);
        for (auto& [name, t] : model.lora_tensors()) {
          if (name.find("lora_B") != std::string::npos) t.normal_(0.0, 0.1);
        }
        for (auto& layer : model.layers()) {
          for (auto& [module, l] : layer.linear) {
            if (!l->dora()) continue;
            l->reset_magnitude();
            l->magnitude().mul_(torch::rand_like(l->magnitude()).add_(0.5));
          }
        }
      }
      model::save_adapter(model, f->out, fs::absolute(f->model).string());
    });
  });
}

}  // namespace

void add_tools_commands(CLI::App& app, int& rc) {
  auto* tools = app.add_subcommand("tools", "Developer tools");
  tools->require_subcommand(1);
  add_make_tiny_model(tools, rc);
  add_make_model(tools, rc);
  add_logits(tools, rc);
  add_grads(tools, rc);
  add_tokenize(tools, rc);
  add_init_adapter(tools, rc);
}

}  // namespace herd::cli
