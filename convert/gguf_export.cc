#include "convert/gguf_export.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include <c10/util/Half.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "common/safetensors.h"
#include "common/sentencepiece_tokenizer.h"
#include "common/tokenizer_json.h"
#include "convert/byte_level_vocabulary.h"
#include "worker/model/llama_config.h"
#include "worker/model/tensor_view.h"

namespace herd::convert {

using model::LlamaConfig;
using model::is_float;
using model::view_tensor;

namespace fs = std::filesystem;

const char* const kSeedChatTemplate =
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}### HUMAN:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### RESPONSE:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### RESPONSE:\n{% endif %}";

namespace {

constexpr uint64_t kAlignment = 32;  // general.alignment's default
enum ValueType : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
enum GgmlType : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ8_0 = 8, kGgmlBF16 = 30 };

uint64_t aligned(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

// GGUF's little-endian encoding of the header.
class Header {
 public:
  template <class T>
  void pod(T v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void string(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes_ += s;
  }
  void key(const std::string& k, ValueType t) {
    string(k);
    pod<uint32_t>(t);
    ++pairs_;
  }
  void u32(const std::string& k, uint32_t v) {
    key(k, kU32);
    pod(v);
  }
  void f32(const std::string& k, float v) {
    key(k, kF32);
    pod(v);
  }
  void boolean(const std::string& k, bool v) {
    key(k, kBool);
    pod<uint8_t>(v);
  }
  void text(const std::string& k, const std::string& v) {
    key(k, kString);
    string(v);
  }
  template <class T, class Put>
  void array(const std::string& k, ValueType element, const std::vector<T>& values, Put put) {
    key(k, kArray);
    pod<uint32_t>(element);
    pod<uint64_t>(values.size());
    for (const T& v : values) put(v);
  }
  std::string& bytes() { return bytes_; }
  const std::string& bytes() const { return bytes_; }
  uint64_t pairs() const { return pairs_; }

 private:
  std::string bytes_;
  uint64_t pairs_ = 0;
};

// llama.cpp's name for an HF Llama tensor; empty for one it does not take.
std::string gguf_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::pair<const char*, const char*> parts[] = {
      {"input_layernorm", "attn_norm"},     {"post_attention_layernorm", "ffn_norm"}, {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},       {"self_attn.v_proj", "attn_v"},          {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},        {"mlp.up_proj", "ffn_up"},               {"mlp.down_proj", "ffn_down"}};
  int layer = -1, used = 0;
  if (std::sscanf(hf.c_str(), "model.layers.%d.%n", &layer, &used) != 1 || used == 0) return "";
  const std::string rest = hf.substr(static_cast<size_t>(used));
  for (const auto& [from, to] : parts) {
    for (const char* kind : {".weight", ".bias"}) {  // Qwen2's q/k/v biases
      if (rest == std::string(from) + kind) return fmt::format("blk.{}.{}{}", layer, to, kind);
    }
  }
  return "";
}

// llama.cpp's architecture for a family: Qwen2 its own; Mistral as its converter
// writes it, a llama (the sliding window is not in llama.cpp's llama).
std::string gguf_architecture(const LlamaConfig& config) { return config.family->name == "qwen2" ? "qwen2" : "llama"; }

// llama.cpp's name for a byte-level vocabulary's pre-tokenizer (tokenizer.ggml.pre),
// by its Split pattern; empty for a pattern llama.cpp does not know.
std::string gguf_pre_tokenizer(const std::vector<std::string>& patterns) {
  static const std::pair<const char*, const char*> known[] = {
      {"llama3", "llama-bpe"}, {"qwen2", "qwen2"}, {"tekken", "tekken"}};  // herd's style, llama.cpp's name
  if (patterns.size() != 1) return "";
  for (const auto& [style, name] : known) {
    if (patterns[0] == byte_level_style(style).pattern) return name;
  }
  return "";
}

// convert_hf_to_gguf.py's permute: each head's rows from HF's rotate-half order to
// llama.cpp's interleaved pairs.
torch::Tensor permute(const torch::Tensor& w, int64_t heads) {
  return w.reshape({heads, 2, w.size(0) / heads / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

// ggml's quantize_row_q8_0_ref: per 32 values, d = max|x| / 127 (stored as float16)
// and round(x / d).
void q8_0(const float* x, int64_t n, char* out) {
  for (int64_t b = 0; b < n / 32; ++b, out += 34) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const c10::Half h(d);
    std::memcpy(out, &h, 2);
    for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<char>(static_cast<int8_t>(std::round(x[b * 32 + j] * id)));
  }
}

// --type: the general.file_type and the matrices' GGML type.
std::pair<uint32_t, GgmlType> file_type(const std::string& type) {
  if (type == "f16") return {1, kGgmlF16};     // LlamaFileType.MOSTLY_F16
  if (type == "bf16") return {32, kGgmlBF16};  // MOSTLY_BF16
  if (type == "q8_0") return {7, kGgmlQ8_0};   // MOSTLY_Q8_0
  throw std::invalid_argument(fmt::format("--type {}: f16, bf16 or q8_0", type));
}

// A tensor to write.
struct Item {
  std::string hf, name;
  std::vector<int64_t> shape;
  GgmlType type;
  uint64_t offset, size;  // in the data section
};

// Every tensor of the checkpoint with its GGUF name, type and place; `data` gets the
// data section's size.
std::vector<Item> plan_items(const GgufSpec& spec, const SafetensorsCheckpoint& ckpt, GgmlType matrix,
                             uint64_t& data) {
  std::vector<Item> items;
  data = 0;
  for (const auto& hf : ckpt.names()) {
    const TensorView& v = ckpt.tensor(hf);
    if (hf.find(".quant_state.") != std::string::npos || !is_float(v.dtype)) {
      throw std::invalid_argument(fmt::format("{}: '{}' is not a 16- or 32-bit float tensor; export a merged model "
                                              "(herd merge writes one)",
                                              spec.model.string(), hf));
    }
    const std::string name = gguf_name(hf);
    if (name.empty()) {
      if (hf.find("rotary_emb") != std::string::npos) continue;  // recomputed by llama.cpp
      throw std::invalid_argument(fmt::format("{}: '{}' has no place in llama.cpp's llama", spec.model.string(), hf));
    }
    GgmlType type = v.shape.size() == 1 ? kGgmlF32 : matrix;
    if (type == kGgmlQ8_0 && v.shape.back() % 32 != 0) type = kGgmlF16;  // rows must be whole blocks
    const int64_t n = v.numel();
    const uint64_t size = type == kGgmlF32   ? static_cast<uint64_t>(n) * 4
                          : type == kGgmlQ8_0 ? static_cast<uint64_t>(n) / 32 * 34
                                              : static_cast<uint64_t>(n) * 2;
    data = aligned(data);
    items.push_back({hf, name, v.shape, type, data, size});
    data += size;
  }
  return items;
}

// The model's hyperparameters, as llama.cpp's convert script writes them for a llama
// (or a qwen2).
void add_model_metadata(Header& h, const LlamaConfig& config, const std::string& name, uint32_t file_type) {
  const std::string arch = gguf_architecture(config);
  h.text("general.architecture", arch);
  h.text("general.name", name);
  h.u32("general.file_type", file_type);
  h.u32("general.quantization_version", 2);
  h.u32(arch + ".vocab_size", static_cast<uint32_t>(config.vocab_size));
  h.u32(arch + ".context_length", static_cast<uint32_t>(config.max_position_embeddings));
  h.u32(arch + ".embedding_length", static_cast<uint32_t>(config.hidden_size));
  h.u32(arch + ".block_count", static_cast<uint32_t>(config.num_hidden_layers));
  h.u32(arch + ".feed_forward_length", static_cast<uint32_t>(config.intermediate_size));
  h.u32(arch + ".rope.dimension_count", static_cast<uint32_t>(config.head_dim));
  h.u32(arch + ".attention.head_count", static_cast<uint32_t>(config.num_attention_heads));
  h.u32(arch + ".attention.head_count_kv", static_cast<uint32_t>(config.num_key_value_heads));
  h.f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(config.rms_norm_eps));
  h.f32(arch + ".rope.freq_base", static_cast<float>(config.rope_theta));
  if (config.head_dim * config.num_attention_heads != config.hidden_size) {
    h.u32(arch + ".attention.key_length", static_cast<uint32_t>(config.head_dim));
    h.u32(arch + ".attention.value_length", static_cast<uint32_t>(config.head_dim));
  }
  if (config.rope_scaling) {
    h.text(arch + ".rope.scaling.type", "linear");
    h.f32(arch + ".rope.scaling.factor", static_cast<float>(config.rope_scaling->factor));
  }
}

// A byte-level tokenizer.json as llama.cpp's "gpt2" vocabulary: the pieces as the file
// spells them, their types (normal; control for special added tokens, user-defined
// for the other added ones), the merges, the pre-tokenizer's name; and the seed's
// chat template.
void add_tokenizer_metadata(Header& h, const JsonTokenizer& tokenizer, const std::string& pre) {
  std::vector<int32_t> ids(static_cast<size_t>(tokenizer.vocab_size()));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  h.text("tokenizer.ggml.model", "gpt2");
  h.text("tokenizer.ggml.pre", pre);
  h.array("tokenizer.ggml.tokens", kString, ids, [&](int32_t id) { h.string(tokenizer.piece(id)); });
  h.array("tokenizer.ggml.token_type", kI32, ids, [&](int32_t id) {
    h.pod<int32_t>(tokenizer.special(id) ? 3 : tokenizer.added(id) ? 4 : 1);
  });
  h.array("tokenizer.ggml.merges", kString, tokenizer.merges(), [&](const std::string& m) { h.string(m); });
  if (tokenizer.bos_id() >= 0) h.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokenizer.bos_id()));
  if (tokenizer.eos_id() >= 0) h.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokenizer.eos_id()));
  h.boolean("tokenizer.ggml.add_bos_token", tokenizer.adds_bos());
  h.boolean("tokenizer.ggml.add_eos_token", false);
}

// The SentencePiece vocabulary and special tokens.
void add_tokenizer_metadata(Header& h, const SentencePieceTokenizer& tokenizer) {
  std::vector<int32_t> ids(static_cast<size_t>(tokenizer.vocab_size()));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  h.text("tokenizer.ggml.model", "llama");
  h.text("tokenizer.ggml.pre", "default");
  h.array("tokenizer.ggml.tokens", kString, ids, [&](int32_t id) { h.string(tokenizer.piece(id)); });
  h.array("tokenizer.ggml.scores", kF32, ids, [&](int32_t id) { h.pod<float>(tokenizer.score(id)); });
  h.array("tokenizer.ggml.token_type", kI32, ids,
          [&](int32_t id) { h.pod<int32_t>(static_cast<int32_t>(tokenizer.kind(id)) + 1); });
  h.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokenizer.bos_id()));
  h.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokenizer.eos_id()));
  h.u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(tokenizer.unk_id()));
  h.boolean("tokenizer.ggml.add_bos_token", true);
  h.boolean("tokenizer.ggml.add_eos_token", false);
}

// The model's vocabulary: SentencePiece's tokenizer.model where there is one (as
// llama.cpp's converter reads Llama-2), else a byte-level tokenizer.json.
void add_vocabulary(Header& h, const fs::path& model) {
  if (fs::exists(model / "tokenizer.model")) {
    add_tokenizer_metadata(h, SentencePieceTokenizer::load(model / "tokenizer.model"));
    return;
  }
  const auto tokenizer = JsonTokenizer::load(tokenizer_file(model));
  if (!tokenizer->byte_level()) {
    throw std::invalid_argument(
        fmt::format("{}: a {} tokenizer.json without a tokenizer.model is not exported (a "
                    "byte-level one or SentencePiece's is)",
                    model.string(), tokenizer->kind()));
  }
  const std::string pre = gguf_pre_tokenizer(tokenizer->split_patterns());
  if (pre.empty()) {
    throw std::invalid_argument(
        fmt::format("{}: tokenizer.json's pre-tokenizer pattern is none llama.cpp knows "
                    "(Llama-3's, Qwen2's or Tekken's)",
                    model.string()));
  }
  add_tokenizer_metadata(h, *tokenizer, pre);
}

// The file up to its data section: magic, version, counts, metadata, the tensor
// table, padded to the alignment.
std::string file_head(const Header& metadata, const std::vector<Item>& items) {
  Header infos;
  for (const Item& t : items) {
    infos.string(t.name);
    infos.pod<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) infos.pod<uint64_t>(static_cast<uint64_t>(*d));
    infos.pod<uint32_t>(t.type);
    infos.pod<uint64_t>(t.offset);
  }
  Header file;
  file.bytes() = "GGUF";
  file.pod<uint32_t>(3);
  file.pod<uint64_t>(items.size());
  file.pod<uint64_t>(metadata.pairs());
  file.bytes() += metadata.bytes() + infos.bytes();
  file.bytes().resize(aligned(file.bytes().size()), '\0');
  return file.bytes();
}

// One tensor's bytes in its GGML type (q and k rows permuted as llama.cpp's rope wants).
void encode_item(const Item& t, const TensorView& v, const LlamaConfig& config, std::vector<char>& buffer) {
  torch::NoGradGuard no_grad;
  auto w = view_tensor(v).to(torch::kFloat32);
  if (gguf_architecture(config) == "llama") {  // qwen2 keeps HF's rotate-half rows
    if (t.name.find(".attn_q.") != std::string::npos) w = permute(w, config.num_attention_heads);
    if (t.name.find(".attn_k.") != std::string::npos) w = permute(w, config.num_key_value_heads);
  }
  w = w.contiguous();
  buffer.resize(t.size);
  if (t.type == kGgmlQ8_0) {
    q8_0(w.data_ptr<float>(), w.numel(), buffer.data());
  } else {
    const auto c = t.type == kGgmlF32 ? w : w.to(t.type == kGgmlF16 ? torch::kHalf : torch::kBFloat16);
    std::memcpy(buffer.data(), c.data_ptr(), t.size);
  }
}

}  // namespace

GgufReport export_gguf(const GgufSpec& spec, const std::function<void(uint64_t, uint64_t)>& progress) {
  const LlamaConfig config = LlamaConfig::from_file(spec.model / "config.json");
  if (config.rope_scaling && config.rope_scaling->type != "linear") {
    throw std::invalid_argument(fmt::format("{}: rope_scaling '{}' is not exported yet (linear only)",
                                            spec.model.string(), config.rope_scaling->type));
  }
  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(spec.model);
  const auto [type_number, matrix] = file_type(spec.type);
  uint64_t data = 0;
  const std::vector<Item> items = plan_items(spec, ckpt, matrix, data);
  Header h;
  const std::string name =
      spec.name.empty() ? fs::absolute(spec.model).lexically_normal().filename().string() : spec.name;
  add_model_metadata(h, config, name, type_number);
  add_vocabulary(h, spec.model);
  h.text("tokenizer.chat_template", spec.chat_template.empty() ? kSeedChatTemplate : spec.chat_template);
  const std::string head = file_head(h, items);

  fs::create_directories(fs::absolute(spec.out).parent_path());
  const fs::path tmp = spec.out.string() + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(head.data(), static_cast<std::streamsize>(head.size()));
    std::vector<char> buffer;
    for (const Item& t : items) {
      const TensorView& v = ckpt.tensor(t.hf);
      const uint64_t at = static_cast<uint64_t>(out.tellp()) - head.size();
      if (at < t.offset) out.write(std::string(t.offset - at, '\0').data(), static_cast<std::streamsize>(t.offset - at));
      encode_item(t, v, config, buffer);
      out.write(buffer.data(), static_cast<std::streamsize>(t.size));
      release_pages(v);
      if (progress) progress(t.offset + t.size, data);
    }
    if (!out) throw std::runtime_error(fmt::format("{}: write failed", tmp.string()));
    out.close();
    fs::rename(tmp, spec.out);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
  GgufReport report;
  report.tensors = items.size();
  report.metadata = h.pairs();
  report.bytes = fs::file_size(spec.out);
  return report;
}

}  // namespace herd::convert
