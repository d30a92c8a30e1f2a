// herd merge: a LoRA adapter folded into its base model's weights, streamed tensor by
// tensor, so that a 70B model merges on an ordinary machine. Each base tensor is read
// from the mapped safetensors (a 4-bit one in the bitsandbytes layout dequantized),
// W + (B @ A) * scaling is computed in float32 for the adapter's modules (with DoRA
// each row then rescaled to m / its norm, as peft merges DoRA), cast to the
// output dtype and written into the current shard; its pages are then released. The
// process holds about one tensor at a time.
//
// The output is laid out as transformers' save_pretrained lays it out: sharded
// safetensors (model-0000i-of-0000n.safetensors + model.safetensors.index.json, or
// one model.safetensors), config.json (torch_dtype set, a quantization_config
// dropped), generation_config.json when the base has one, and the tokenizer files.
// Everything is checked (the adapter against the base, free disk space) before a
// byte is written, and written under a temporary name renamed at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace herd::convert {

struct MergeSpec {
  std::filesystem::path base, adapter, out;
  std::string dtype;                     // "float16", "bfloat16", "float32"; empty: the base's
  uint64_t shard_bytes = 5'000'000'000;  // transformers' default max_shard_size, "5GB"
};

struct MergeReport {
  uint64_t tensors = 0;  // written
  uint64_t merged = 0;   // of them, with the adapter's delta
  uint64_t bytes = 0;    // tensor bytes written
  uint64_t largest = 0;  // the largest tensor's bytes in the output
  std::string dtype;
  bool from_4bit = false;  // the base was NF4: the merged weights carry its quantization error
  std::vector<std::string> files;
};

// progress(bytes written, bytes to write) after each tensor.
MergeReport merge_adapter(const MergeSpec& spec, const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace herd::convert
