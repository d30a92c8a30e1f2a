// The tokenizer interface, and which of a model folder's files it is read from.
//
// Two kinds, as the libraries the seed's trainer used:
//  - SentencePiece's tokenizer.model (common/sentencepiece_tokenizer.h): transformers'
//    slow LlamaTokenizer of 2023, what `model_family: llama` loaded;
//  - the tokenizers library's tokenizer.json (common/tokenizer_json.h): byte-level BPE
//    (Llama-3.x, Qwen2.x, Mistral-Nemo) and BPE with byte fallback (the tokenizer.json
//    of Llama-2 and Mistral-7B), what AutoTokenizer loads when a folder has one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace herd {

class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Reads `file`: tokenizer.json (any name ending in .json) or a SentencePiece model.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& file);

  // Where a token came from in the text: bytes [begin, end). Tokens the tokenizer adds
  // (BOS, a prefix "▁" or space) are empty spans at the position they stand before.
  struct Span {
    uint32_t begin, end;
  };

  // The tokenizer's special tokens around the text when `add_special` (BOS for Llama;
  // nothing for Qwen2), and the text with added-token strings (special or not) mapped
  // to their ids, never split; with `spans`, each token's source bytes.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      std::vector<Span>* spans = nullptr) const = 0;
  // The text of `ids`, special tokens left out.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual const std::string& piece(int32_t id) const = 0;
  // One of the tokenizer's special tokens (an added token with special: true; a
  // SentencePiece control piece): what ends a chat template's turn.
  virtual bool special(int32_t id) const = 0;
  // What `herd config check` prints: "sentencepiece", "byte-level BPE", "BPE with byte fallback".
  virtual std::string kind() const = 0;

  int32_t bos_id() const { return bos_id_; }  // -1: the tokenizer has none
  int32_t eos_id() const { return eos_id_; }  // -1: the tokenizer has none
  // The end-of-sequence token's text (what the seed's format writes after a response);
  // throws TokenizerError when the tokenizer names none.
  const std::string& eos_piece() const;

 protected:
  int32_t bos_id_ = -1, eos_id_ = -1;
};

// The file a model's tokenizer is read from. A file is itself. A folder: tokenizer.json
// when it has one (AutoTokenizer's choice: the fast tokenizer), else tokenizer.model;
// with `sentencepiece_first` (`model_family: llama`: the seed's LlamaTokenizer)
// tokenizer.model when it has one. Throws TokenizerError when the folder has neither.
std::filesystem::path tokenizer_file(const std::filesystem::path& model, bool sentencepiece_first = false);

}  // namespace herd
