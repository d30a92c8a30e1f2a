// A Llama tokenizer: reads SentencePiece's tokenizer.model and encodes as
// SentencePiece's BPE model does (dummy prefix, whitespace as U+2581, merges by
// score with the leftmost pair first on a tie, byte fallback), and splits text at
// the special-token strings as transformers' slow LlamaTokenizer did in 2023
// (legacy): each segment is encoded on its own, so the segment after "</s>" gets
// its own leading "▁".
#pragma once

#include <unordered_map>

#include "common/tokenizer.h"

namespace herd {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static SentencePieceTokenizer load(const std::filesystem::path& tokenizer_model);

  // BOS (when add_special), then the text with special-token strings mapped to their ids.
  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              std::vector<Span>* spans = nullptr) const override;
  // One segment, as SentencePieceProcessor::Encode (no special-token handling);
  // spans are relative to the segment.
  std::vector<int32_t> encode_segment(std::string_view text, std::vector<Span>* spans = nullptr) const;
  std::string decode(const std::vector<int32_t>& ids) const override;

  int32_t unk_id() const { return unk_id_; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const override { return pieces_.at(static_cast<size_t>(id)).text; }
  std::string kind() const override { return "sentencepiece"; }
  bool special(int32_t id) const override { return id >= 0 && id < vocab_size() && kind(id) == Kind::Control; }
  // SentencePiece's piece types, in its order (NORMAL = 1 ... BYTE = 6 as int + 1).
  enum class Kind { Normal, Unknown, Control, UserDefined, Unused, Byte };
  float score(int32_t id) const { return pieces_.at(static_cast<size_t>(id)).score; }
  Kind kind(int32_t id) const { return pieces_.at(static_cast<size_t>(id)).kind; }

 private:
  struct Piece {
    std::string text;
    float score;
    Kind kind;
  };
  std::vector<Piece> pieces_;
  // Lookups by string_view, without building a string per candidate merge.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using PieceIndex = std::unordered_map<std::string, int32_t, Hash, std::equal_to<>>;
  PieceIndex mergeable_;                                   // NORMAL, USER_DEFINED, UNUSED pieces
  PieceIndex reserved_;                                    // the other kinds
  std::vector<std::pair<std::string, int32_t>> specials_;  // split points: <s>, </s>, <unk>
  int32_t byte_ids_[256];
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;
  int32_t unk_id_ = 0;
};

// Appends UNUSED pieces (<unused0>, <unused1>, ...) to a SentencePiece model until
// it holds `vocab` pieces: a vocabulary of a model's size whose encoder emits only
// the pieces it was trained with.
void pad_tokenizer_model(const std::filesystem::path& tokenizer_model, int32_t vocab);

}  // namespace herd
