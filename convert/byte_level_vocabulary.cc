#include "convert/byte_level_vocabulary.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/tokenizer_stages.h"

namespace herd::convert {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kTekkenPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json pre_tokenizer_json(const std::string& pattern) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

// The text's words (as the pre-tokenizer splits it) and how often each occurs.
std::map<std::string, int64_t> word_counts(const std::string& text, const std::string& pattern) {
  const auto pre = tokenizer_json::PreTokenizer::from_json(pre_tokenizer_json(pattern), "pre_tokenizer");
  std::map<std::string, int64_t> counts;
  for (const auto& w : pre.apply(tokenizer_json::Aligned::of(text, 0))) ++counts[w.text];
  return counts;
}

// BPE training over the words' bytes: up to `limit` merges, each the most frequent
// adjacent pair (the first in id order on a tie) while one occurs at least twice.
std::vector<std::pair<int32_t, int32_t>> learn_merges(const std::map<std::string, int64_t>& counts, int64_t limit,
                                                      std::vector<std::string>& pieces) {
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, n] : counts) words.push_back({std::vector<int32_t>(w.begin(), w.end()), n});
  for (auto& [symbols, n] : words) {
    for (auto& s : symbols) s = static_cast<unsigned char>(s);
  }
  std::set<std::string> seen(pieces.begin(), pieces.end());
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::set<std::pair<int32_t, int32_t>> refused;  // pairs whose text is a piece already
  while (static_cast<int64_t>(merges.size()) < limit) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;
    for (const auto& [symbols, n] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) pairs[{symbols[i], symbols[i + 1]}] += n;
    }
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 1;
    for (const auto& [pair, n] : pairs) {
      if (n > best_count && !refused.count(pair)) std::tie(best, best_count) = std::pair{pair, n};
    }
    if (best.first < 0) break;
    const std::string text = pieces[static_cast<size_t>(best.first)] + pieces[static_cast<size_t>(best.second)];
    if (!seen.insert(text).second) {
      refused.insert(best);
      continue;
    }
    const auto id = static_cast<int32_t>(pieces.size());
    pieces.push_back(text);
    merges.push_back(best);
    for (auto& [symbols, n] : words) {
      std::vector<int32_t> next;
      for (size_t i = 0; i < symbols.size(); ++i) {
        const bool hit = i + 1 < symbols.size() && symbols[i] == best.first && symbols[i + 1] == best.second;
        next.push_back(hit ? id : symbols[i]);
        i += hit;
      }
      symbols = std::move(next);
    }
  }
  return merges;
}

json added_token(int64_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

}  // namespace

ByteLevelStyle byte_level_style(const std::string& name) {
  if (name == "qwen2") {
    return {"qwen2", kQwen2Pattern, true, false, {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, "", "<|endoftext|>"};
  }
  if (name == "tekken") return {"tekken", kTekkenPattern, false, false, {"<unk>", "<s>", "</s>"}, "<s>", "</s>"};
  if (name == "llama3") {
    return {
        "llama3",         kLlama3Pattern, false, true, {"<|begin_of_text|>", "<|end_of_text|>"}, "<|begin_of_text|>",
        "<|end_of_text|>"};
  }
  throw std::invalid_argument(fmt::format("byte-level tokenizer style '{}': llama3, qwen2 or tekken", name));
}

std::optional<ByteLevelStyle> published_byte_level_style(const model::LlamaConfig& shape) {
  const std::string_view family = shape.family->name;
  if (family == "qwen2") return byte_level_style("qwen2");
  if (family == "mistral" && shape.vocab_size == 131072) return byte_level_style("tekken");
  if (family == "llama" && shape.vocab_size == 128256) return byte_level_style("llama3");
  return std::nullopt;
}

std::pair<int64_t, int64_t> write_byte_level_tokenizer(const fs::path& out, const std::string& text, int64_t vocab,
                                                       const ByteLevelStyle& style, int64_t model_max_length) {
  const auto& chars = tokenizer_json::byte_chars();
  std::vector<std::string> pieces(chars.begin(), chars.end());  // in the file's spelling
  const auto specials = static_cast<int64_t>(style.specials.size());
  if (vocab < 256 + specials) {
    throw std::invalid_argument(fmt::format("a byte-level vocabulary of {} ids: at least {}", vocab, 256 + specials));
  }
  const auto merges = learn_merges(word_counts(text, style.pattern), vocab - 256 - specials, pieces);
  json model_vocab = json::object(), merge_list = json::array(), added = json::array();
  for (size_t id = 0; id < pieces.size(); ++id) model_vocab[pieces[id]] = id;
  for (auto [l, r] : merges) merge_list.push_back({pieces[static_cast<size_t>(l)], pieces[static_cast<size_t>(r)]});
  auto id = static_cast<int64_t>(pieces.size());
  auto special_id = [&](const std::string& s) {
    return static_cast<int64_t>(pieces.size()) +
           (std::find(style.specials.begin(), style.specials.end(), s) - style.specials.begin());
  };
  for (const auto& s : style.specials) added.push_back(added_token(id++, s));
  for (int64_t n = 0; id < vocab; ++n)
    added.push_back(added_token(id++, fmt::format("<|reserved_special_token_{}|>", n)));
  json post = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  if (!style.bos.empty()) {  // BOS first, as Llama-3's TemplateProcessing
    const json bos_item = {{"SpecialToken", {{"id", style.bos}, {"type_id", 0}}}};
    const json single = json::array({bos_item, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}});
    json special = json::object();
    special[style.bos] = {{"id", style.bos}, {"ids", {special_id(style.bos)}}, {"tokens", {style.bos}}};
    const json templ = {
        {"type", "TemplateProcessing"}, {"single", single}, {"pair", single}, {"special_tokens", special}};
    post = {{"type", "Sequence"}, {"processors", json::array({post, templ})}};
  }
  const json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", style.nfc ? json{{"type", "NFC"}} : json(nullptr)},
      {"pre_tokenizer", pre_tokenizer_json(style.pattern)},
      {"post_processor", post},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", style.ignore_merges},
        {"vocab", model_vocab},
        {"merges", merge_list}}}};
  std::ofstream(out / "tokenizer.json") << tokenizer.dump() << "\n";
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"model_max_length", model_max_length},
                 {"bos_token", style.bos.empty() ? json(nullptr) : json(style.bos)},
                 {"eos_token", style.eos},
                 {"clean_up_tokenization_spaces", false}};
  std::ofstream(out / "tokenizer_config.json") << config.dump(2) << "\n";
  return {style.bos.empty() ? -1 : special_id(style.bos), special_id(style.eos)};
}

}  // namespace herd::convert
