#include "worker/model/hf_checkpoint.h"

#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <random>
#include <set>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/safetensors.h"
#include "kernels/nf4.h"
#include "worker/model/llama.h"
#include "worker/model/tensor_view.h"

extern char** environ;

namespace herd::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Text for the tiny tokenizer: the conversation headers and ordinary English, so
// that the merges look like a real model's.
std::string builtin_text() {
  const char* subjects[] = {"The model", "A worker", "The coordinator", "Every rank", "The adapter", "A person"};
  const char* verbs[] = {"trains", "reads", "writes", "answers", "explains", "checks"};
  const char* objects[] = {"the data",       "a question",   "the weights", "its gradients",
                           "the checkpoint", "every sample", "the loss",    "a long conversation"};
  std::string text;
  std::mt19937 rng(7);
  for (int i = 0; i < 400; ++i) {
    text += fmt::format("### HUMAN:\n{} {} {} {} times?\n\n### RESPONSE:\n{} {} {} in {} steps.</s>\n\n",
                        subjects[rng() % 6], verbs[rng() % 6], objects[rng() % 8], rng() % 100, subjects[rng() % 6],
                        verbs[rng() % 6], objects[rng() % 8], rng() % 1000);
  }
  return text;
}

void run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
    throw std::runtime_error(fmt::format("cannot start {}", argv[0]));
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(fmt::format("{} failed (status {})", argv[0], status));
  }
}

void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2) << "\n"; }

void add_f32(SafetensorsWriter& w, const std::string& name, const torch::Tensor& t) {
  auto c = t.to(torch::kFloat32).contiguous();
  w.add(name, DType::F32, c.sizes().vec(), c.data_ptr(), c.nbytes());
}

void copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                        "generation_config.json"}) {
    if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
  }
}

}  // namespace

void make_tiny_model(const TinyModelSpec& spec, const fs::path& out, const fs::path& spm_train) {
  fs::create_directories(out);
  LlamaConfig c;
  c.vocab_size = spec.vocab;
  c.hidden_size = spec.hidden;
  c.intermediate_size = spec.intermediate;
  c.num_hidden_layers = spec.layers;
  c.num_attention_heads = spec.heads;
  c.num_key_value_heads = spec.kv_heads;
  c.head_dim = spec.hidden / spec.heads;
  c.max_position_embeddings = spec.max_positions;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = spec.tie_embeddings;
  // Validate the shape through the same checks a loaded config.json gets.
  c = LlamaConfig::from_json(c.to_json(), "make-tiny-model");

  fs::path text = spec.text;
  if (text.empty()) {
    text = out / "tokenizer-text.txt";
    std::ofstream(text) << builtin_text();
  }
  // Llama-2's tokenizer settings: BPE with byte fallback, digits split, no
  // normalization, a dummy prefix, <unk>=0 <s>=1 </s>=2 and no pad.
  run({spm_train.string(), "--input=" + text.string(), "--model_prefix=" + (out / "tokenizer").string(),
       fmt::format("--vocab_size={}", spec.vocab), "--model_type=bpe", "--byte_fallback=true", "--split_digits=true",
       "--normalization_rule_name=identity", "--add_dummy_prefix=true", "--remove_extra_whitespaces=false",
       "--allow_whitespace_only_pieces=true", "--character_coverage=1.0", "--unk_id=0", "--bos_id=1", "--eos_id=2",
       "--pad_id=-1", "--minloglevel=2", "--num_threads=1"});
  fs::remove(out / "tokenizer.vocab");
  if (spec.text.empty()) fs::remove(text);

  torch::manual_seed(static_cast<uint64_t>(spec.seed));
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  auto normal = [&](std::vector<int64_t> shape) { return torch::randn(shape) * spec.init_std; };
  auto norm = [](int64_t n) { return 1.0 + 0.1 * torch::randn({n}); };
  add_f32(w, "model.embed_tokens.weight", normal({c.vocab_size, c.hidden_size}));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    for (const auto& m : linear_modules()) {
      auto [o, in] = c.linear_shape(m);
      add_f32(w, module_path(i, m) + ".weight", normal({o, in}));
    }
    add_f32(w, fmt::format("model.layers.{}.input_layernorm.weight", i), norm(c.hidden_size));
    add_f32(w, fmt::format("model.layers.{}.post_attention_layernorm.weight", i), norm(c.hidden_size));
  }
  add_f32(w, "model.norm.weight", norm(c.hidden_size));
  if (!c.tie_word_embeddings) add_f32(w, "lm_head.weight", normal({c.vocab_size, c.hidden_size}));
  w.write(out / "model.safetensors");

  write_json(out / "config.json", c.to_json());
  write_json(out / "tokenizer_config.json", {{"tokenizer_class", "LlamaTokenizer"},
                                             {"add_bos_token", true},
                                             {"add_eos_token", false},
                                             {"legacy", true},
                                             {"model_max_length", c.max_position_embeddings},
                                             {"bos_token", "<s>"},
                                             {"eos_token", "</s>"},
                                             {"unk_token", "<unk>"},
                                             {"pad_token", nullptr},
                                             {"clean_up_tokenization_spaces", false}});
  write_json(out / "special_tokens_map.json", {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  write_json(out / "generation_config.json", {{"bos_token_id", 1}, {"eos_token_id", 2}});
}

void write_quantized_checkpoint(const fs::path& model_dir, const fs::path& out, const QuantizeSpec& spec) {
  const LlamaConfig c = LlamaConfig::from_file(model_dir / "config.json");
  const auto ckpt = SafetensorsCheckpoint::open(model_dir);
  fs::create_directories(out);
  std::set<std::string> linear;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    for (const auto& m : linear_modules()) linear.insert(module_path(i, m) + ".weight");
  }
  SafetensorsWriter w(out);  // spills next to the output: a 70B checkpoint never sits in memory
  w.set_metadata("format", "pt");
  for (const auto& name : ckpt.names()) {
    const TensorView& v = ckpt.tensor(name);
    if (!linear.count(name)) {
      w.add(name, v.dtype, v.shape, v.data, v.nbytes);
      continue;
    }
    if (v.shape.size() != 2) throw SafetensorsError(fmt::format("'{}' is not a 2-D weight", name));
    if (!is_float(v.dtype)) throw SafetensorsError(fmt::format("'{}' is not a float weight", name));
    FrozenWeight f = FrozenWeight::quantize(view_tensor(v), spec.double_quant);
    const int64_t packed = f.packed.numel();
    w.add(name, DType::U8, {packed, 1}, f.packed.data_ptr(), f.packed.nbytes());
    w.add(name + ".quant_map", DType::F32, {16}, f.code_table.data_ptr(), 64);
    // "dtype" is the weight's own dtype: bitsandbytes dequantizes into it.
    const char* dtype_names[] = {"float32", "float16", "bfloat16"};
    json state = {{"quant_type", "nf4"},
                  {"blocksize", 64},
                  {"dtype", dtype_names[v.dtype == DType::F32   ? 0
                                        : v.dtype == DType::F16 ? 1
                                                                : 2]},
                  {"shape", {f.out_features, f.in_features}}};
    if (spec.double_quant) {
      w.add(name + ".absmax", DType::U8, {f.absmax_codes.numel()}, f.absmax_codes.data_ptr(), f.absmax_codes.nbytes());
      w.add(name + ".nested_absmax", DType::F32, {f.nested_absmax.numel()}, f.nested_absmax.data_ptr(),
            f.nested_absmax.nbytes());
      w.add(name + ".nested_quant_map", DType::F32, {256}, f.nested_map.data_ptr(), 1024);
      state["nested_blocksize"] = 256;
      state["nested_dtype"] = "float32";
      state["nested_offset"] = f.offset;
    } else {
      w.add(name + ".absmax", DType::F32, {f.absmax.numel()}, f.absmax.data_ptr(), f.absmax.nbytes());
    }
    const std::string text = state.dump();
    w.add(name + ".quant_state.bitsandbytes__nf4", DType::U8, {static_cast<int64_t>(text.size())}, text.data(),
          text.size());
  }
  w.write(out / "model.safetensors");

  std::ifstream in(model_dir / "config.json");
  json config = json::parse(in);
  config["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                   {"load_in_4bit", true},
                                   {"load_in_8bit", false},
                                   {"bnb_4bit_quant_type", "nf4"},
                                   {"bnb_4bit_use_double_quant", spec.double_quant},
                                   {"bnb_4bit_compute_dtype", spec.compute_dtype},
                                   {"bnb_4bit_quant_storage", "uint8"},
                                   {"llm_int8_threshold", 6.0},
                                   {"llm_int8_has_fp16_weight", false},
                                   {"llm_int8_skip_modules", nullptr},
                                   {"llm_int8_enable_fp32_cpu_offload", false}};
  write_json(out / "config.json", config);
  copy_tokenizer_files(model_dir, out);
}

}  // namespace herd::model
