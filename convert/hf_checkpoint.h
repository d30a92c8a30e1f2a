// Writing Hugging Face model directories: a random tiny Llama for tests and the
// demo, and pre-quantized NF4 checkpoints in the layout transformers saves for
// bitsandbytes 4-bit models.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "worker/model/llama_config.h"

namespace herd::convert {

struct TinyModelSpec {
  int64_t layers = 2;
  int64_t hidden = 64;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t intermediate = 128;
  int64_t vocab = 512;  // SentencePiece vocabulary trained on the text
  int64_t max_positions = 2048;
  bool tie_embeddings = false;
  uint64_t seed = 0;
  double init_std = 0.02;      // transformers' initializer_range
  std::filesystem::path text;  // tokenizer training text; empty: herd's built-in text
  // llama (SentencePiece, as Llama-2), llama3 (a Llama with Llama-3's byte-level
  // tokenizer.json), qwen2 (q/k/v biases, Qwen2's byte-level tokenizer), mistral
  // (Mistral-Nemo's Tekken byte-level tokenizer; sliding_window when > 0)
  std::string family = "llama";
  int64_t sliding_window = 0;
};

// config.json, model.safetensors (float32, normal(0, init_std) like transformers'
// init, norms near 1), and a tokenizer of exactly `vocab` ids: tokenizer.model (trained
// by `spm_train`, the herd-spm-train helper) with Llama-2's special tokens (<unk>=0,
// <s>=1, </s>=2), tokenizer_config.json and special_tokens_map.json; or for the
// byte-level families a tokenizer.json (convert/byte_level_vocabulary.h).
void make_tiny_model(const TinyModelSpec& spec, const std::filesystem::path& out,
                     const std::filesystem::path& spm_train);

struct MakeModelSpec {
  model::LlamaConfig shape;           // a published shape (train::known_shape), its depth maybe cut
  bool nf4 = false;            // the linear weights pre-quantized, as write_quantized_checkpoint lays them out
  bool double_quant = true;
  uint64_t seed = 0;
  double init_std = 0.02;      // the linear weights' and embeddings' standard deviation
  std::filesystem::path text;  // tokenizer training text; empty: herd's built-in text
  size_t shard_bytes = 5'000'000'000;  // transformers' save_pretrained default
};

// A random model of a published shape, sharded as save_pretrained writes it, with a
// tokenizer of the shape's vocabulary: SentencePiece BPE trained on the text, the
// rest of the vocabulary unused pieces (Llama-2); or a byte-level tokenizer.json in
// the published one's layout, the rest reserved special tokens (Llama-3.x, Qwen2.5,
// Mistral-Nemo; convert/byte_level_vocabulary.h). Weights are bfloat16: normal(0, init_std),
// norms near 1. With nf4 the seven linear weights of every layer are NF4 codes and
// absmax drawn independently from what quantizing normal(0, init_std) values gives
// (each code's share, each block's absmax; measured once on 2^22 values): the
// dequantized weight has the standard deviation, code use and absmax spread of a
// quantized normal weight, without one being made. Every tensor is generated as
// its shard is written: no float copy of a weight, no spill file, so a 70B model
// (36 GB in NF4) needs its own size on disk and about one tensor of memory.
void make_model(const MakeModelSpec& spec, const std::filesystem::path& out,
                const std::filesystem::path& spm_train);

struct QuantizeSpec {
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";  // recorded in quantization_config
};

// Reads `model_dir` one tensor at a time, writes the seven linear weights of every
// layer as NF4 (packed `weight` uint8 [ceil(n/2), 1], `weight.absmax`,
// `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map`,
// `weight.quant_state.bitsandbytes__nf4`) and the rest unchanged, plus config.json
// with `quantization_config` and the tokenizer files.
void write_quantized_checkpoint(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                                const QuantizeSpec& spec);

}  // namespace herd::convert
