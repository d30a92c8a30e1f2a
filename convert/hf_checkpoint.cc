#include "convert/hf_checkpoint.h"

#include <spawn.h>
#include <sys/wait.h>

#include <array>
#include <span>
#include <cstring>
#include <fstream>
#include <random>
#include <set>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include "common/safetensors.h"
#include "common/sentencepiece_tokenizer.h"
#include "convert/byte_level_vocabulary.h"
#include "kernels/nf4.h"
#include "worker/model/llama.h"
#include "worker/model/tensor_view.h"

extern char** environ;

namespace herd::convert {

using model::FrozenWeight;
using model::LlamaConfig;
using model::is_float;
using model::linear_modules;
using model::module_path;
using model::torch_dtype;
using model::view_tensor;

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

// A small, fast, seedable generator (splitmix64).
struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t operator()() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

// What NF4 makes of a normal weight, measured once on 2^22 standard normal values:
// `pairs` maps 16 random bits to a packed byte whose two codes occur as often as
// they do there (each code's share to 1/256), `absmax` holds the 65,536 blocks'
// absmax (in standard deviations) to draw from.
struct QuantizedNormal {
  std::vector<uint8_t> pairs;
  std::vector<float> absmax;
};

const QuantizedNormal& quantized_normal() {
  static const QuantizedNormal q = [] {
    const size_t n = size_t{1} << 22;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(20260101);
    auto x = torch::randn({static_cast<int64_t>(n)}, gen);
    std::vector<uint8_t> packed(kernels::nf4_packed_bytes(n));
    QuantizedNormal out;
    out.absmax.resize(kernels::nf4_blocks(n));
    kernels::nf4_quantize(x.data_ptr<float>(), n, packed.data(), out.absmax.data());
    std::array<double, 16> count{};
    for (uint8_t b : packed) {
      ++count[b >> 4];
      ++count[b & 15];
    }
    std::array<uint8_t, 256> code{};  // a random byte -> a code, in proportion to the counts
    double below = 0;
    for (int c = 0, b = 0; c < 16; ++c) {
      below += count[static_cast<size_t>(c)] / static_cast<double>(n);
      for (; b < 256 && (b + 0.5) / 256 < below; ++b) code[static_cast<size_t>(b)] = static_cast<uint8_t>(c);
      if (c == 15) for (; b < 256; ++b) code[static_cast<size_t>(b)] = 15;
    }
    out.pairs.resize(65536);
    for (size_t r = 0; r < 65536; ++r) out.pairs[r] = static_cast<uint8_t>(code[r & 255] << 4 | code[r >> 8]);
    return out;
  }();
  return q;
}

// tokenizer.model with `vocab` pieces, Llama-2's settings: BPE with byte fallback,
// digits split, no normalization, a dummy prefix, <unk>=0 <s>=1 </s>=2 and no pad,
// trained on `text` (empty: the built-in text). Not `exact`: the trainer learns
// what the text holds and the rest of the vocabulary is unused pieces.
void train_tokenizer(const fs::path& out, int64_t vocab, const fs::path& text_file, const fs::path& spm_train,
                     bool exact) {
  fs::path text = text_file;
  if (text.empty()) {
    text = out / "tokenizer-text.txt";
    std::ofstream(text) << builtin_text();
  }
  const int64_t learned = exact ? vocab : std::min<int64_t>(vocab, 8000);
  run({spm_train.string(), "--input=" + text.string(), "--model_prefix=" + (out / "tokenizer").string(),
       fmt::format("--vocab_size={}", learned), fmt::format("--hard_vocab_limit={}", exact), "--model_type=bpe",
       "--byte_fallback=true", "--split_digits=true", "--normalization_rule_name=identity",
       "--add_dummy_prefix=true", "--remove_extra_whitespaces=false", "--allow_whitespace_only_pieces=true",
       "--character_coverage=1.0", "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1", "--minloglevel=2",
       "--num_threads=1"});
  fs::remove(out / "tokenizer.vocab");
  if (text_file.empty()) fs::remove(text);
  if (!exact) pad_tokenizer_model(out / "tokenizer.model", vocab);
}

// The tokenizer's files: a byte-level tokenizer.json in `style`'s layout, else
// SentencePiece's tokenizer.model with the JSON files transformers writes for Llama-2;
// the config's BOS and EOS ids become the tokenizer's (Qwen2, which has no BOS, gives
// its EOS for both, as its config.json does).
void write_tokenizer(const fs::path& out, LlamaConfig& c, const fs::path& text_file, const fs::path& spm_train,
                     bool exact, const std::optional<ByteLevelStyle>& style) {
  if (style) {
    std::string text = builtin_text();
    if (!text_file.empty()) {
      std::ifstream in(text_file, std::ios::binary);
      if (!in) throw std::runtime_error(fmt::format("{}: cannot read", text_file.string()));
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    const auto [bos, eos] = write_byte_level_tokenizer(out, text, c.vocab_size, *style, c.max_position_embeddings);
    c.bos_token_id = bos >= 0 ? bos : eos;
    c.eos_token_id = eos;
  } else {
    train_tokenizer(out, c.vocab_size, text_file, spm_train, exact);
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
  }
  write_json(out / "generation_config.json", {{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id}});
}

// config.json's quantization_config as transformers saves a bitsandbytes 4-bit model.
json quantization_config(bool double_quant, const std::string& compute_dtype) {
  return {{"quant_method", "bitsandbytes"},
          {"load_in_4bit", true},
          {"load_in_8bit", false},
          {"bnb_4bit_quant_type", "nf4"},
          {"bnb_4bit_use_double_quant", double_quant},
          {"bnb_4bit_compute_dtype", compute_dtype},
          {"bnb_4bit_quant_storage", "uint8"},
          {"llm_int8_threshold", 6.0},
          {"llm_int8_has_fp16_weight", false},
          {"llm_int8_skip_modules", nullptr},
          {"llm_int8_enable_fp32_cpu_offload", false}};
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
  const std::string family = spec.family == "llama3" ? "llama" : spec.family;
  const auto known = std::find_if(model::families().begin(), model::families().end(),
                                  [&](const model::Family& f) { return f.name == family; });
  if (known == model::families().end()) {
    throw std::invalid_argument(fmt::format("--family {}: llama, llama3, qwen2 or mistral", spec.family));
  }
  c.family = &*known;
  c.sliding_window = spec.sliding_window;
  // Validate the shape through the same checks a loaded config.json gets.
  c = LlamaConfig::from_json(c.to_json(), "make-tiny-model");
  std::optional<ByteLevelStyle> style;
  if (spec.family != "llama") style = byte_level_style(spec.family == "mistral" ? "tekken" : spec.family);
  write_tokenizer(out, c, spec.text, spm_train, /*exact=*/true, style);

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
  if (c.family->qkv_bias) {  // after the rest: a Llama of a seed has the same weights as before
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
        add_f32(w, module_path(i, m) + ".bias", normal({c.linear_shape(m).first}));
      }
    }
  }
  w.write(out / "model.safetensors");
  write_json(out / "config.json", c.to_json());
}

void make_model(const MakeModelSpec& spec, const fs::path& out, const fs::path& spm_train) {
  LlamaConfig c = LlamaConfig::from_json(spec.shape.to_json(), "make-model");
  fs::create_directories(out);
  write_tokenizer(out, c, spec.text, spm_train, /*exact=*/false, published_byte_level_style(c));

  SafetensorsWriter w(out);
  w.set_metadata("format", "pt");
  uint64_t stream = 0;  // a generator seed per tensor: the model is the same whatever order shards are written in
  auto next_seed = [&] { return spec.seed * 0x9E3779B97F4A7C15ull + ++stream; };
  auto bf16 = [&](const std::string& name, std::vector<int64_t> shape, double mean, double std) {
    w.add_generated(name, DType::BF16, shape, [shape, mean, std, seed = next_seed()](void* dst) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
      torch::from_blob(dst, shape, torch::kBFloat16).normal_(mean, std, gen);
    });
  };
  const double sd = spec.init_std;
  auto nf4 = [&](const std::string& name, int64_t rows, int64_t cols) {
    const auto n = static_cast<size_t>(rows * cols);
    const auto blocks = static_cast<int64_t>(kernels::nf4_blocks(n));
    const auto nested = static_cast<int64_t>(kernels::nested_blocks(static_cast<size_t>(blocks)));
    const uint64_t seed = next_seed();
    auto absmax = [blocks, sd, seed] {
      const auto& normal = quantized_normal();
      auto a = torch::empty({blocks});
      SplitMix64 rng(seed);
      for (auto& v : std::span(a.data_ptr<float>(), static_cast<size_t>(blocks))) {
        v = static_cast<float>(normal.absmax[rng() % normal.absmax.size()] * sd);
      }
      return a;
    };
    // Double quantization of the absmax: codes, nested absmax, offset.
    auto quantized = [absmax, blocks, nested] {
      auto a = absmax();
      auto codes = torch::empty({blocks}, torch::kUInt8), top = torch::empty({nested});
      float offset = 0;
      kernels::absmax_quantize(a.data_ptr<float>(), static_cast<size_t>(blocks), codes.data_ptr<uint8_t>(),
                               top.data_ptr<float>(), &offset);
      return std::tuple{codes, top, offset};
    };
    const auto packed = static_cast<int64_t>(kernels::nf4_packed_bytes(n));
    w.add_generated(name, DType::U8, {packed, 1}, [packed, seed](void* dst) {
      const auto& pairs = quantized_normal().pairs;
      SplitMix64 rng(~seed);
      auto* bytes = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < packed; i += 4) {
        const uint64_t r = rng();
        for (int64_t k = 0; k < 4 && i + k < packed; ++k) bytes[i + k] = pairs[(r >> (16 * k)) & 0xffff];
      }
    });
    w.add(name + ".quant_map", DType::F32, {16}, kernels::kNf4Codes, sizeof kernels::kNf4Codes);
    json state = {{"quant_type", "nf4"}, {"blocksize", 64}, {"dtype", "bfloat16"}, {"shape", {rows, cols}}};
    if (spec.double_quant) {
      w.add_generated(name + ".absmax", DType::U8, {blocks}, [quantized, blocks](void* dst) {
        std::memcpy(dst, std::get<0>(quantized()).data_ptr(), static_cast<size_t>(blocks));
      });
      w.add_generated(name + ".nested_absmax", DType::F32, {nested}, [quantized, nested](void* dst) {
        std::memcpy(dst, std::get<1>(quantized()).data_ptr(), static_cast<size_t>(nested) * sizeof(float));
      });
      w.add(name + ".nested_quant_map", DType::F32, {256}, kernels::kDynamicMap, sizeof kernels::kDynamicMap);
      state["nested_blocksize"] = 256;
      state["nested_dtype"] = "float32";
      state["nested_offset"] = std::get<2>(quantized());
    } else {
      w.add_generated(name + ".absmax", DType::F32, {blocks}, [absmax, blocks](void* dst) {
        std::memcpy(dst, absmax().data_ptr(), static_cast<size_t>(blocks) * sizeof(float));
      });
    }
    const std::string text = state.dump();
    w.add(name + ".quant_state.bitsandbytes__nf4", DType::U8, {static_cast<int64_t>(text.size())}, text.data(),
          text.size());
  };

  bf16("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, 0, sd);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    for (const auto& m : linear_modules()) {
      auto [rows, cols] = c.linear_shape(m);
      if (spec.nf4) {
        nf4(module_path(i, m) + ".weight", rows, cols);
      } else {
        bf16(module_path(i, m) + ".weight", {rows, cols}, 0, sd);
      }
    }
    bf16(fmt::format("model.layers.{}.input_layernorm.weight", i), {c.hidden_size}, 1, 0.1);
    bf16(fmt::format("model.layers.{}.post_attention_layernorm.weight", i), {c.hidden_size}, 1, 0.1);
    if (c.family->qkv_bias) {
      for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
        bf16(module_path(i, m) + ".bias", {c.linear_shape(m).first}, 0, sd);
      }
    }
  }
  bf16("model.norm.weight", {c.hidden_size}, 1, 0.1);
  if (!c.tie_word_embeddings) bf16("lm_head.weight", {c.vocab_size, c.hidden_size}, 0, sd);
  w.write_sharded(out, spec.shard_bytes);

  json config = c.to_json();
  config["torch_dtype"] = "bfloat16";
  if (spec.nf4) config["quantization_config"] = quantization_config(spec.double_quant, "bfloat16");
  write_json(out / "config.json", config);
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
  config["quantization_config"] = quantization_config(spec.double_quant, spec.compute_dtype);
  write_json(out / "config.json", config);
  copy_tokenizer_files(model_dir, out);
}

}  // namespace herd::convert
