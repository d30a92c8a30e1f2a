// herd export gguf: a model directory (safetensors, 16- or 32-bit; a merged model)
// as a GGUF version 3 file for llama.cpp, written tensor by tensor like merge:
// llama.cpp's tensor names and metadata keys as its convert_hf_to_gguf.py writes them
// (Llama and Mistral as its llama, q and k rows permuted for its rotary layout; Qwen2
// as its qwen2, with the q/k/v biases), the tokenizer as tokenizer.ggml.* (SentencePiece's
// tokenizer.model as "llama"; a byte-level tokenizer.json as "gpt2" with its merges and
// the pre-tokenizer's name), and a chat template of the seed's prompt style. 1-D tensors (the norms) stay float32; the
// others are float16, bfloat16 or Q8_0 (blocks of 32: a float16 scale max|x| / 127 and 32 rounded int8).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace herd::convert {

struct GgufSpec {
  std::filesystem::path model, out;
  std::string type = "f16";  // f16, bf16, q8_0
  std::string name;          // general.name; empty: the model directory's name
  std::string chat_template;  // tokenizer.chat_template; empty: the seed's prompt style (kSeedChatTemplate)
};

struct GgufReport {
  uint64_t tensors = 0, bytes = 0;  // the file's size
  uint64_t metadata = 0;            // key/value pairs
};

// The seed's prompt style as a chat template (tokenizer.chat_template).
extern const char* const kSeedChatTemplate;

GgufReport export_gguf(const GgufSpec& spec, const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace herd::convert
