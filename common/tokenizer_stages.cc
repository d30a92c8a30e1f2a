#include "common/tokenizer_stages.h"

#include <algorithm>
#include <cstdlib>
#include <queue>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>
#include <utf8proc.h>
#include <nlohmann/json.hpp>

#include "common/text.h"

namespace herd::tokenizer_json {

using nlohmann::json;

namespace {

[[noreturn]] void refuse(const std::string& where, const std::string& what) {
  throw TokenizerError(fmt::format("{}: {}", where, what));
}

const json& need(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) refuse(where, fmt::format("'{}' is missing", key));
  return j[key];
}

std::string type_of(const json& j, const std::string& where) {
  const json& t = need(j, "type", where);
  if (!t.is_string()) refuse(where + ".type", "expected a string");
  return t.get<std::string>();
}

// A Split or Replace pattern: {"String": s} or {"Regex": r}.
std::pair<std::string, bool> pattern_of(const json& j, const std::string& where) {
  const json& p = need(j, "pattern", where);
  if (p.contains("String") && p["String"].is_string()) return {p["String"].get<std::string>(), false};
  if (p.contains("Regex") && p["Regex"].is_string()) return {p["Regex"].get<std::string>(), true};
  refuse(where + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
}

const std::string kSpace = "\xE2\x96\x81";  // U+2581

}  // namespace

int64_t integer(const json& v, const std::string& where) {
  if (!v.is_number_integer()) refuse(where, fmt::format("expected an integer, got {}", v.dump()));
  return v.get<int64_t>();
}

// --- Aligned -------------------------------------------------------------------

Aligned Aligned::of(std::string_view text, uint32_t offset) {
  Aligned a;
  a.text = text;
  a.from.resize(text.size());
  for (uint32_t i = 0; i < text.size(); ++i) a.from[i] = {offset + i, offset + i + 1};
  return a;
}

void Aligned::append(std::string_view s, Span source) {
  text += s;
  from.insert(from.end(), s.size(), source);
}

void Aligned::append(const Aligned& other, size_t begin, size_t end) {
  text.append(other.text, begin, end - begin);
  from.insert(from.end(), other.from.begin() + static_cast<ptrdiff_t>(begin),
              other.from.begin() + static_cast<ptrdiff_t>(end));
}

Aligned Aligned::slice(size_t begin, size_t end) const {
  Aligned a;
  a.append(*this, begin, end);
  return a;
}

Span Aligned::source(size_t begin, size_t end) const {
  Span s{UINT32_MAX, 0};
  for (size_t i = begin; i < end; ++i) {
    if (from[i].begin == from[i].end) continue;
    s.begin = std::min(s.begin, from[i].begin);
    s.end = std::max(s.end, from[i].end);
  }
  if (s.begin == UINT32_MAX) {
    const uint32_t at = begin < from.size() ? from[begin].begin : (from.empty() ? 0 : from.back().end);
    return {at, at};
  }
  return s;
}

// --- the byte-level map -----------------------------------------------------------

const std::array<std::string, 256>& byte_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const int cp = printable(b) ? b : next++;
      utf8proc_uint8_t buf[4];
      const auto n = utf8proc_encode_char(cp, buf);
      t[static_cast<size_t>(b)] = std::string(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
    }
    return t;
  }();
  return table;
}

bool byte_level_bytes(std::string_view chars, std::string& out) {
  static const std::unordered_map<std::string, unsigned char> back = [] {
    std::unordered_map<std::string, unsigned char> m;
    for (int b = 0; b < 256; ++b) m.emplace(byte_chars()[static_cast<size_t>(b)], static_cast<unsigned char>(b));
    return m;
  }();
  out.clear();
  for (size_t i = 0; i < chars.size();) {
    const size_t n = sequence_length(static_cast<unsigned char>(chars[i]));
    if (n == 0 || i + n > chars.size()) return false;
    auto it = back.find(std::string(chars.substr(i, n)));
    if (it == back.end()) return false;
    out += static_cast<char>(it->second);
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    const size_t n = sequence_length(lead);
    size_t k = n == 0 ? 0 : 1;  // the bytes of a valid sequence's prefix
    for (; k > 0 && k < n && i + k < bytes.size(); ++k) {
      const auto c = static_cast<unsigned char>(bytes[i + k]);
      const unsigned lo = k == 1 && lead == 0xE0 ? 0xA0 : k == 1 && lead == 0xF0 ? 0x90 : 0x80;
      const unsigned hi = k == 1 && lead == 0xED ? 0x9F : k == 1 && lead == 0xF4 ? 0x8F : 0xBF;
      if (c < lo || c > hi) break;
    }
    if (n > 0 && k == n) {
      out.append(bytes.substr(i, n));
    } else {
      out += "\xEF\xBF\xBD";  // one U+FFFD for the longest prefix of a valid sequence
    }
    i += std::max<size_t>(k, 1);
  }
  return out;
}

// --- normalizer -------------------------------------------------------------------

namespace {

std::string unicode_normalized(std::string_view s, int options) {
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                              static_cast<utf8proc_ssize_t>(s.size()), &out, static_cast<utf8proc_option_t>(options));
  if (n < 0) throw TokenizerError(fmt::format("Unicode normalization: {}", utf8proc_errmsg(n)));
  std::string r(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return r;
}

// Normalizes `in` keeping each output byte's source: the text is cut into units that
// normalize independently (a starter and its combining marks, joined with the next
// unit where the two compose), and a unit's output bytes come from the whole unit.
Aligned unicode_aligned(const Aligned& in, int options) {
  const std::string whole = unicode_normalized(in.text, options);
  if (whole == in.text) return in;
  const auto at = code_point_offsets(in.text);
  std::vector<size_t> starts;  // unit starts: code points of combining class 0
  for (size_t k = 0; k + 1 < at.size(); ++k) {
    utf8proc_int32_t cp = 0;
    utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(in.text.data() + at[k]),
                     static_cast<utf8proc_ssize_t>(at[k + 1] - at[k]), &cp);
    if (k == 0 || utf8proc_get_property(cp)->combining_class == 0) starts.push_back(at[k]);
  }
  starts.push_back(in.text.size());
  Aligned out;
  auto norm = [&](size_t b, size_t e) {
    return unicode_normalized(std::string_view(in.text).substr(b, e - b), options);
  };
  size_t pending = starts[0];
  for (size_t u = 1; u + 1 < starts.size(); ++u) {
    const size_t b = starts[u], e = starts[u + 1];
    if (norm(pending, e) == norm(pending, b) + norm(b, e)) {
      out.append(norm(pending, b), in.source(pending, b));
      pending = b;
    }
  }
  out.append(norm(pending, in.text.size()), in.source(pending, in.text.size()));
  return out;
}

Aligned replaced(const Aligned& in, std::string_view a, std::string_view b) {
  if (a.empty() || in.text.find(a) == std::string::npos) return in;
  Aligned out;
  size_t i = 0;
  for (size_t hit = in.text.find(a); hit != std::string::npos; hit = in.text.find(a, i)) {
    out.append(in, i, hit);
    out.append(b, in.source(hit, hit + a.size()));
    i = hit + a.size();
  }
  out.append(in, i, in.text.size());
  return out;
}

Aligned prepended(const Aligned& in, std::string_view s) {
  Aligned out;
  const uint32_t at = in.from.empty() ? 0 : in.from[0].begin;
  out.append(s, {at, at});
  out.append(in, 0, in.text.size());
  return out;
}

}  // namespace

void Normalizer::read(const json& j, const std::string& where, std::vector<Step>& steps) {
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = need(j, "normalizers", where);
    for (size_t i = 0; i < list.size(); ++i) read(list[i], fmt::format("{}.normalizers[{}]", where, i), steps);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    int options = UTF8PROC_STABLE | (type[type.size() - 1] == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (type.size() == 4) options |= UTF8PROC_COMPAT;
    steps.push_back({Step::Unicode, options, "", ""});
  } else if (type == "Prepend") {
    steps.push_back({Step::Prepend, 0, need(j, "prepend", where).get<std::string>(), ""});
  } else if (type == "Replace") {
    auto [pattern, regex] = pattern_of(j, where);
    if (regex) refuse(where + ".pattern", "a Regex pattern in a Replace normalizer is not supported (String is)");
    steps.push_back({Step::Replace, 0, pattern, need(j, "content", where).get<std::string>()});
  } else {
    refuse(where + ".type", fmt::format("normalizer '{}' is not supported (herd reads NFC, NFD, NFKC, NFKD, "
                                        "Prepend, Replace, Sequence)",
                                        type));
  }
}

Normalizer Normalizer::from_json(const json& j, const std::string& where) {
  Normalizer n;
  if (!j.is_null()) read(j, where, n.steps_);
  return n;
}

Aligned Normalizer::apply(Aligned in) const {
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::Unicode:
        in = unicode_aligned(in, s.unicode_options);
        break;
      case Step::Prepend:
        if (!in.text.empty()) in = prepended(in, s.a);
        break;
      case Step::Replace:
        in = replaced(in, s.a, s.b);
        break;
    }
  }
  return in;
}

// --- pre-tokenizer ----------------------------------------------------------------

namespace {

// Unicode's White_Space property, as items of a character class: what \s means to
// Oniguruma, the engine the tokenizers library runs its patterns with. (PCRE2's \s
// also takes U+180E, which left White_Space in Unicode 6.3.)
const char* const kWhiteSpace =
    R"(\t\n\x{0b}\f\r\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

// `pattern` with \s and \S spelled as White_Space classes; throws on \S inside a class.
std::string with_white_space(const std::string& pattern, const std::string& where) {
  std::string out;
  bool in_class = false;
  size_t class_start = 0;  // where the class's items begin (after "[" or "[^")
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : fmt::format("[{}]", kWhiteSpace);
      } else if (e == 'S') {
        if (in_class) refuse(where, "\\S inside a character class is not supported");
        out += fmt::format("[^{}]", kWhiteSpace);
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      class_start = i + 1 + (i + 1 < pattern.size() && pattern[i + 1] == '^');
    } else if (in_class && c == ']' && i > class_start) {
      in_class = false;  // a "]" first in a class is one of its items
    }
    out += c;
  }
  return out;
}

}  // namespace

// A compiled PCRE2 pattern (UTF, Unicode properties, JIT where the platform has it).
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
    const std::string translated = literal ? pattern : with_white_space(pattern, where);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &error, &offset,
                          nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      refuse(where, fmt::format("pattern {} at offset {}: {}", c_quoted(pattern), offset,
                                reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is not there
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Each match of the pattern in valid UTF-8 `text`, as [begin, end).
  std::vector<std::pair<size_t, size_t>> matches(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), at, PCRE2_NO_UTF_CHECK,
                                 data, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data);
      if (v[1] == v[0]) {  // an empty match: step over one character
        at = v[0] + std::max<size_t>(1, sequence_length(static_cast<unsigned char>(text[v[0]])));
        continue;
      }
      out.emplace_back(v[0], v[1]);
      at = v[1];
    }
    pcre2_match_data_free(data);
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
};

namespace {

// GPT-2's pattern: what ByteLevel splits with when use_regex is true.
const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::vector<Aligned> split(const Aligned& word, const Regex& regex, bool remove_matches) {
  std::vector<Aligned> out;
  size_t at = 0;
  for (auto [b, e] : regex.matches(word.text)) {
    if (b > at) out.push_back(word.slice(at, b));
    if (!remove_matches) out.push_back(word.slice(b, e));
    at = e;
  }
  if (at < word.text.size()) out.push_back(word.slice(at, word.text.size()));
  return out;
}

// Metaspace's split: a word starts at each replacement character (MergedWithNext).
std::vector<Aligned> split_before(const Aligned& word, std::string_view mark) {
  std::vector<Aligned> out;
  size_t at = 0;
  for (size_t hit = word.text.find(mark, 1); hit != std::string::npos; hit = word.text.find(mark, hit + 1)) {
    out.push_back(word.slice(at, hit));
    at = hit;
  }
  if (at < word.text.size()) out.push_back(word.slice(at, word.text.size()));
  return out;
}

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

}  // namespace

void PreTokenizer::read(const json& j, const std::string& where, std::vector<Step>& steps, bool& byte_level) {
  const std::string type = type_of(j, where);
  Step s{};
  if (type == "Sequence") {
    const json& list = need(j, "pretokenizers", where);
    for (size_t i = 0; i < list.size(); ++i) {
      read(list[i], fmt::format("{}.pretokenizers[{}]", where, i), steps, byte_level);
    }
    return;
  } else if (type == "Split") {
    auto [pattern, is_regex] = pattern_of(j, where);
    const std::string behavior = need(j, "behavior", where).get<std::string>();
    if (behavior != "Isolated" && behavior != "Removed") {
      refuse(where + ".behavior", fmt::format("'{}' is not supported (Isolated and Removed are)", behavior));
    }
    if (j.value("invert", false)) refuse(where + ".invert", "true is not supported");
    s = {Step::Split, std::make_shared<Regex>(pattern, !is_regex, where + ".pattern"), pattern, behavior == "Removed"};
  } else if (type == "ByteLevel") {
    s.kind = Step::ByteLevel;
    s.add_prefix = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, false, where);
    byte_level = true;
  } else if (type == "Metaspace") {
    s.kind = Step::Metaspace;
    s.replacement = j.value("replacement", kSpace);
    if (s.replacement.empty()) refuse(where + ".replacement", "empty");
    const std::string scheme = j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never");
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      refuse(where + ".prepend_scheme", fmt::format("'{}': always, first or never", scheme));
    }
    s.prepend = scheme == "always" ? Step::Always : scheme == "first" ? Step::First : Step::Never;
    s.split = j.value("split", true);
  } else {
    refuse(where + ".type", fmt::format("pre-tokenizer '{}' is not supported (herd reads Split, ByteLevel, "
                                        "Metaspace, Sequence)",
                                        type));
  }
  steps.push_back(std::move(s));
}

std::vector<std::string> PreTokenizer::split_patterns() const {
  std::vector<std::string> out;
  for (const Step& s : steps_) {
    if (s.kind == Step::Split) out.push_back(s.pattern);
  }
  return out;
}

PreTokenizer PreTokenizer::from_json(const json& j, const std::string& where) {
  PreTokenizer p;
  if (!j.is_null()) read(j, where, p.steps_, p.byte_level_);
  return p;
}

std::vector<Aligned> PreTokenizer::apply(Aligned segment) const {
  std::vector<Aligned> words;
  words.push_back(std::move(segment));
  for (const Step& s : steps_) {
    std::vector<Aligned> next;
    for (Aligned& w : words) {
      if (s.kind == Step::Split) {
        for (auto& part : split(w, *s.regex, s.remove_matches)) next.push_back(std::move(part));
        continue;
      }
      if (s.kind == Step::ByteLevel) {
        if (s.add_prefix && !starts_with(w.text, " ")) w = prepended(w, " ");
        if (!s.regex) {
          next.push_back(std::move(w));
          continue;
        }
        for (auto& part : split(w, *s.regex, false)) next.push_back(std::move(part));
        continue;
      }
      w = replaced(w, " ", s.replacement);
      const bool at_start = !w.from.empty() && w.from[0].begin == 0;  // "first": the word starts the input
      if (!starts_with(w.text, s.replacement) &&
          (s.prepend == Step::Always || (s.prepend == Step::First && at_start))) {
        w = prepended(w, s.replacement);
      }
      if (!s.split) {
        next.push_back(std::move(w));
        continue;
      }
      for (auto& part : split_before(w, s.replacement)) next.push_back(std::move(part));
    }
    words = std::move(next);
  }
  return words;
}

// --- the BPE model ----------------------------------------------------------------

Bpe Bpe::from_json(const json& m, const std::string& where, bool byte_level, size_t max_ids,
                   std::vector<std::string>& pieces) {
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") {
    refuse(where + ".type", fmt::format("model '{}' is not supported (herd reads BPE)", type));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() && !m[key].get<std::string>().empty()) {
      refuse(fmt::format("{}.{}", where, key), "is not supported (null is)");
    }
  }
  if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0) {
    refuse(where + ".dropout", "BPE dropout is not supported at encode time (null is)");
  }
  Bpe b;
  b.byte_level_ = byte_level;
  b.byte_fallback_ = m.value("byte_fallback", false);
  b.fuse_unk_ = m.value("fuse_unk", false);
  b.ignore_merges_ = m.value("ignore_merges", false);
  const json& vocab = need(m, "vocab", where);
  if (!vocab.is_object()) refuse(where + ".vocab", "expected an object of token: id");
  std::string key;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int64_t id = integer(it.value(), where + ".vocab");
    if (id < 0 || static_cast<uint64_t>(id) >= max_ids) {
      refuse(where + ".vocab", fmt::format("id {} of {} is not below {} (the vocabulary and the added tokens)", id,
                                           c_quoted(it.key()), max_ids));
    }
    if (pieces.size() <= static_cast<size_t>(id)) pieces.resize(static_cast<size_t>(id) + 1);
    pieces[static_cast<size_t>(id)] = it.key();
    if (!byte_level) {
      key = it.key();
    } else if (!byte_level_bytes(it.key(), key)) {
      continue;  // a character outside the byte-level map: BPE never forms it
    }
    b.vocab_.emplace(key, static_cast<int32_t>(id));
  }
  b.byte_ids_.fill(-1);
  for (int v = 0; v < 256; ++v) {
    const std::string k = byte_level ? std::string(1, static_cast<char>(v)) : fmt::format("<0x{:02X}>", v);
    if (auto it = b.vocab_.find(k); it != b.vocab_.end()) b.byte_ids_[static_cast<size_t>(v)] = it->second;
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = vocab.find(m["unk_token"].get<std::string>());
    if (it == vocab.end()) refuse(where + ".unk_token", "is not in the vocabulary");
    b.unk_id_ = it.value().get<int32_t>();
  }
  b.read_merges(need(m, "merges", where), vocab, where);
  return b;
}

void Bpe::read_merges(const json& merges, const json& vocab, const std::string& where) {
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& pair = merges[rank];
    std::string l, r;
    if (pair.is_array() && pair.size() == 2) {
      l = pair[0].get<std::string>();
      r = pair[1].get<std::string>();
    } else if (const auto s = pair.is_string() ? pair.get<std::string>() : ""; s.find(' ') != std::string::npos) {
      l = s.substr(0, s.find(' '));
      r = s.substr(s.find(' ') + 1);
    } else {
      refuse(fmt::format("{}.merges[{}]", where, rank), "expected [left, right] or \"left right\"");
    }
    auto li = vocab.find(l), ri = vocab.find(r), ni = vocab.find(l + r);
    if (li == vocab.end() || ri == vocab.end() || ni == vocab.end()) {
      refuse(fmt::format("{}.merges[{}]", where, rank),
             fmt::format("{} + {}: a part or the merged token is not in the vocabulary", c_quoted(l), c_quoted(r)));
    }
    const uint64_t k = (static_cast<uint64_t>(li.value().get<uint32_t>()) << 32) | ri.value().get<uint32_t>();
    merges_.emplace(k, Merge{static_cast<int32_t>(rank), ni.value().get<int32_t>()});
    merge_list_.emplace_back(li.value().get<int32_t>(), ri.value().get<int32_t>());
  }
}

const Bpe::Merge* Bpe::merge(int32_t left, int32_t right) const {
  auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right));
  return it == merges_.end() ? nullptr : &it->second;
}

// A word's first symbols and where each ends in it: bytes (byte-level) or characters.
void Bpe::initial_symbols(std::string_view word, std::vector<int32_t>& ids, std::vector<uint32_t>& ends) const {
  for (size_t i = 0; i < word.size();) {
    const size_t n = byte_level_ ? 1 : std::max<size_t>(1, sequence_length(static_cast<unsigned char>(word[i])));
    const auto end = static_cast<uint32_t>(std::min(word.size(), i + n));
    auto it = vocab_.find(word.substr(i, end - i));
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      ends.push_back(end);
    } else if (byte_fallback_ && !byte_level_ &&
               std::all_of(word.begin() + static_cast<ptrdiff_t>(i), word.begin() + end,
                           [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
      for (size_t k = i; k < end; ++k) {
        ids.push_back(byte_ids_[static_cast<unsigned char>(word[k])]);
        ends.push_back(static_cast<uint32_t>(k + 1));
      }
    } else if (unk_id_ >= 0) {
      if (fuse_unk_ && !ids.empty() && ids.back() == unk_id_) {
        ends.back() = end;
      } else {
        ids.push_back(unk_id_);
        ends.push_back(end);
      }
    }  // no unk token (or a byte without its <0xXX> piece): the character is dropped, as in tokenizers
    i = end;
  }
}

void Bpe::encode(const Aligned& word, std::vector<int32_t>& out, std::vector<Span>* spans) const {
  if (word.text.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word.text); it != vocab_.end()) {
      out.push_back(it->second);
      if (spans) spans->push_back(word.source(0, word.text.size()));
      return;
    }
  }
  struct Symbol {
    int32_t id;
    uint32_t begin, end;
    int prev, next;
  };
  std::vector<int32_t> ids;
  std::vector<uint32_t> ends;
  initial_symbols(word.text, ids, ends);
  std::vector<Symbol> symbols(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    symbols[i] = {ids[i], i ? ends[i - 1] : 0u, ends[i], static_cast<int>(i) - 1, static_cast<int>(i) + 1};
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  struct Candidate {
    int32_t rank, id;
    int pos;
  };
  // Lowest rank first; on a tie the leftmost (the tokenizers library's order).
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.pos > b.pos);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> agenda(later);
  auto consider = [&](int left) {
    if (left < 0 || symbols[static_cast<size_t>(left)].next < 0) return;
    const int right = symbols[static_cast<size_t>(left)].next;
    if (const Merge* m = merge(symbols[static_cast<size_t>(left)].id, symbols[static_cast<size_t>(right)].id)) {
      agenda.push({m->rank, m->id, left});
    }
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!agenda.empty()) {
    const Candidate top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[static_cast<size_t>(top.pos)];
    if (l.end == l.begin || l.next < 0) continue;  // merged away, or the last symbol
    Symbol& r = symbols[static_cast<size_t>(l.next)];
    const Merge* m = merge(l.id, r.id);
    if (!m || m->id != top.id) continue;  // stale
    l.id = top.id;
    l.end = r.end;
    r.begin = r.end;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = top.pos;
    consider(l.prev);
    consider(top.pos);
  }
  for (int i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    out.push_back(symbols[static_cast<size_t>(i)].id);
    if (spans)
      spans->push_back(word.source(symbols[static_cast<size_t>(i)].begin, symbols[static_cast<size_t>(i)].end));
  }
}

// --- decoder ----------------------------------------------------------------------

void Decoder::read(const json& j, const std::string& where, std::vector<Step>& steps) {
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = need(j, "decoders", where);
    for (size_t i = 0; i < list.size(); ++i) read(list[i], fmt::format("{}.decoders[{}]", where, i), steps);
  } else if (type == "ByteLevel") {
    steps.push_back({Step::ByteLevel});
  } else if (type == "Metaspace") {
    const std::string scheme = j.value("prepend_scheme", j.value("add_prefix_space", true) ? "always" : "never");
    steps.push_back({Step::Metaspace, j.value("replacement", kSpace), "", 0, 0, scheme != "never"});
  } else if (type == "Replace") {
    auto [pattern, regex] = pattern_of(j, where);
    if (regex) refuse(where + ".pattern", "a Regex pattern in a Replace decoder is not supported (String is)");
    steps.push_back({Step::Replace, pattern, need(j, "content", where).get<std::string>()});
  } else if (type == "ByteFallback" || type == "Fuse") {
    steps.push_back({type == "Fuse" ? Step::Fuse : Step::ByteFallback});
  } else if (type == "Strip") {
    if (need(j, "content", where).get<std::string>().empty()) refuse(where + ".content", "empty");
    auto count = [&](const char* key) {  // at most the length of any token
      return static_cast<int>(std::clamp<int64_t>(integer(j.value(key, json(0)), where + "." + key), 0, 1 << 20));
    };
    steps.push_back({Step::Strip, need(j, "content", where).get<std::string>(), "", count("start"), count("stop")});
  } else {
    refuse(where + ".type", fmt::format("decoder '{}' is not supported (herd reads ByteLevel, Metaspace, Replace, "
                                        "ByteFallback, Fuse, Strip, Sequence)",
                                        type));
  }
}

Decoder Decoder::from_json(const json& j, const std::string& where) {
  Decoder d;
  if (!j.is_null()) read(j, where, d.steps_);
  return d;
}

namespace {

// <0xAB> -> 0xAB; -1 when `t` is not a byte token.
int byte_token(const std::string& t) {
  unsigned v = 0;
  if (t.size() == 6 && std::sscanf(t.c_str(), "<0x%2X>", &v) == 1) return static_cast<int>(v);
  return -1;
}

void byte_fallback(std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;
  size_t count = 0;
  auto flush = [&] {
    if (count == 0) return;
    if (invalid_utf8(bytes) == std::string::npos) {
      out.push_back(bytes);
    } else {
      for (size_t i = 0; i < count; ++i) out.emplace_back("\xEF\xBF\xBD");
    }
    bytes.clear();
    count = 0;
  };
  for (auto& t : tokens) {
    if (const int b = byte_token(t); b >= 0) {
      bytes += static_cast<char>(b);
      ++count;
      continue;
    }
    flush();
    out.push_back(std::move(t));
  }
  flush();
  tokens = std::move(out);
}

void strip(std::string& t, const std::string& c, int start, int stop) {
  for (int i = 0; i < start && starts_with(t, c); ++i) t.erase(0, c.size());
  for (int i = 0; i < stop && t.size() >= c.size() && t.compare(t.size() - c.size(), c.size(), c) == 0; ++i) {
    t.erase(t.size() - c.size());
  }
}

std::string replace_all(std::string t, const std::string& a, const std::string& b) {
  for (size_t at = t.find(a); !a.empty() && at != std::string::npos; at = t.find(a, at + b.size())) {
    t.replace(at, a.size(), b);
  }
  return t;
}

}  // namespace

std::string Decoder::apply(std::vector<std::string> tokens) const {
  for (const Step& s : steps_) {
    switch (s.kind) {
      case Step::ByteLevel: {
        std::string bytes, part;
        for (const auto& t : tokens) bytes += byte_level_bytes(t, part) ? part : t;
        tokens = {utf8_lossy(bytes)};
        break;
      }
      case Step::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = replace_all(tokens[i], s.a, " ");
          if (i == 0 && s.prepend && starts_with(tokens[i], " ")) tokens[i].erase(0, 1);
        }
        break;
      case Step::Replace:
        for (auto& t : tokens) t = replace_all(t, s.a, s.b);
        break;
      case Step::ByteFallback:
        byte_fallback(tokens);
        break;
      case Step::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case Step::Strip:
        for (auto& t : tokens) strip(t, s.a, s.start, s.stop);
        break;
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

// --- post-processor ---------------------------------------------------------------

Template Template::from_json(const json& j, const std::string& where) {
  Template t;
  if (j.is_null()) return t;
  const std::string type = type_of(j, where);
  if (type == "ByteLevel") return t;  // offsets only
  if (type == "Sequence") {
    const json& list = need(j, "processors", where);
    for (size_t i = 0; i < list.size(); ++i) {
      Template inner = from_json(list[i], fmt::format("{}.processors[{}]", where, i));
      if (!inner.before.empty() || !inner.after.empty()) t = inner;
    }
    return t;
  }
  if (type != "TemplateProcessing") {
    refuse(where + ".type", fmt::format("post-processor '{}' is not supported (herd reads TemplateProcessing, "
                                        "ByteLevel, Sequence)",
                                        type));
  }
  const json& specials = need(j, "special_tokens", where);
  bool seen_sequence = false;
  for (const json& item : need(j, "single", where)) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    const std::string name = item.at("SpecialToken").at("id").get<std::string>();
    if (!specials.contains(name)) refuse(where + ".special_tokens", fmt::format("{} is missing", c_quoted(name)));
    for (const json& id : specials[name].at("ids")) {
      const int64_t v = integer(id, where + ".special_tokens");
      (seen_sequence ? t.after : t.before).push_back(v < 0 || v > INT32_MAX ? -1 : static_cast<int32_t>(v));
    }
  }
  return t;
}

}  // namespace herd::tokenizer_json
