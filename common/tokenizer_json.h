// tokenizer.json, the tokenizers library's format, read as that library runs it: a
// pipeline of stages, each read from its own JSON object.
//
//   added tokens   matched first, leftmost-longest, never split (special or not); those
//                  with `normalized: false` on the input, the others on the normalized text
//   normalizer     NFC, NFD, NFKC, NFKD (utf8proc), Prepend, Replace, Sequence
//   pre_tokenizer  Split (a regex, run by PCRE2 with Unicode properties), ByteLevel,
//                  Metaspace, Sequence
//   model          BPE: merges by rank, leftmost first on a tie; byte-level vocabularies
//                  (GPT-2's byte-to-character map), byte fallback, unk, ignore_merges
//   post_processor TemplateProcessing (the special tokens around a single sequence),
//                  ByteLevel, Sequence
//   decoder        ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
//
// A stage or option outside these is refused at load, naming its key. BOS and EOS are
// tokenizer_config.json's bos_token / eos_token (beside the file) as transformers reads
// them; without that file, BOS is the template's first special token.
#pragma once

#include <memory>

#include "common/tokenizer.h"

namespace herd {

class JsonTokenizer final : public Tokenizer {
 public:
  static std::unique_ptr<JsonTokenizer> load(const std::filesystem::path& tokenizer_json);
  ~JsonTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              std::vector<Span>* spans = nullptr) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override;
  const std::string& piece(int32_t id) const override;
  std::string kind() const override;

  // What a GGUF file's "gpt2" vocabulary holds (convert/gguf_export.cc).
  bool byte_level() const;
  std::vector<std::string> merges() const;  // "left right" as the file spells the pieces, by rank
  bool added(int32_t id) const;             // an added token
  bool special(int32_t id) const override;  // an added token with special: true
  std::vector<std::string> split_patterns() const;
  bool adds_bos() const;  // the post-processor puts a special token first

  struct Stages;

 private:
  explicit JsonTokenizer(std::unique_ptr<const Stages> stages);
  std::unique_ptr<const Stages> s_;
};

}  // namespace herd
