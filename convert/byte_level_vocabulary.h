// A byte-level BPE tokenizer.json of a given size, as the model families that use one
// lay theirs out (Llama-3.x, Qwen2.x, Mistral-Nemo): for `herd tools make-model` and
// `make-tiny-model --family`, which make random models without the download.
//
// The 256 byte pieces, then merges learned from a text (the most frequent pair of
// adjacent pieces within the pre-tokenizer's words, the first such pair in id order on
// a tie, until no pair occurs twice or the vocabulary is full), then the family's
// special tokens, then reserved special tokens up to the size: the encoder emits only
// learned pieces, as a padded SentencePiece model does (common/sentencepiece_tokenizer.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "worker/model/llama_config.h"

namespace herd::convert {

struct ByteLevelStyle {
  std::string name;     // the published tokenizer it follows: "llama3", "qwen2", "tekken"
  std::string pattern;  // the pre-tokenizer's Split pattern
  bool nfc = false;     // Qwen2's NFC normalizer
  bool ignore_merges = false;
  std::vector<std::string> specials;  // after the learned pieces, in order
  std::string bos, eos;               // tokenizer_config.json's (bos empty: none)
};

// "llama3", "qwen2" or "tekken"; std::invalid_argument for another name.
ByteLevelStyle byte_level_style(const std::string& name);

// The byte-level style of a published shape's tokenizer: Llama-3's (a Llama of 128,256
// ids), Qwen2's, Mistral-Nemo's Tekken (a Mistral of 131,072 ids); none for
// SentencePiece's (Llama-2, Mistral-7B).
std::optional<ByteLevelStyle> published_byte_level_style(const model::LlamaConfig& shape);

// Writes out/tokenizer.json and out/tokenizer_config.json (with model_max_length);
// returns the BOS id (-1: none) and the EOS id.
std::pair<int64_t, int64_t> write_byte_level_tokenizer(const std::filesystem::path& out, const std::string& text,
                                                       int64_t vocab, const ByteLevelStyle& style,
                                                       int64_t model_max_length);

}  // namespace herd::convert
