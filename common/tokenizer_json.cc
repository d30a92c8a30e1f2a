#include "common/tokenizer_json.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <optional>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/text.h"
#include "common/tokenizer_stages.h"

namespace herd {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace tokenizer_json;

namespace {

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, lstrip, rstrip, normalized;
};

// Added tokens found leftmost-longest: at each byte that starts one, the distinct
// lengths from the longest down, looked up by their text (a vocabulary padded with
// reserved tokens has 100,000s of them, of a few lengths).
class AddedTokens {
 public:
  void add(const AddedToken& t) {
    first_[static_cast<unsigned char>(t.content[0])] = true;
    if (std::find(lengths_.begin(), lengths_.end(), t.content.size()) == lengths_.end()) {
      lengths_.push_back(t.content.size());
      std::sort(lengths_.rbegin(), lengths_.rend());
    }
    by_text_.emplace(t.content, t);
  }
  bool empty() const { return by_text_.empty(); }

  struct Match {
    size_t begin, end;  // with the whitespace lstrip / rstrip take
    int32_t id;
  };
  // The first match in text[from, size); nullopt when there is none.
  std::optional<Match> find(std::string_view text, size_t from) const {
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_[static_cast<unsigned char>(text[i])]) continue;
      for (size_t length : lengths_) {
        if (i + length > text.size()) continue;
        auto it = by_text_.find(text.substr(i, length));
        if (it == by_text_.end()) continue;
        const AddedToken& t = it->second;
        Match m{i, i + length, t.id};
        while (t.lstrip && m.begin > from && is_space(text[m.begin - 1])) --m.begin;
        while (t.rstrip && m.end < text.size() && is_space(text[m.end])) ++m.end;
        return m;
      }
    }
    return std::nullopt;
  }

 private:
  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, AddedToken, Hash, std::equal_to<>> by_text_;
  std::vector<size_t> lengths_;  // longest first
  std::array<bool, 256> first_{};
};

json read_json(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot read", file.string()));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {  // a syntax error, or a number too large for a double
    throw TokenizerError(fmt::format("{}: not JSON: {}", file.string(), e.what()));
  }
}

// tokenizer_config.json's bos_token / eos_token: a string or {"content": ...}.
std::string token_name(const json& config, const char* key) {
  if (!config.contains(key)) return "";
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

struct JsonTokenizer::Stages {
  AddedTokens raw_added, normalized_added;
  std::vector<bool> special;  // per id: an added token with special: true
  std::vector<bool> added;    // per id: an added token
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  std::vector<std::string> pieces;
  Bpe model;
  Template post;
  Decoder decoder;

  void encode_segment(std::string_view text, uint32_t offset, std::vector<int32_t>& ids,
                      std::vector<Span>* spans) const;
  void encode_normalized(const Aligned& segment, std::vector<int32_t>& ids, std::vector<Span>* spans) const;
};

JsonTokenizer::JsonTokenizer(std::unique_ptr<const Stages> stages) : s_(std::move(stages)) {}
JsonTokenizer::~JsonTokenizer() = default;

namespace {

void read_added_tokens(const json& list, const std::string& where, size_t max_ids, JsonTokenizer::Stages& s) {
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string at = fmt::format("{}[{}]", where, i);
    const int64_t id = integer(t.at("id"), at + ".id");
    if (id < 0 || static_cast<uint64_t>(id) >= max_ids) {
      throw TokenizerError(
          fmt::format("{}.id: {} is not below {} (the vocabulary and the added tokens)", at, id, max_ids));
    }
    AddedToken a{t.at("content").get<std::string>(), static_cast<int32_t>(id),
                 t.value("special", false),          t.value("lstrip", false),
                 t.value("rstrip", false),           t.value("normalized", !t.value("special", false))};
    if (a.content.empty()) throw TokenizerError(at + ".content: empty");
    if (t.value("single_word", false)) throw TokenizerError(at + ".single_word: true is not supported");
    if (s.pieces.size() <= static_cast<size_t>(a.id)) s.pieces.resize(static_cast<size_t>(a.id) + 1);
    s.pieces[static_cast<size_t>(a.id)] = a.content;
    if (s.special.size() <= static_cast<size_t>(a.id)) s.special.resize(static_cast<size_t>(a.id) + 1);
    s.special[static_cast<size_t>(a.id)] = a.special;
    if (s.added.size() <= static_cast<size_t>(a.id)) s.added.resize(static_cast<size_t>(a.id) + 1);
    s.added[static_cast<size_t>(a.id)] = true;
    (a.normalized ? s.normalized_added : s.raw_added).add(a);
  }
}

int32_t id_of(const JsonTokenizer::Stages& s, const std::string& token, const std::string& where) {
  for (size_t id = 0; id < s.pieces.size(); ++id) {
    if (s.pieces[id] == token) return static_cast<int32_t>(id);
  }
  throw TokenizerError(fmt::format("{}: {} is not a token of the vocabulary", where, c_quoted(token)));
}

}  // namespace

std::unique_ptr<JsonTokenizer> JsonTokenizer::load(const fs::path& file) {
  const json j = read_json(file);
  const std::string name = file.string();
  if (!j.is_object() || !j.contains("model")) throw TokenizerError(name + ": not a tokenizer.json (no 'model')");
  auto s = std::make_unique<Stages>();
  try {
    s->normalizer = Normalizer::from_json(j.value("normalizer", json()), name + ": normalizer");
    s->pre_tokenizer = PreTokenizer::from_json(j.value("pre_tokenizer", json()), name + ": pre_tokenizer");
    const json added = j.value("added_tokens", json::array());
    const size_t max_ids = j["model"].value("vocab", json::object()).size() + added.size();
    s->model = Bpe::from_json(j["model"], name + ": model", s->pre_tokenizer.byte_level(), max_ids, s->pieces);
    read_added_tokens(added, name + ": added_tokens", max_ids, *s);
    s->post = Template::from_json(j.value("post_processor", json()), name + ": post_processor");
    s->decoder = Decoder::from_json(j.value("decoder", json()), name + ": decoder");
  } catch (const json::exception& e) {
    throw TokenizerError(fmt::format("{}: {}", name, e.what()));
  }
  for (const auto* ids : {&s->post.before, &s->post.after}) {
    for (int32_t id : *ids) {
      if (id < 0 || static_cast<size_t>(id) >= s->pieces.size()) {
        throw TokenizerError(fmt::format("{}: post_processor: special token id {} is not in the vocabulary", name, id));
      }
    }
  }
  s->special.resize(s->pieces.size());
  s->added.resize(s->pieces.size());
  auto t = std::unique_ptr<JsonTokenizer>(new JsonTokenizer(std::move(s)));
  const fs::path config_file = file.parent_path() / "tokenizer_config.json";
  const json config = fs::exists(config_file) ? read_json(config_file) : json::object();
  const std::string where = config_file.string();
  if (const auto bos = token_name(config, "bos_token"); !bos.empty()) {
    t->bos_id_ = id_of(*t->s_, bos, where + ": bos_token");
  } else if (!fs::exists(config_file) && !t->s_->post.before.empty()) {
    t->bos_id_ = t->s_->post.before.front();
  }
  if (const auto eos = token_name(config, "eos_token"); !eos.empty())
    t->eos_id_ = id_of(*t->s_, eos, where + ": eos_token");
  return t;
}

void JsonTokenizer::Stages::encode_normalized(const Aligned& segment, std::vector<int32_t>& ids,
                                              std::vector<Span>* spans) const {
  for (const Aligned& word : pre_tokenizer.apply(segment)) model.encode(word, ids, spans);
}

// A segment between added tokens that match the input as it is: normalized, then
// split again at the added tokens that match normalized text.
void JsonTokenizer::Stages::encode_segment(std::string_view text, uint32_t offset, std::vector<int32_t>& ids,
                                           std::vector<Span>* spans) const {
  const Aligned segment = normalizer.apply(Aligned::of(text, offset));
  size_t at = 0;
  while (at < segment.text.size()) {
    const auto m = normalized_added.empty() ? std::nullopt : normalized_added.find(segment.text, at);
    const size_t end = m ? m->begin : segment.text.size();
    if (end > at) encode_normalized(segment.slice(at, end), ids, spans);
    if (!m) break;
    ids.push_back(m->id);
    if (spans) spans->push_back(segment.source(m->begin, m->end));
    at = m->end;
  }
}

std::vector<int32_t> JsonTokenizer::encode(std::string_view text, bool add_special, std::vector<Span>* spans) const {
  if (const size_t bad = invalid_utf8(text); bad != std::string::npos) {
    throw TokenizerError(fmt::format("text is not valid UTF-8 at byte {}", bad));
  }
  std::vector<int32_t> ids;
  if (spans) spans->clear();
  if (add_special) {
    ids = s_->post.before;
    if (spans) spans->assign(ids.size(), Span{0, 0});
  }
  size_t at = 0;
  while (at < text.size()) {
    const auto m = s_->raw_added.find(text, at);
    const size_t end = m ? m->begin : text.size();
    if (end > at) s_->encode_segment(text.substr(at, end - at), static_cast<uint32_t>(at), ids, spans);
    if (!m) break;
    ids.push_back(m->id);
    if (spans) spans->push_back({static_cast<uint32_t>(m->begin), static_cast<uint32_t>(m->end)});
    at = m->end;
  }
  if (add_special) {
    ids.insert(ids.end(), s_->post.after.begin(), s_->post.after.end());
    const auto n = static_cast<uint32_t>(text.size());
    if (spans) spans->resize(ids.size(), Span{n, n});
  }
  return ids;
}

std::string JsonTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {  // an id past the vocabulary (a model's padding) decodes to nothing, as in tokenizers
    if (id < 0 || id >= vocab_size() || s_->special[static_cast<size_t>(id)]) continue;
    tokens.push_back(piece(id));
  }
  return s_->decoder.apply(std::move(tokens));
}

int32_t JsonTokenizer::vocab_size() const { return static_cast<int32_t>(s_->pieces.size()); }

const std::string& JsonTokenizer::piece(int32_t id) const { return s_->pieces.at(static_cast<size_t>(id)); }

bool JsonTokenizer::byte_level() const { return s_->pre_tokenizer.byte_level(); }

std::vector<std::string> JsonTokenizer::merges() const {
  std::vector<std::string> out;
  out.reserve(s_->model.merges().size());
  for (auto [l, r] : s_->model.merges()) out.push_back(piece(l) + " " + piece(r));
  return out;
}

// An id past the vocabulary (a model's embedding may be larger) is neither.
bool JsonTokenizer::added(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < s_->added.size() && s_->added[static_cast<size_t>(id)];
}
bool JsonTokenizer::special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < s_->special.size() && s_->special[static_cast<size_t>(id)];
}
std::vector<std::string> JsonTokenizer::split_patterns() const { return s_->pre_tokenizer.split_patterns(); }
bool JsonTokenizer::adds_bos() const { return !s_->post.before.empty(); }

std::string JsonTokenizer::kind() const {
  if (s_->pre_tokenizer.byte_level()) return "byte-level BPE";
  return s_->model.byte_fallback() ? "BPE with byte fallback" : "BPE";
}

}  // namespace herd
