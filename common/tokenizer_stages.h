// The stages of a tokenizer.json pipeline (common/tokenizer_json.h), each read from
// its own JSON object and usable alone. `where` names the object in error messages
// ("tokenizer.json: pre_tokenizer.pretokenizers[0]").
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/tokenizer.h"

namespace herd::tokenizer_json {

using Span = Tokenizer::Span;

// A text and, for each of its bytes, the input bytes it came from (an inserted byte:
// an empty span where it stands).
struct Aligned {
  std::string text;
  std::vector<Span> from;

  static Aligned of(std::string_view text, uint32_t offset);
  void append(std::string_view s, Span source);
  void append(const Aligned& other, size_t begin, size_t end);
  Aligned slice(size_t begin, size_t end) const;
  // The input bytes of text bytes [begin, end).
  Span source(size_t begin, size_t end) const;
};

// GPT-2's byte-level map: each byte as a printable character, and back.
const std::array<std::string, 256>& byte_chars();
// The bytes of a string of byte-level characters; false when a character is not one.
bool byte_level_bytes(std::string_view chars, std::string& out);

class Normalizer {
 public:
  static Normalizer from_json(const nlohmann::json& j, const std::string& where);
  Aligned apply(Aligned in) const;

 private:
  struct Step {
    enum Kind { Unicode, Prepend, Replace } kind;
    int unicode_options = 0;  // utf8proc's
    std::string a, b;         // Prepend: a; Replace: a -> b
  };
  static void read(const nlohmann::json& j, const std::string& where, std::vector<Step>& steps);
  std::vector<Step> steps_;
};

class Regex;

class PreTokenizer {
 public:
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);
  // The words of a segment.
  std::vector<Aligned> apply(Aligned segment) const;
  bool byte_level() const { return byte_level_; }
  // The Split steps' patterns, in order (what names a pre-tokenizer to llama.cpp).
  std::vector<std::string> split_patterns() const;

  struct Step {
    enum Kind { Split, ByteLevel, Metaspace } kind;
    std::shared_ptr<const Regex> regex;  // Split; ByteLevel with use_regex (GPT-2's)
    std::string pattern;                 // Split: as the file spells it
    bool remove_matches = false;         // Split's behavior Removed (else Isolated)
    bool add_prefix = false;             // ByteLevel: add_prefix_space
    std::string replacement;             // Metaspace
    enum Prepend { Always, First, Never } prepend = Always;
    bool split = false;  // Metaspace: a word per replacement character
  };

 private:
  static void read(const nlohmann::json& j, const std::string& where, std::vector<Step>& steps, bool& byte_level);
  std::vector<Step> steps_;
  bool byte_level_ = false;
};

// BPE over the bytes of a word: byte-level vocabularies are keyed by bytes (the
// characters mapped back), so a word's first symbols are its bytes; otherwise its
// UTF-8 characters, with byte fallback or unk for characters not in the vocabulary.
class Bpe {
 public:
  // `pieces` is filled with each id's string as the file spells it; an id must be
  // below `max_ids` (the file's vocabulary and added tokens together).
  static Bpe from_json(const nlohmann::json& model, const std::string& where, bool byte_level, size_t max_ids,
                       std::vector<std::string>& pieces);
  void encode(const Aligned& word, std::vector<int32_t>& ids, std::vector<Span>* spans) const;
  bool byte_fallback() const { return byte_fallback_; }
  // The merges by rank, as the ids of their two parts.
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merge_list_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> vocab_;  // model-space strings
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id)
  std::vector<std::pair<int32_t, int32_t>> merge_list_;
  std::array<int32_t, 256> byte_ids_{};  // byte-level: each byte's id; fallback: <0xXX>
  bool byte_level_ = false, byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  int32_t unk_id_ = -1;

  void read_merges(const nlohmann::json& merges, const nlohmann::json& vocab, const std::string& where);
  const Merge* merge(int32_t left, int32_t right) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& ids, std::vector<uint32_t>& ends) const;
};

class Decoder {
 public:
  static Decoder from_json(const nlohmann::json& j, const std::string& where);
  std::string apply(std::vector<std::string> tokens) const;

 private:
  struct Step {
    enum Kind { ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind;
    std::string a, b;  // Replace: a -> b; Strip: the content; Metaspace: the replacement
    int start = 0, stop = 0;
    bool prepend = true;  // Metaspace: prepend_scheme is not "never"
  };
  static void read(const nlohmann::json& j, const std::string& where, std::vector<Step>& steps);
  std::vector<Step> steps_;
};

// The ids a TemplateProcessing post-processor puts before and after a single sequence.
struct Template {
  std::vector<int32_t> before, after;
  static Template from_json(const nlohmann::json& j, const std::string& where);
};

// An integer of the file (an id, a count); TokenizerError naming `where` for anything else.
int64_t integer(const nlohmann::json& v, const std::string& where);

// `bytes` as UTF-8, each invalid sequence replaced by U+FFFD (Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

}  // namespace herd::tokenizer_json
