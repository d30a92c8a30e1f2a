#include "common/conversation.h"

#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace herd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A record's problem: the reason (the key of the skip counts) and the detail.
struct BadRecord {
  std::string reason;
  std::string detail;
};

std::optional<BadRecord> to_conversation(const json& j, size_t index, Conversation& out) {
  if (!j.is_object()) return BadRecord{"not an object", "a record must be a JSON object"};
  if (!j.contains("conversations")) return BadRecord{"missing conversations", "no \"conversations\" key"};
  const json& turns = j["conversations"];
  if (!turns.is_array()) return BadRecord{"conversations not a list", "\"conversations\" must be a list of turns"};
  if (turns.empty()) return BadRecord{"empty conversation", "\"conversations\" is empty"};
  out.record = index;
  out.id = j.contains("id") ? (j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump()) : "";
  out.turns.clear();
  for (size_t t = 0; t < turns.size(); ++t) {
    const json& turn = turns[t];
    if (!turn.is_object()) return BadRecord{"turn not an object", fmt::format("turn {} is not an object", t)};
    if (!turn.contains("from") || !turn["from"].is_string()) {
      return BadRecord{"turn without from", fmt::format("turn {} has no string \"from\"", t)};
    }
    if (!turn.contains("value")) return BadRecord{"turn without value", fmt::format("turn {} has no \"value\"", t)};
    if (!turn["value"].is_string()) {
      return BadRecord{"non-string value",
                       fmt::format("turn {}'s \"value\" is {}, not a string", t, turn["value"].type_name())};
    }
    out.turns.push_back({turn["from"].get<std::string>(), turn["value"].get<std::string>()});
  }
  return std::nullopt;
}

bool utf8_error(const json::parse_error& e) { return std::string(e.what()).find("UTF-8") != std::string::npos; }

}  // namespace

std::vector<Conversation> read_conversations(const fs::path& file, bool skip_invalid, ReadReport* report) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DatasetError(fmt::format("{}: cannot read", file.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  ReadReport local;
  ReadReport& r = report ? *report : local;
  r = {};
  std::vector<Conversation> out;

  auto bad = [&](size_t index, const BadRecord& b) {
    if (!skip_invalid) {
      throw DatasetError(fmt::format("{}: record {}: {} ({}; data.skip_invalid: true skips such records)",
                                     file.string(), index, b.detail, b.reason));
    }
    ++r.skipped[b.reason];
  };

  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw DatasetError(fmt::format("{}: the file is empty", file.string()));
  if (text[first] == '[') {
    json doc;
    try {
      doc = json::parse(text);
    } catch (const json::parse_error& e) {
      // nlohmann counts bytes from 1; herd names 0-based offsets, as `cmp` and editors do.
      throw DatasetError(fmt::format("{}: {} at byte {}{}", file.string(),
                                     utf8_error(e) ? "invalid UTF-8" : "JSON syntax error", e.byte > 0 ? e.byte - 1 : 0,
                                     e.byte > text.size() ? " (the file is truncated)" : ""));
    }
    r.records = doc.size();
    for (size_t i = 0; i < doc.size(); ++i) {
      Conversation c;
      if (auto b = to_conversation(doc[i], i, c)) {
        bad(i, *b);
      } else {
        out.push_back(std::move(c));
      }
    }
    return out;
  }
  // JSON Lines: one record a line; a line is a record, so a broken line is a bad record.
  size_t index = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    if (line.find_first_not_of(" \t\r") != std::string_view::npos) {
      Conversation c;
      try {
        json j = json::parse(line);
        if (auto b = to_conversation(j, index, c)) {
          bad(index, *b);
        } else {
          out.push_back(std::move(c));
        }
      } catch (const json::parse_error& e) {
        const bool last = end == text.size();
        bad(index, {utf8_error(e) ? "invalid UTF-8" : "JSON syntax error",
                    fmt::format("{} at byte {} of the file{}", utf8_error(e) ? "invalid UTF-8" : "JSON syntax error",
                                pos + (e.byte > 0 ? e.byte - 1 : 0),
                                last && e.byte > line.size() ? " (the file is truncated)" : "")});
      }
      ++index;
    }
    pos = end + 1;
  }
  r.records = index;
  return out;
}

FormattedConversation format_conversation(const Conversation& c, const FormatOptions& o) {
  FormattedConversation f;
  for (const auto& turn : c.turns) {
    if (turn.role == "human") {
      f.text += o.user_header + turn.value + "\n\n";
    } else if (turn.role == "gpt") {
      f.text += o.response_header;
      const auto begin = static_cast<uint32_t>(f.text.size());
      f.text += turn.value + o.eos + "\n\n";
      f.responses.emplace_back(begin, static_cast<uint32_t>(f.text.size()));
    } else {
      std::string role = turn.role;
      for (auto& ch : role) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      f.text += "### " + role + ":\n" + turn.value + "\n\n";
    }
  }
  return f;
}

TokenizedSample tokenize_conversation(const Tokenizer& tokenizer, const FormattedConversation& f, bool train_on_inputs,
                                      size_t context_window) {
  TokenizedSample s;
  std::vector<Tokenizer::Span> spans;
  s.ids = tokenizer.encode(f.text, /*add_bos=*/true, &spans);
  s.mask.assign(s.ids.size(), 1);
  s.mask[0] = 0;  // nothing predicts BOS
  if (!train_on_inputs) {
    for (size_t i = 1; i < s.ids.size(); ++i) {
      const auto [b, e] = spans[i];
      bool response = false;
      for (const auto& [rb, re] : f.responses) {
        // a token counts when any of its bytes (or, for an empty span, its position) is in a response
        response = response || (b == e ? (b >= rb && b < re) : (b < re && e > rb));
      }
      s.mask[i] = response;
    }
  }
  if (s.ids.size() > context_window) {
    s.ids.resize(context_window);
    s.mask.resize(context_window);
    s.truncated = true;
  }
  return s;
}

}  // namespace herd
