#include "common/conversation.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/text.h"

namespace herd {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A record's problem: the reason (the key of the skip counts) and the detail.
struct BadRecord {
  std::string reason;
  std::string detail;
};

// One turn of a record: {"from", "value"} (conversations) or {"role", "content"} (messages).
std::optional<BadRecord> to_turn(const json& turn, size_t t, bool messages, Turn& out) {
  const char* role = messages ? "role" : "from";
  const char* text = messages ? "content" : "value";
  if (!turn.is_object()) return BadRecord{"turn not an object", fmt::format("turn {} is not an object", t)};
  if (!turn.contains(role) || !turn[role].is_string()) {
    return BadRecord{fmt::format("turn without {}", role), fmt::format("turn {} has no string \"{}\"", t, role)};
  }
  if (!turn.contains(text))
    return BadRecord{fmt::format("turn without {}", text), fmt::format("turn {} has no \"{}\"", t, text)};
  if (!turn[text].is_string()) {
    return BadRecord{fmt::format("non-string {}", text),
                     fmt::format("turn {}'s \"{}\" is {}, not a string", t, text, turn[text].type_name())};
  }
  if (messages) {
    for (const auto& [key, v] : turn.items()) {
      if (key != "role" && key != "content") {
        return BadRecord{"message key not read",
                         fmt::format("message {} has \"{}\": herd reads a message's role and content only", t, key)};
      }
    }
  }
  out.role = turn[role].get<std::string>();
  if (messages && out.role == "user") out.role = "human";
  if (messages && out.role == "assistant") out.role = "gpt";
  out.value = turn[text].get<std::string>();
  return std::nullopt;
}

std::optional<BadRecord> to_conversation(const json& j, size_t index, Conversation& out) {
  if (!j.is_object()) return BadRecord{"not an object", "a record must be a JSON object"};
  const bool messages = !j.contains("conversations") && j.contains("messages");
  const char* key = messages ? "messages" : "conversations";
  if (!j.contains(key)) {
    const bool orca = j.contains("question") && j.contains("response");
    return BadRecord{"missing conversations",
                     orca ? "no \"conversations\" or \"messages\" key: it is an Orca record (question, response), "
                            "which data.type orca reads, and this data is read as data.type vicuna"
                          : "no \"conversations\" or \"messages\" key"};
  }
  const json& turns = j[key];
  if (!turns.is_array())
    return BadRecord{"conversations not a list", fmt::format("\"{}\" must be a list of turns", key)};
  if (turns.empty()) return BadRecord{"empty conversation", fmt::format("\"{}\" is empty", key)};
  out.record = index;
  out.id = j.contains("id") ? (j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump()) : "";
  out.turns.assign(turns.size(), {});
  for (size_t t = 0; t < turns.size(); ++t) {
    if (auto bad = to_turn(turns[t], t, messages, out.turns[t])) return bad;
  }
  return std::nullopt;
}

// Whether the parser stopped at (or after) a byte that is not UTF-8 in `text`, the
// input it parsed: the cause is then the encoding, not the JSON.
bool utf8_error(const json::parse_error& e, std::string_view text) {
  const size_t bad = invalid_utf8(text);
  return e.byte > 0 && bad != std::string::npos && bad <= e.byte - 1;
}

// Every record of a JSON array or JSON Lines file, each made a T by `take` (which
// returns the record's problem, if it has one).
template <class T>
std::vector<T> read_records(const fs::path& file, bool skip_invalid, ReadReport* report,
                            const std::function<std::optional<BadRecord>(const json&, size_t, T&)>& take) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DatasetError(fmt::format("{}: cannot read", file.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  ReadReport local;
  ReadReport& r = report ? *report : local;
  r = {};
  std::vector<T> out;

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
                                     utf8_error(e, text) ? "invalid UTF-8" : "JSON syntax error", e.byte > 0 ? e.byte - 1 : 0,
                                     e.byte > text.size() ? " (the file is truncated)" : ""));
    } catch (const json::out_of_range&) {  // a number beyond a double (found by tests/fuzz)
      throw DatasetError(fmt::format("{}: a number too large for a double", file.string()));
    }
    r.records = doc.size();
    for (size_t i = 0; i < doc.size(); ++i) {
      T c;
      if (auto b = take(doc[i], i, c)) {
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
      T c;
      try {
        json j = json::parse(line);
        if (auto b = take(j, index, c)) {
          bad(index, *b);
        } else {
          out.push_back(std::move(c));
        }
      } catch (const json::parse_error& e) {
        const bool last = end == text.size();
        const char* cause = utf8_error(e, line) ? "invalid UTF-8" : "JSON syntax error";
        bad(index, {cause, fmt::format("{} at byte {} of the file{}", cause,
                                pos + (e.byte > 0 ? e.byte - 1 : 0),
                                last && e.byte > line.size() ? " (the file is truncated)" : "")});
      } catch (const json::out_of_range&) {
        bad(index, {"number out of range", "a number too large for a double"});
      }
      ++index;
    }
    pos = end + 1;
  }
  r.records = index;
  return out;
}

std::optional<BadRecord> to_orca(const json& j, size_t index, OrcaRecord& out) {
  if (!j.is_object()) return BadRecord{"not an object", "a record must be a JSON object"};
  out.record = index;
  out.id = j.contains("id") ? (j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump()) : "";
  for (auto [key, field] : {std::pair{"system_prompt", &out.system_prompt}, std::pair{"question", &out.question},
                            std::pair{"response", &out.response}}) {
    if (!j.contains(key)) {
      return BadRecord{fmt::format("missing {}", key),
                       j.contains("conversations")
                           ? fmt::format("no \"{}\" key: it is a Vicuna conversation, which data.type vicuna reads, "
                                         "and this data is read as data.type orca",
                                         key)
                           : fmt::format("no \"{}\" key", key)};
    }
    if (!j[key].is_string()) {
      return BadRecord{fmt::format("non-string {}", key),
                       fmt::format("\"{}\" is {}, not a string", key, j[key].type_name())};
    }
    *field = j[key].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

std::vector<Conversation> read_conversations(const fs::path& file, bool skip_invalid, ReadReport* report) {
  return read_records<Conversation>(file, skip_invalid, report, to_conversation);
}

std::vector<OrcaRecord> read_orca(const fs::path& file, bool skip_invalid, ReadReport* report) {
  return read_records<OrcaRecord>(file, skip_invalid, report, to_orca);
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

FormattedConversation format_chat(const std::vector<Turn>& turns, const ChatTemplate& t) {
  std::vector<ChatMessage> messages;
  for (const auto& turn : turns) {
    messages.push_back({turn.role == "human" ? "user" : turn.role == "gpt" ? "assistant" : turn.role, turn.value});
  }
  auto rendered = t.render(messages, /*add_generation_prompt=*/false);
  return {std::move(rendered.text), std::move(rendered.assistant), /*templated=*/true};
}

FormattedConversation format_orca(const OrcaRecord& r, const FormatOptions& o) {
  FormattedConversation f;
  f.text = o.system_header + r.system_prompt + "\n\n" + o.instruction_header + r.question + "\n\n" +
           o.response_header;
  const auto begin = static_cast<uint32_t>(f.text.size());
  f.text += r.response + o.eos + "\n";
  f.responses.emplace_back(begin, static_cast<uint32_t>(f.text.size()));
  return f;
}

std::string read_text_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DatasetError(fmt::format("{}: cannot read", file.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  if (const size_t bad = invalid_utf8(bytes); bad != std::string::npos) {
    throw DatasetError(fmt::format("{}: invalid UTF-8 at byte {}", file.string(), bad));
  }
  std::string text;
  text.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != '\r') {
      text += bytes[i];
    } else {
      text += '\n';
      if (i + 1 < bytes.size() && bytes[i + 1] == '\n') ++i;
    }
  }
  return text;
}

std::vector<std::string> chunk_text(const std::string& text, const RawTextOptions& o) {
  if (o.chunk_len == 0 || o.overlap >= o.chunk_len) {
    throw std::invalid_argument(fmt::format("chunks of {} characters overlapping by {}: the overlap must be smaller",
                                            o.chunk_len, o.overlap));
  }
  const auto at = code_point_offsets(text);
  const size_t n = at.size() - 1;
  std::vector<std::string> chunks;
  for (size_t i = 0; i < n;) {
    i = i > o.overlap ? i - o.overlap : 0;
    const size_t end = std::min(n, i + o.chunk_len);
    chunks.push_back(o.prefix + text.substr(at[i], at[end] - at[i]));
    i += o.chunk_len;
  }
  return chunks;
}

namespace {

// Formats with `format`; a record the chat template fails on is an error naming the
// file and the record, or (skip_invalid) skipped and counted.
void add_sample(std::vector<TextSample>& out, size_t record, const std::string& id, const fs::path& file,
                bool skip_invalid, ReadReport& r, const std::function<FormattedConversation()>& format) {
  try {
    out.push_back({record, id, format()});
  } catch (const ChatTemplateError& e) {
    if (!skip_invalid) {
      throw DatasetError(
          fmt::format("{}: record {}: {} (chat template error; data.skip_invalid: true skips such records)",
                      file.string(), record, e.what()));
    }
    ++r.skipped["chat template error"];
  }
}

}  // namespace

std::vector<TextSample> read_samples(const std::string& type, const std::vector<fs::path>& files,
                                     const FormatOptions& format, const RawTextOptions& raw, bool skip_invalid,
                                     ReadReport* report) {
  ReadReport local;
  ReadReport& r = report ? *report : local;
  std::vector<TextSample> out;
  if (type == "raw_text") {
    r = {};
    for (const auto& file : files) {
      const auto chunks = chunk_text(read_text_file(file), raw);
      for (size_t k = 0; k < chunks.size(); ++k) {
        out.push_back({out.size(), fmt::format("{}#{}", file.string(), k), {chunks[k], {}}});
      }
    }
    r.records = out.size();
    return out;
  }
  if (files.size() != 1) throw std::invalid_argument(fmt::format("data.type {} reads one file", type));
  const ChatTemplate* chat = format.chat_template.get();
  if (type == "orca") {
    for (auto& rec : read_orca(files[0], skip_invalid, &r)) {
      add_sample(out, rec.record, rec.id, files[0], skip_invalid, r, [&] {
        if (!chat) return format_orca(rec, format);
        std::vector<Turn> turns;
        if (!rec.system_prompt.empty()) turns.push_back({"system", rec.system_prompt});
        turns.push_back({"human", rec.question});
        turns.push_back({"gpt", rec.response});
        return format_chat(turns, *chat);
      });
    }
  } else if (type == "vicuna") {
    for (auto& c : read_conversations(files[0], skip_invalid, &r)) {
      add_sample(out, c.record, c.id, files[0], skip_invalid, r,
                 [&] { return chat ? format_chat(c.turns, *chat) : format_conversation(c, format); });
    }
  } else {
    throw std::invalid_argument(fmt::format("data.type '{}': vicuna, orca or raw_text", type));
  }
  return out;
}

TokenizedSample tokenize_conversation(const Tokenizer& tokenizer, const FormattedConversation& f, bool train_on_inputs,
                                      size_t context_window) {
  TokenizedSample s;
  std::vector<Tokenizer::Span> spans;
  s.ids = tokenizer.encode(f.text, /*add_special=*/!f.templated, &spans);
  if (s.ids.empty()) return s;
  s.mask.assign(s.ids.size(), 1);
  s.mask[0] = 0;  // nothing predicts BOS
  if (!train_on_inputs) {
    for (size_t i = 1; i < s.ids.size(); ++i) {
      const auto [b, e] = spans[i];
      bool response = false;
      for (const auto& [rb, re] : f.responses) {
        // a token counts when any of its bytes (or, for an empty span, its position) is in a response;
        // templated, so does the special token that starts where a response ends (its end of turn)
        response = response || (b == e ? (b >= rb && b < re) : (b < re && e > rb)) ||
                   (f.templated && b == re && e > b && tokenizer.special(s.ids[i]));
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
