#include "common/sentencepiece_tokenizer.h"

#include <fstream>
#include <queue>
#include <sstream>

#include <fmt/format.h>

#include "herd/proto/sentencepiece_model.pb.h"

namespace herd {

namespace fs = std::filesystem;

namespace {

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;  // an invalid lead byte stands alone (and falls back to its byte)
}

}  // namespace

SentencePieceTokenizer SentencePieceTokenizer::load(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot read", path.string()));
  herd::spm::ModelProto model;
  if (!model.ParseFromIstream(&in)) {
    throw TokenizerError(fmt::format("{}: not a SentencePiece model (tokenizer.model)", path.string()));
  }
  if (model.trainer_spec().model_type() != herd::spm::TrainerSpec::BPE) {
    throw TokenizerError(fmt::format("{}: model_type {} is not BPE (Llama's tokenizers are BPE)", path.string(),
                                     static_cast<int>(model.trainer_spec().model_type())));
  }
  const auto& norm = model.normalizer_spec();
  if (!norm.precompiled_charsmap().empty() || (norm.has_name() && norm.name() != "identity")) {
    throw TokenizerError(
        fmt::format("{}: normalizer '{}' is not supported (Llama's is 'identity')", path.string(), norm.name()));
  }
  if (norm.remove_extra_whitespaces() || !norm.escape_whitespaces() ||
      model.trainer_spec().treat_whitespace_as_suffix()) {
    throw TokenizerError(
        fmt::format("{}: whitespace handling differs from Llama's and is not supported", path.string()));
  }
  SentencePieceTokenizer t;
  t.add_dummy_prefix_ = norm.add_dummy_prefix();
  t.byte_fallback_ = model.trainer_spec().byte_fallback();
  t.unk_id_ = model.trainer_spec().unk_id();
  t.bos_id_ = model.trainer_spec().bos_id();
  t.eos_id_ = model.trainer_spec().eos_id();
  std::fill(std::begin(t.byte_ids_), std::end(t.byte_ids_), -1);
  for (int i = 0; i < model.pieces_size(); ++i) {
    const auto& p = model.pieces(i);
    Kind kind = static_cast<Kind>(static_cast<int>(p.type()) - 1);
    t.pieces_.push_back({p.piece(), p.score(), kind});
    auto& index =
        (kind == Kind::Normal || kind == Kind::UserDefined || kind == Kind::Unused) ? t.mergeable_ : t.reserved_;
    if (!index.emplace(p.piece(), i).second) {
      throw TokenizerError(fmt::format("{}: piece {} appears twice", path.string(), p.piece()));
    }
    if (kind == Kind::Byte) {
      unsigned value = 0;
      if (std::sscanf(p.piece().c_str(), "<0x%02X>", &value) == 1 && value < 256) t.byte_ids_[value] = i;
    }
  }
  for (int32_t id : {t.unk_id_, t.bos_id_, t.eos_id_}) {
    if (id < 0 || id >= t.vocab_size()) {
      throw TokenizerError(fmt::format("{}: special token id {} is outside the vocabulary", path.string(), id));
    }
    t.specials_.emplace_back(t.pieces_[static_cast<size_t>(id)].text, id);
  }
  if (t.byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      if (t.byte_ids_[b] < 0)
        throw TokenizerError(fmt::format("{}: byte piece <0x{:02X}> is missing", path.string(), b));
    }
  }
  return t;
}

std::vector<int32_t> SentencePieceTokenizer::encode_segment(std::string_view text, std::vector<Span>* spans) const {
  std::vector<int32_t> out;
  if (text.empty()) return out;
  std::string normalized = add_dummy_prefix_ ? kSpace : "";
  normalized.reserve(text.size() + 8);
  // source[i]: the byte of `text` that normalized byte i came from (the dummy prefix
  // comes from before byte 0: an empty span).
  std::vector<uint32_t> source(normalized.size(), 0);
  source.reserve(text.size() + 8);
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const std::string_view add = c == ' ' ? std::string_view(kSpace) : std::string_view(&text[i], 1);
    normalized += add;
    source.insert(source.end(), add.size(), static_cast<uint32_t>(i));
  }
  auto span_of = [&](size_t begin, size_t size) {
    const bool prefix_only = add_dummy_prefix_ && begin == 0 && size == kSpace.size();
    if (prefix_only) return Span{0, 0};
    const uint32_t first = source[add_dummy_prefix_ && begin == 0 ? kSpace.size() : begin];
    return Span{first, source[begin + size - 1] + 1};
  };
  // One symbol per UTF-8 character, linked as a list.
  struct Symbol {
    size_t begin, size;
    int prev, next;
  };
  std::vector<Symbol> symbols;
  for (size_t i = 0; i < normalized.size();) {
    size_t n = std::min(utf8_length(static_cast<unsigned char>(normalized[i])), normalized.size() - i);
    symbols.push_back({i, n, static_cast<int>(symbols.size()) - 1, static_cast<int>(symbols.size()) + 1});
    i += n;
  }
  symbols.back().next = -1;

  struct Pair {
    float score;
    int left, right;
    size_t size;
  };
  // Highest score first; on a tie the leftmost pair (SentencePiece's order).
  auto worse = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t size = symbols[static_cast<size_t>(left)].size + symbols[static_cast<size_t>(right)].size;
    auto it = mergeable_.find(std::string_view(normalized).substr(symbols[static_cast<size_t>(left)].begin, size));
    if (it == mergeable_.end()) return;
    agenda.push({pieces_[static_cast<size_t>(it->second)].score, left, right, size});
  };
  for (size_t i = 1; i < symbols.size(); ++i) consider(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[static_cast<size_t>(top.left)];
    Symbol& r = symbols[static_cast<size_t>(top.right)];
    if (l.size == 0 || r.size == 0 || l.size + r.size != top.size || l.next != top.right) continue;  // stale
    l.size += r.size;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = top.left;
    r.size = 0;
    consider(l.prev, top.left);
    consider(top.left, l.next);
  }
  for (int i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const Symbol& s = symbols[static_cast<size_t>(i)];
    const std::string_view piece = std::string_view(normalized).substr(s.begin, s.size);
    const size_t before = out.size();
    if (auto it = mergeable_.find(piece); it != mergeable_.end()) {
      out.push_back(it->second);
    } else if (auto r = reserved_.find(piece); r != reserved_.end()) {
      out.push_back(r->second);
    } else if (byte_fallback_) {
      for (unsigned char b : piece) out.push_back(byte_ids_[b]);
    } else {
      out.push_back(unk_id_);
    }
    if (spans) spans->insert(spans->end(), out.size() - before, span_of(s.begin, s.size));
  }
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, bool add_special,
                                                    std::vector<Span>* spans) const {
  std::vector<int32_t> out;
  if (spans) spans->clear();
  if (add_special) {
    out.push_back(bos_id_);
    if (spans) spans->push_back({0, 0});
  }
  size_t start = 0;
  while (start <= text.size()) {
    // The earliest special-token string at or after `start` (the longest on a tie).
    size_t found = std::string_view::npos, length = 0;
    int32_t id = -1;
    for (const auto& [s, sid] : specials_) {
      size_t at = text.find(s, start);
      if (at != std::string_view::npos && (at < found || (at == found && s.size() > length))) {
        found = at;
        length = s.size();
        id = sid;
      }
    }
    const size_t end = found == std::string_view::npos ? text.size() : found;
    const size_t first_span = spans ? spans->size() : 0;
    auto segment = encode_segment(text.substr(start, end - start), spans);
    if (spans) {
      for (size_t i = first_span; i < spans->size(); ++i) {
        (*spans)[i].begin += static_cast<uint32_t>(start);
        (*spans)[i].end += static_cast<uint32_t>(start);
      }
    }
    out.insert(out.end(), segment.begin(), segment.end());
    if (found == std::string_view::npos) break;
    out.push_back(id);
    if (spans) spans->push_back({static_cast<uint32_t>(found), static_cast<uint32_t>(found + length)});
    start = found + length;
  }
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    const Piece& p = pieces_.at(static_cast<size_t>(id));
    if (p.kind == Kind::Control) continue;
    if (p.kind == Kind::Byte) {
      unsigned value = 0;
      if (std::sscanf(p.text.c_str(), "<0x%02X>", &value) == 1) out += static_cast<char>(value);
      continue;
    }
    out += p.text;
  }
  std::string text;
  for (size_t i = 0; i < out.size();) {
    if (out.compare(i, kSpace.size(), kSpace) == 0) {
      text += ' ';
      i += kSpace.size();
    } else {
      text += out[i++];
    }
  }
  if (add_dummy_prefix_ && !text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

void pad_tokenizer_model(const fs::path& path, int32_t vocab) {
  herd::spm::ModelProto model;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in || !model.ParseFromIstream(&in)) {
      throw TokenizerError(fmt::format("{}: not a SentencePiece model (tokenizer.model)", path.string()));
    }
  }
  for (int32_t n = 0; model.pieces_size() < vocab; ++n) {
    auto* piece = model.add_pieces();
    piece->set_piece(fmt::format("<unused{}>", n));
    piece->set_score(0);
    piece->set_type(herd::spm::ModelProto::SentencePiece::UNUSED);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!model.SerializeToOstream(&out)) throw TokenizerError(fmt::format("{}: write failed", path.string()));
}

}  // namespace herd
